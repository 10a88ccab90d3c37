"""The package's logger, loaded on first use.

``logging`` (with ``traceback`` and ``string``) costs several milliseconds of import time
that a server which never sees gameguard log anything should not pay, so modules call
:func:`logger` where they log (a failing listener, a fallback to pure Python) instead of
holding a module-level ``logging.getLogger`` result.
"""
from __future__ import annotations

from ._hints import TYPE_CHECKING

if TYPE_CHECKING:
    from logging import Logger

__all__ = ["logger"]


def logger() -> Logger:
    """``logging.getLogger("gameguard")``, importing ``logging`` on the first call (later
    calls find it in ``sys.modules``)."""
    import logging

    return logging.getLogger("gameguard")
