"""Retry bookkeeping (pure twin of ``_fast/retry.pyx``): the retry budget and the sync
retrying call.

:class:`Budget` is Finagle's retry budget over a rolling window: every call deposits, every
retry withdraws, and a retry is allowed while ``retries + 1 <= reserve + ratio * calls`` over
the last ``window`` seconds, where ``reserve = min_per_second * window``. So over any window
retries stay within ``ratio`` of the calls plus the floor, however hard a dependency fails.
Calls and retries are the rolling window's ``calls - failures`` and ``failures``.

:func:`wrap_sync` is the decorated sync call: the first attempt is a plain call (the budget
deposit aside); only a failure goes to the retry policy, in Python.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Optional

from ..clock import monotonic
from .window import RollingWindow, clock_error

__all__ = ["Budget", "wrap_sync"]


class Budget:
    """Calls and retries over ``window`` seconds (``buckets`` buckets); ``withdraw`` allows a
    retry while it keeps ``retries <= reserve + ratio * calls``."""

    def __init__(self, ratio: float, reserve: float, window: float, buckets: int) -> None:
        self.ratio = float(ratio)
        self.reserve = float(reserve)
        self._window = RollingWindow(window, buckets)
        self._lock = threading.Lock()  # pure Python may switch threads between bytecodes

    def deposit(self, now: float) -> None:
        """Count one call (a first attempt)."""
        w = self._window
        if not -w.limit < now < w.limit:
            raise clock_error(now, w.limit)
        with self._lock:
            w.record(now, False, False, 0.0)

    def withdraw(self, now: float) -> bool:
        """Take one retry if the budget allows it at ``now``."""
        w = self._window
        if not -w.limit < now < w.limit:
            raise clock_error(now, w.limit)
        with self._lock:
            w.advance(now)
            retries = w.failures
            if retries + 1 > self.reserve + self.ratio * (w.calls - retries):
                return False
            w.record(now, True, False, 0.0)
            return True

    def balance(self, now: float) -> float:
        """Retries the budget allows at ``now`` (may be fractional; below 1: none)."""
        w = self._window
        with self._lock:
            calls, retries, _, _ = w.totals(now)
        return self.reserve + self.ratio * (calls - retries) - retries

    def counts(self, now: float) -> tuple[int, int]:
        """``(calls, retries)`` over the window at ``now``."""
        with self._lock:
            calls, retries, _, _ = self._window.totals(now)
        return calls - retries, retries


def wrap_sync(func: Callable[..., Any], again: Callable[..., Any], budget: Optional[Budget],
              clock: Optional[Callable[[], float]]) -> Callable[..., Any]:
    """``func`` retried: a call that raises an ``Exception`` goes to
    ``again(args, kwargs, exc)``, which retries it or re-raises ``exc``. With a ``budget``
    each call deposits once, at ``clock()`` (``None``: the monotonic clock)."""
    read = clock if clock is not None else monotonic

    if budget is None:
        def retried(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception as e:  # retried outside the except block: no __context__
                exc = e
            return again(args, kwargs, exc)
    else:
        deposit = budget.deposit

        def retried(*args: Any, **kwargs: Any) -> Any:
            deposit(read())
            try:
                return func(*args, **kwargs)
            except Exception as e:  # retried outside the except block: no __context__
                exc = e
            return again(args, kwargs, exc)

    functools.update_wrapper(retried, func)
    return retried
