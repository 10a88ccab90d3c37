"""Adaptive concurrency-limit kernel (pure twin of ``_fast/adaptive.pyx``).

Measured latency in, limit out: the three limit algorithms of Netflix concurrency-limits
(``Gradient2Limit``, ``VegasLimit``, ``AIMDLimit``), optionally fed through its
``WindowedLimit`` (samples averaged per window). A call is admitted while the calls in
flight are under ``limit``; its token is the in-flight count it saw, including itself
(what the algorithms call ``inflight``). ``exit`` with ``SUCCESS`` is a sample,
``FAILURE`` a drop (a timeout, an overload answer), ``IGNORED`` only frees the slot.
"""
from __future__ import annotations

import math

from .kernel import IGNORED, FAILURE, REJECT, GuardKernel, SplitMix64
from .window import MAX_EPOCH, clock_error

__all__ = ["AdaptiveKernel", "GRADIENT2", "VEGAS", "AIMD", "log10_step"]

GRADIENT2 = 0
VEGAS = 1
AIMD = 2

_BELOW = -MAX_EPOCH
_LONG_WARMUP = 10  # samples the long RTT is a plain mean before it turns exponential


def log10_step(limit: float) -> int:
    """concurrency-limits' ``Log10RootIntFunction``: ``max(1, floor(log10(limit)))``."""
    n = int(limit)
    return max(1, int(math.log10(n))) if n >= 1 else 1


