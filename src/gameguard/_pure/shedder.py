"""Load-shedding kernel (pure twin of ``_fast/shedder.pyx``): go-zero's adaptive shedder.

A rolling window of ``buckets`` buckets holds, per bucket, the calls that passed and the sum
of their response times. With ``max_pass`` the largest per-bucket pass count and ``min_rt``
the smallest per-bucket mean response time over the window, the current bucket excluded
(1 s when there is none), Little's law gives the calls the service can hold in flight:
``max_flight = max(1, max_pass * min_rt / bucket_len)``. A call is dropped when the CPU is
hot (over ``threshold``, or a call was dropped and the CPU was last over ``threshold`` less
than ``cool_off`` ago) and both the calls in flight and their moving average (beta 0.9,
updated as calls end) exceed ``max_flight * overload_factor``, where
``overload_factor = clamp((1 - cpu) / (1 - threshold), 0.1, 1)``.

The CPU reading is pushed in (``set_cpu``, by a sampler) or, with ``cpu_source`` given,
read from it first thing in every ``enter``, before any state changes (so the decision
stays atomic); a reading outside [0, 1] is clipped, NaN counts as 0.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from .kernel import SUCCESS, REJECT, GuardKernel
from .window import MAX_EPOCH, clock_error

__all__ = ["ShedderKernel"]

_BELOW = -MAX_EPOCH
_FLYING_BETA = 0.9
_DEFAULT_MIN_RT = 1.0  # seconds: large, so a service with no history is not shed
_OVERLOAD_FLOOR = 0.1  # even at 100 % CPU, admit a tenth of what Little's law allows


class ShedderKernel(GuardKernel):
    """The drop decision of one :class:`~gameguard.LoadShedder`; see the module docstring.

    ``exit`` with ``SUCCESS`` counts a pass and its response time; ``FAILURE`` (a call that
    timed out) and ``IGNORED`` only leave the in-flight count.
    """

    def __init__(self, threshold: float, window: float, buckets: int, cool_off: float,
                 cpu_source: Optional[Callable[[], float]] = None) -> None:
        super().__init__()
        self.cpu_source = cpu_source
        self.threshold = float(threshold)
        self.buckets = buckets
        self.bucket_len = float(window) / buckets
        self.cool_off = float(cool_off)
        self.cpu = 0.0
        self.flying = 0
        self.avg_flying = 0.0
        self.overload_time = -math.inf  # when the CPU was last seen over the threshold
        self.dropped_recently = False
        self.passed = 0
        self.dropped = 0
        self._head = 0  # index (bucket number) of the current bucket
        self._pass = [0] * buckets
        self._rt_sum = [0.0] * buckets
        self._rt_count = [0] * buckets

    def set_cpu(self, cpu: float) -> None:
        """The latest CPU reading in [0, 1] (the public layer's sampler writes it)."""
        self.cpu = cpu

    def _advance(self, now: float) -> None:
        """Make the bucket holding ``now`` current, clearing the buckets skipped over."""
        head = math.floor(now / self.bucket_len)
        gap = head - self._head
        if gap <= 0:
            return
        n = self.buckets
        for i in range(1, min(gap, n) + 1):
            j = (self._head + i) % n
            self._pass[j] = 0
            self._rt_sum[j] = 0.0
            self._rt_count[j] = 0
        self._head = head

    def max_flight(self, now: float) -> float:
        """``max(1, max_pass * min_rt / bucket_len)`` over the window before ``now``'s bucket."""
        with self._lock:
            return self._max_flight(now)

    def _max_flight(self, now: float) -> float:
        self._advance(now)
        n = self.buckets
        cur = self._head % n
        max_pass = 1
        min_rt = _DEFAULT_MIN_RT
        for j in range(n):
            if j == cur:
                continue
            if self._pass[j] > max_pass:
                max_pass = self._pass[j]
            if self._rt_count[j] > 0:
                avg = self._rt_sum[j] / self._rt_count[j]
                if avg < min_rt:
                    min_rt = avg
        return max(max_pass * min_rt / self.bucket_len, 1.0)

    def _hot(self, now: float) -> bool:
        if self.cpu >= self.threshold:
            self.overload_time = now
            return True
        if not self.dropped_recently:
            return False
        if now - self.overload_time < self.cool_off:
            return True
        self.dropped_recently = False
        return False

    def _over(self, now: float) -> bool:
        factor = (1.0 - self.cpu) / (1.0 - self.threshold)
        factor = min(1.0, max(_OVERLOAD_FLOOR, factor))
        limit = self._max_flight(now) * factor
        return self.avg_flying > limit and self.flying > limit

    self_timed = False  # the compiled twin may time calls with the CPU's counter

    def time_calls(self, on: bool) -> bool:
        """The compiled twin's cheaper timer; here calls are always timed by the caller's
        clock: returns False."""
        return False

    def enter(self, now: float) -> int:
        if not _BELOW < now < MAX_EPOCH:
            raise clock_error(now, MAX_EPOCH)
        if self.cpu_source is not None:
            cpu = float(self.cpu_source())
            self.cpu = 0.0 if cpu != cpu else min(1.0, max(0.0, cpu))
        with self._lock:
            if self._hot(now) and self._over(now):
                self.dropped_recently = True
                self.dropped += 1
                return REJECT
            self.flying += 1
            return 0

    def exit(self, token: int, now: float, duration: float, outcome: int) -> None:
        if token < 0:
            return
        with self._lock:
            self.flying -= 1
            self.avg_flying = self.avg_flying * _FLYING_BETA + self.flying * (1.0 - _FLYING_BETA)
            if outcome != SUCCESS:
                return
            self._advance(now)
            j = self._head % self.buckets
            self._pass[j] += 1
            self._rt_sum[j] += duration
            self._rt_count[j] += 1
            self.passed += 1

