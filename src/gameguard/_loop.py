"""Refuse to block an event loop silently.

A sync wait taken on the thread that runs an asyncio loop stalls every task on it. Callers
that are about to block call :func:`warn_if_loop_thread` first; it costs a dict lookup when
asyncio was never imported (then no loop can be running) and never imports asyncio itself.
"""
from __future__ import annotations

import sys
import warnings

__all__ = ["loop_running_here", "warn_if_loop_thread"]


def loop_running_here() -> bool:
    """Whether an asyncio event loop is running on this thread."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    return asyncio._get_running_loop() is not None


def warn_if_loop_thread(what: str, instead: str, stacklevel: int = 3) -> None:
    """Warn (``RuntimeWarning``) that ``what`` is about to block a running event loop, and
    name the async form to use ``instead``."""
    if loop_running_here():
        warnings.warn(f"{what} blocks the event loop running on this thread; "
                      f"use {instead} in async code", RuntimeWarning, stacklevel=stacklevel)
