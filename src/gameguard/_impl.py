"""The one place that picks the compiled (``_fast``) or pure-Python (``_pure``) kernels.

``GAMEGUARD_NO_EXTENSIONS=1`` forces the pure twins; otherwise the compiled ones are used
when they were built. Public objects look their kernels up here *at construction*, so
``use("pure")`` (tests, debugging) affects objects built inside it.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from types import ModuleType
from typing import Iterator

__all__ = ["USE_EXTENSIONS", "FAST_AVAILABLE", "kernel", "use", "active"]

#: kernel modules: every module of the pure twin has a compiled twin of the same name
KERNEL_MODULES = tuple(sorted(
    p[:-3] for p in os.listdir(os.path.join(os.path.dirname(__file__), "_pure"))
    if p.endswith(".py") and not p.startswith("__")))


def _fast_importable(name: str) -> bool:
    try:
        importlib.import_module(f"gameguard._fast.{name}")
    except ImportError:
        return False
    return True


#: which kernel modules have an importable compiled twin
FAST_MODULES = {name: _fast_importable(name) for name in KERNEL_MODULES}
#: every kernel is compiled (what a build with a C compiler gives)
FAST_AVAILABLE: bool = all(FAST_MODULES.values())
USE_EXTENSIONS: bool = FAST_AVAILABLE and not os.environ.get("GAMEGUARD_NO_EXTENSIONS")
_active = "fast" if USE_EXTENSIONS else "pure"


def active() -> str:
    """``"fast"`` or ``"pure"``: which twin newly built objects get."""
    return _active


def kernel(name: str) -> ModuleType:
    """The kernel module ``name`` from the active twin."""
    try:
        return importlib.import_module(f"gameguard._{_active}.{name}")
    except ImportError as exc:
        raise ImportError(f"kernel {name!r} has no {_active} twin: {exc}") from exc


@contextlib.contextmanager
def use(which: str) -> Iterator[None]:
    """Build objects with the ``"fast"`` or ``"pure"`` kernels inside this block."""
    global _active
    if which not in ("fast", "pure"):
        raise ValueError(f"which must be 'fast' or 'pure', got {which!r}")
    if which == "fast" and not any(FAST_MODULES.values()):
        raise ImportError("the compiled kernels are not built (pip install with a C compiler)")
    previous, _active = _active, which
    try:
        yield
    finally:
        _active = previous
