"""Stable default names: ``"breaker"``, then ``"breaker-2"``, ``"breaker-3"``, ...

Names become metric labels and log fields, so a default must be the same on every run and
every host that builds its objects in the same order; an ``id()`` never is.
"""
from __future__ import annotations

import threading
from ._hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Dict

__all__ = ["default_name"]

_lock = threading.Lock()
_counts: Dict[str, int] = {}


def default_name(base: str) -> str:
    """The next default name for ``base`` in this process, in order of creation."""
    with _lock:
        n = _counts.get(base, 0) + 1
        _counts[base] = n
    return base if n == 1 else f"{base}-{n}"
