"""How ``GAMEGUARD_NO_EXTENSIONS`` is read, by the build (``setup.py``) and at import alike.

It stands alone (no package imports) so that ``setup.py`` can load it from the source tree.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # not from ._hints: this file is loaded outside the package
if TYPE_CHECKING:
    from typing import Mapping

__all__ = ["extensions_disabled"]

#: values that leave the compiled kernels on: ``GAMEGUARD_NO_EXTENSIONS=0`` means "use them"
_USE_THEM = ("", "0", "false", "no", "off")


def extensions_disabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``GAMEGUARD_NO_EXTENSIONS`` asks for the pure-Python twins: any value but
    unset, empty, ``0``, ``false``, ``no`` or ``off`` (case-insensitive)."""
    return environ.get("GAMEGUARD_NO_EXTENSIONS", "").strip().lower() not in _USE_THEM
