"""Rolling-window counters (pure twin of ``_fast/window.pyx``).

Sentinel's LeapArray shape: ``buckets`` buckets of ``window / buckets`` seconds each, in a
ring indexed by the bucket's epoch ``floor(now / bucket_len)``. A bucket is reset lazily
when time moves past it, and running totals are kept, so record and read are O(1)
amortised (advancing by k buckets clears min(k, buckets) buckets). The window covers the
current bucket and the ``buckets - 1`` before it.
"""
from __future__ import annotations

import math

__all__ = ["RollingWindow"]

_FAR_PAST = -(1 << 62)
_floor = math.floor


class RollingWindow:
    """Calls, failures, slow calls and total duration over the last ``window`` seconds."""

    def __init__(self, window: float, buckets: int) -> None:
        self.window = float(window)
        self.buckets = int(buckets)
        self.bucket_len = self.window / self.buckets
        self.head = _FAR_PAST
        n = self.buckets
        self._calls = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n
        self._duration = [0.0] * n
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.duration = 0.0

    def advance(self, now: float) -> None:
        """Drop the buckets that fell out of the window at ``now``."""
        epoch = math.floor(now / self.bucket_len)
        gap = epoch - self.head
        if gap <= 0:  # same bucket, or a clock read racing backwards: count in the head
            return
        n = self.buckets
        if gap >= n:
            self.reset()
        else:
            for k in range(1, gap + 1):
                i = (self.head + k) % n
                self.calls -= self._calls[i]
                self.failures -= self._failures[i]
                self.slow -= self._slow[i]
                self.duration -= self._duration[i]
                self._calls[i] = self._failures[i] = self._slow[i] = 0
                self._duration[i] = 0.0
            if self.calls == 0:
                self.duration = 0.0  # no float residue once the window is empty
        self.head = epoch

    def record(self, now: float, failure: bool, slow: bool, duration: float) -> None:
        """Count one call that ended at ``now``."""
        if _floor(now / self.bucket_len) != self.head:
            self.advance(now)
        i = self.head % self.buckets
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
        n = self.buckets
        self._calls = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n
        self._duration = [0.0] * n
        self.calls = self.failures = self.slow = 0
        self.duration = 0.0

    def totals(self, now: float) -> tuple[int, int, int, float]:
        """``(calls, failures, slow, total_duration)`` over the window at ``now``."""
        self.advance(now)
        return (self.calls, self.failures, self.slow, self.duration)
