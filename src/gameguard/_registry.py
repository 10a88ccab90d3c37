"""The process-wide weak registry of live guards, limiters, caches, sagas and backends.

Constructors call :func:`register`; exporters (metrics, health, the ``top`` view) read
:func:`registry` at scrape time, so an unscraped process pays one weak reference per object
and nothing per call. Objects leave the registry when they are garbage-collected.
"""
from __future__ import annotations

import itertools
import threading
import weakref

__all__ = ["register", "registry"]

_lock = threading.Lock()
_order = itertools.count()
# creation order -> object: a dict keeps the order exporters list them in
_live: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()


def register(obj: object) -> None:
    """Add ``obj`` (it must support weak references) to the registry."""
    with _lock:
        _live[next(_order)] = obj


def registry() -> list[object]:
    """The live registered objects, in order of creation."""
    with _lock:
        items = sorted(_live.items())
    return [obj for _, obj in items]
