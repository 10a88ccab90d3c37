"""Rolling-window counters (pure twin of ``_fast/window.pyx``).

Sentinel's LeapArray shape: ``buckets`` buckets of ``window / buckets`` seconds each, in a
ring indexed by the bucket's epoch ``floor(now / bucket_len)``. A bucket is reset lazily
when time moves past it, and running totals are kept, so record and read are O(1)
amortised (advancing by k buckets clears min(k, buckets) buckets). The window covers the
current bucket and the ``buckets - 1`` before it.

Clock readings must satisfy ``|now| < time_limit`` (see :func:`time_limit`): the epoch is
then an exact integer below 2**52 in both twins. ``next_edge`` caches the first instant of
the next bucket, so a call in the head bucket costs one comparison, no division.
"""
from __future__ import annotations

import math

__all__ = ["RollingWindow", "time_limit", "clock_error", "MAX_EPOCH"]

_FAR_PAST = -(1 << 62)
MAX_EPOCH = float(1 << 52)  #: |now / bucket_len| below this: exact, no overflow in C
_floor = math.floor
_nextafter = math.nextafter
_INF = math.inf


def time_limit(bucket_len: float) -> float:
    """The bound on ``|now|`` for buckets of ``bucket_len`` seconds (at most 2**52 s)."""
    return MAX_EPOCH * min(1.0, bucket_len)


def clock_error(now: float, limit: float) -> ValueError:
    """What a kernel raises for a clock reading it cannot use (NaN, infinite, absurd)."""
    return ValueError(f"clock reading {now!r} is not a finite time with |now| < {limit!r} "
                      f"(check the guard's clock)")


class RollingWindow:
    """Calls, failures, slow calls and total duration over the last ``window`` seconds.

    ``window``, ``buckets``, ``bucket_len``, ``head`` and ``limit`` are read-only.
    """

    __slots__ = ("_window", "_buckets", "_bucket_len", "_limit", "_head", "_index",
                 "_next_edge", "_calls", "_failures", "_slow", "_duration", "calls",
                 "failures", "slow", "duration")

    def __init__(self, window: float, buckets: int) -> None:
        self._window = float(window)
        self._buckets = int(buckets)
        self._bucket_len = self._window / self._buckets
        self._limit = time_limit(self._bucket_len)
        self._head = _FAR_PAST
        self._index = 0  # head % buckets
        self._next_edge = -_INF
        self.calls = self.failures = self.slow = 0
        self.duration = 0.0
        self.reset()

    window = property(lambda self: self._window)
    buckets = property(lambda self: self._buckets)
    bucket_len = property(lambda self: self._bucket_len)
    head = property(lambda self: self._head)
    limit = property(lambda self: self._limit, doc="the bound on |now| (exclusive)")

    def check(self, now: float) -> None:
        """``ValueError`` unless ``now`` is a usable clock reading (NaN fails too)."""
        if not -self._limit < now < self._limit:
            raise clock_error(now, self._limit)

    def advance(self, now: float) -> None:
        """Drop the buckets that fell out of the window at ``now``."""
        if now < self._next_edge:  # same bucket, or a clock read racing backwards
            return
        self.check(now)
        epoch = _floor(now / self._bucket_len)
        gap = epoch - self._head
        if gap <= 0:
            return
        n = self._buckets
        if gap >= n:
            self.reset()
        else:
            for k in range(1, gap + 1):
                i = (self._head + k) % n
                self.calls -= self._calls[i]
                self.failures -= self._failures[i]
                self.slow -= self._slow[i]
                self.duration -= self._duration[i]
                self._calls[i] = self._failures[i] = self._slow[i] = 0
                self._duration[i] = 0.0
            if self.calls == 0:
                self.duration = 0.0  # no float residue once the window is empty
        self._head = epoch
        self._index = epoch % n
        self._next_edge = self._edge(epoch)

    def _edge(self, head: int) -> float:
        """The smallest float t with floor(t / bucket_len) > head."""
        bl = self._bucket_len
        e = (head + 1) * bl
        below = _nextafter(e, -_INF)
        while _floor(below / bl) > head:
            e, below = below, _nextafter(below, -_INF)
        while _floor(e / bl) <= head:
            e = _nextafter(e, _INF)
        return e

    def record(self, now: float, failure: bool, slow: bool, duration: float) -> None:
        """Count one call that ended at ``now``."""
        if not now < self._next_edge:  # NaN too: advance refuses it
            self.advance(now)
        i = self._index
        self._calls[i] += 1
        self.calls += 1
        if failure:
            self._failures[i] += 1
            self.failures += 1
        if slow:
            self._slow[i] += 1
            self.slow += 1
        self._duration[i] += duration
        self.duration += duration

    def reset(self) -> None:
        """Forget everything (a fresh window)."""
        n = self._buckets
        self._calls = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n
        self._duration = [0.0] * n
        self.calls = self.failures = self.slow = 0
        self.duration = 0.0

    def totals(self, now: float) -> tuple[int, int, int, float]:
        """``(calls, failures, slow, total_duration)`` over the window at ``now``."""
        self.check(now)
        self.advance(now)
        return (self.calls, self.failures, self.slow, self.duration)