class AdaptiveKernel(GuardKernel):
    """The limit of one :class:`~gameguard.AdaptiveLimiter`; see the module docstring.

    ``window > 0``: samples are pooled until a window of ``window`` seconds with at least
    ``window_samples`` of them ends, then the algorithm sees their mean RTT, the largest
    in-flight count and whether any dropped (samples under ``min_rtt`` are skipped);
    ``window == 0``: every sample updates the limit. Unused knobs of the other algorithms
    are kept but play no part.
    """

    def __init__(self, algorithm: int, initial: float, min_limit: float, max_limit: float,
                 window: float, window_samples: int, min_rtt: float, smoothing: float,
                 queue_size: float, long_window: int, tolerance: float,
                 probe_multiplier: float, backoff: float, timeout: float, seed: int) -> None:
        super().__init__()
        if algorithm not in (GRADIENT2, VEGAS, AIMD):
            raise ValueError(f"unknown algorithm {algorithm}")
        self.algorithm = algorithm
        self.min_limit = float(min_limit)
        self.max_limit = float(max_limit)
        self.window = float(window)
        self.window_samples = window_samples
        self.min_rtt = float(min_rtt)
        self.smoothing = float(smoothing)
        self.queue_size = float(queue_size)
        self.long_factor = 2.0 / (long_window + 1)
        self.tolerance = float(tolerance)
        self.probe_multiplier = float(probe_multiplier)
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.estimate = float(initial)
        self._limit = int(initial)
        self._in_flight = 0
        self.samples = 0           # samples the algorithm has seen (windows, when windowed)
        self.drops = 0
        self.rejected = 0
        # gradient2: the long-term RTT (mean over the first samples, then an EMA)
        self.long_rtt = 0.0
        self.long_count = 0
        self.last_rtt = 0.0
        # vegas: the no-load RTT and when to re-probe it
        self.rtt_noload = 0.0
        self.probe_count = 0
        self._rng = SplitMix64(seed)
        self.probe_jitter = 0.0
        self._reset_probe_jitter()
        # the window being filled
        self.window_end = -math.inf
        self._w_sum = 0.0
        self._w_count = 0
        self._w_max_in_flight = 0
        self._w_drop = False

    limit = property(lambda self: self._limit)
    in_flight = property(lambda self: self._in_flight)
    self_timed = False  # the compiled twin may time calls with the CPU's counter

    def time_calls(self, on: bool) -> bool:
        """The compiled twin's cheaper timer (see there); here calls are always timed by
        the caller's clock: returns False."""
        return False

    def enter(self, now: float) -> int:
        if not _BELOW < now < MAX_EPOCH:
            raise clock_error(now, MAX_EPOCH)
        with self._lock:
            if self._in_flight < self._limit:
                self._in_flight += 1
                return self._in_flight
            self.rejected += 1
            return REJECT

    def exit(self, token: int, now: float, duration: float, outcome: int) -> None:
        if token < 0:
            return
        with self._lock:
            self._in_flight -= 1
            if outcome == IGNORED:
                return
            drop = outcome == FAILURE
            if drop:
                self.drops += 1
            if self.window > 0.0:
                self._pool(now, duration, token, drop)
            elif duration > 0.0:
                self._update(duration, token, drop)

    # -- WindowedLimit -------------------------------------------------------------------------
    def _pool(self, now: float, rtt: float, in_flight: int, drop: bool) -> None:
        if rtt < self.min_rtt or not rtt > 0.0:  # no time measured: says nothing
            return
        self._w_sum += rtt
        self._w_count += 1
        if in_flight > self._w_max_in_flight:
            self._w_max_in_flight = in_flight
        self._w_drop = self._w_drop or drop
        if now > self.window_end:  # the window ends: hand it on if it has enough samples
            if self.window_end != -math.inf and self._w_count >= self.window_samples:
                self._update(self._w_sum / self._w_count, self._w_max_in_flight, self._w_drop)
            self.window_end = now + self.window
            self._w_sum = 0.0
            self._w_count = 0
            self._w_max_in_flight = 0
            self._w_drop = False

    # -- the algorithms ------------------------------------------------------------------------
    def _update(self, rtt: float, in_flight: int, drop: bool) -> None:
        self.samples += 1
        if self.algorithm == GRADIENT2:
            estimate = self._gradient2(rtt, in_flight)
        elif self.algorithm == VEGAS:
            estimate = self._vegas(rtt, in_flight, drop)
        else:
            estimate = self._aimd(rtt, in_flight, drop)
        self.estimate = max(self.min_limit, min(self.max_limit, estimate))
        self._limit = int(self.estimate)

    def _gradient2(self, rtt: float, in_flight: int) -> float:
        estimate = self.estimate
        self.last_rtt = rtt
        if self.long_count < _LONG_WARMUP:
            self.long_count += 1
            self.long_rtt += (rtt - self.long_rtt) / self.long_count
        else:
            self.long_rtt = self.long_rtt * (1.0 - self.long_factor) + rtt * self.long_factor
        long_rtt = self.long_rtt
        if long_rtt / rtt > 2.0:  # load has passed: let the long RTT come down faster
            self.long_rtt = long_rtt * 0.95
        if in_flight < estimate / 2.0:  # app-limited: the RTT says nothing about the limit
            return estimate
        gradient = max(0.5, min(1.0, self.tolerance * long_rtt / rtt))
        new = estimate * gradient + self.queue_size
        return estimate * (1.0 - self.smoothing) + new * self.smoothing

    def _reset_probe_jitter(self) -> None:
        self.probe_jitter = 0.5 + 0.5 * self._rng.next_float()

    def _vegas(self, rtt: float, in_flight: int, drop: bool) -> float:
        estimate = self.estimate
        self.probe_count += 1
        if self.probe_jitter * self.probe_multiplier * estimate <= self.probe_count:
            self._reset_probe_jitter()  # re-measure the no-load RTT from this sample
            self.probe_count = 0
            self.rtt_noload = rtt
            return estimate
        if self.rtt_noload == 0.0 or rtt < self.rtt_noload:
            self.rtt_noload = rtt
            return estimate
        step = log10_step(estimate)
        if drop:
            new = estimate - step
        elif in_flight * 2 < estimate:  # app-limited
            return estimate
        else:
            queue = math.ceil(estimate * (1.0 - self.rtt_noload / rtt))
            if queue <= step:            # no queueing: grow fast (beta)
                new = estimate + 6 * step
            elif queue < 3 * step:       # below alpha: grow
                new = estimate + step
            elif queue > 6 * step:       # above beta: queueing, shrink
                new = estimate - step
            else:
                return estimate
        new = max(1.0, min(self.max_limit, new))
        return (1.0 - self.smoothing) * estimate + self.smoothing * new

    def _aimd(self, rtt: float, in_flight: int, drop: bool) -> float:
        limit = self._limit
        if drop or rtt > self.timeout:
            return float(int(limit * self.backoff))
        if in_flight * 2 >= limit:
            return float(limit + 1)
        return float(limit)
