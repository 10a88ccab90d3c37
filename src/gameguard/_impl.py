"""The one place that picks the compiled (``_fast``) or pure-Python (``_pure``) kernels.

``GAMEGUARD_NO_EXTENSIONS=1`` forces the pure twins (``=0`` or unset: use the compiled
ones). Without it, falling back to the pure twins because a compiled kernel will not import
logs one warning, so a slow build never goes unnoticed. Public objects look their kernels up
here *at construction*, so ``use("pure")`` (tests, debugging) affects objects built inside it.
"""
from __future__ import annotations

import importlib
import os
import sys

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


def _fast_missing(name: str, built: frozenset[str]) -> Optional[ImportError]:
    """Why the compiled twin of ``name`` cannot be imported, or ``None`` when its file is
    there. Reading the directory costs one system call; importing the fifteen kernels would
    cost ``import gameguard`` about 8 ms, most of them for kernels a process may never use,
    so each is imported on first use (:func:`kernel`)."""
    module = f"gameguard._fast.{name}"
    if module in sys.modules and sys.modules[module] is None:  # blocked: import fails
        return ImportError(f"import of {module} halted; None in sys.modules")
    if name not in built:
        return ImportError(f"no compiled {module} (built without a C compiler?)")
    return None


def _built() -> frozenset[str]:
    """Kernel names with a compiled file in ``_fast/`` (any extension-module suffix)."""
    from importlib.machinery import EXTENSION_SUFFIXES

    try:
        files = os.listdir(os.path.join(os.path.dirname(__file__), "_fast"))
    except OSError:
        return frozenset()
    return frozenset(f[:-len(sfx)] for f in files for sfx in EXTENSION_SUFFIXES
                     if f.endswith(sfx))


_BUILT = _built()
#: why each compiled kernel that will not import does not (an empty dict: all are built);
#: a kernel whose file is there but will not load (a wrong ABI) joins it on first use
FAST_ERRORS: Dict[str, ImportError] = {
    name: err for name in KERNEL_MODULES if (err := _fast_missing(name, _BUILT)) is not None}
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
    """The kernel module ``name`` from the active twin.

    A compiled kernel whose file is there but will not load (a wrong ABI, a half-finished
    build) is found out here, on first use: that kernel falls back to its pure twin, with
    one warning, and the rest stay compiled (the protocol takes guards of either twin)."""
    try:
        return importlib.import_module(f"gameguard._{_active}.{name}")
    except ImportError as exc:
        if _active == "fast" and name in KERNEL_MODULES:
            FAST_ERRORS.setdefault(name, exc)
            FAST_MODULES[name] = False
            from ._log import logger
            logger().warning(
                "gameguard: the compiled %s kernel does not import (%s: %s); using its "
                "pure-Python twin (about ten times the per-call overhead). Reinstall with a "
                "C compiler to build it.", name, type(exc).__name__, exc)
            return importlib.import_module(f"gameguard._pure.{name}")
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
