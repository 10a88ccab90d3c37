"""The process-wide weak registry of live guards, limiters, caches, sagas and backends.

Constructors call :func:`register`; exporters (metrics, health, the ``top`` view) read
:func:`registry` at scrape time, so an unscraped process pays one weak reference per object
and nothing per call. Objects leave the registry when they are garbage-collected.
"""
from __future__ import annotations

import itertools
import threading
import weakref

__all__ = ["hold", "register", "registry"]

_lock = threading.Lock()
_order = itertools.count()
# creation order -> object: a dict keeps the order exporters list them in
_live: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
# lists that also hold a strong reference to each object registered (see hold)
_holders: list[list[object]] = []


def register(obj: object) -> None:
    """Add ``obj`` (it must support weak references) to the registry."""
    with _lock:
        _live[next(_order)] = obj
        for held in _holders:
            held.append(obj)


def hold(into: list[object], holding: bool = True) -> None:
    """While holding, also append every newly registered object to ``into``: a strong
    reference, for a program that shows its guards after the code that built them returned
    (the demo's closing ``top`` view). ``holding=False`` stops."""
    with _lock:
        if holding:
            _holders.append(into)
        else:
            _holders[:] = [h for h in _holders if h is not into]


def registry() -> list[object]:
    """The live registered objects, in order of creation."""
    with _lock:
        items = sorted(_live.items())
    return [obj for _, obj in items]
