"""The one place that picks the compiled (``_fast``) or pure-Python (``_pure``) kernels.

``GAMEGUARD_NO_EXTENSIONS=1`` forces the pure twins (``=0`` or unset: use the compiled
ones). Without it, falling back to the pure twins because a compiled kernel will not import
logs one warning, so a slow build never goes unnoticed. Public objects look their kernels up
here *at construction*, so ``use("pure")`` (tests, debugging) affects objects built inside it.
"""
from __future__ import annotations

import importlib
import os

from ._env import extensions_disabled
from ._hints import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType
    from typing import Dict, Optional

__all__ = ["USE_EXTENSIONS", "FAST_AVAILABLE", "kernel", "use", "active"]

#: kernel modules: every module of the pure twin has a compiled twin of the same name
KERNEL_MODULES = tuple(sorted(
    p[:-3] for p in os.listdir(os.path.join(os.path.dirname(__file__), "_pure"))
    if p.endswith(".py") and not p.startswith("__")))


def _fast_import_error(name: str) -> Optional[ImportError]:
    try:
        importlib.import_module(f"gameguard._fast.{name}")
    except ImportError as exc:
        return exc
    return None


#: why each compiled kernel that will not import does not (an empty dict: all are built)
FAST_ERRORS: Dict[str, ImportError] = {
    name: err for name in KERNEL_MODULES if (err := _fast_import_error(name)) is not None}
#: which kernel modules have an importable compiled twin
FAST_MODULES = {name: name not in FAST_ERRORS for name in KERNEL_MODULES}
#: every kernel is compiled (what a build with a C compiler gives)
FAST_AVAILABLE: bool = not FAST_ERRORS
USE_EXTENSIONS: bool = FAST_AVAILABLE and not extensions_disabled()
_active = "fast" if USE_EXTENSIONS else "pure"

if not USE_EXTENSIONS and not extensions_disabled():
    from ._log import logger

    _first = sorted(FAST_ERRORS)[0]
    logger().warning(
        "gameguard: using the pure-Python kernels (about ten times the per-call overhead): the "
        "compiled "
        "%s do not import (%s: %s). Reinstall with a C compiler to build them, or set "
        "GAMEGUARD_NO_EXTENSIONS=1 to choose the pure kernels and silence this warning.",
        ", ".join(sorted(FAST_ERRORS)), _first, FAST_ERRORS[_first])


def active() -> str:
    """``"fast"`` or ``"pure"``: which twin newly built objects get."""
    return _active


def kernel(name: str) -> ModuleType:
    """The kernel module ``name`` from the active twin."""
    try:
        return importlib.import_module(f"gameguard._{_active}.{name}")
    except ImportError as exc:
        raise ImportError(f"kernel {name!r} has no {_active} twin: {exc}") from exc


class use:
    """``with use("fast" | "pure"):`` builds objects with those kernels inside the block.

    A class rather than ``contextlib.contextmanager``: contextlib would cost every
    ``import gameguard`` a millisecond for a helper only tests use.
    """

    def __init__(self, which: str) -> None:
        if which not in ("fast", "pure"):
            raise ValueError(f"which must be 'fast' or 'pure', got {which!r}")
        if which == "fast" and not any(FAST_MODULES.values()):
            raise ImportError(
                "the compiled kernels are not built (pip install with a C compiler)")
        self._which = which
        self._previous = _active

    def __enter__(self) -> None:
        global _active
        self._previous, _active = _active, self._which

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = self._previous
