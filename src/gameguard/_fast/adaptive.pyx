# cython: language_level=3
"""Adaptive concurrency-limit kernel (compiled twin of ``gameguard._pure.adaptive``).

Same arithmetic in the same order as the pure twin, so both decide alike bit for bit.
"""
from libc.math cimport fabs, ceil, log10, INFINITY
from gameguard._fast.kernel cimport GuardKernel, SplitMix64, REJECT_, IGNORED_, FAILURE_
from gameguard._fast.ticks cimport gg_ticks, TICK_MASK, calibrate, tick_duration
from gameguard._pure.window import clock_error

__all__ = ["AdaptiveKernel", "GRADIENT2", "VEGAS", "AIMD", "log10_step"]

cdef double MAX_EPOCH = <double>(1LL << 52)

# A self-timed call's token: the counter's low TICK_BITS bits above IN_FLIGHT_BITS bits of
# in-flight count (63 bits: a token stays >= 0).
cdef enum:
    IN_FLIGHT_BITS = 20
cdef long long IN_FLIGHT_MASK = (1LL << IN_FLIGHT_BITS) - 1
cdef double _seconds_per_tick = 0.0   # 0: not measured yet; < 0: no usable counter



cdef enum:
    GRADIENT2_ = 0
    VEGAS_ = 1
    AIMD_ = 2
    LONG_WARMUP = 10

GRADIENT2 = GRADIENT2_
VEGAS = VEGAS_
AIMD = AIMD_


cdef inline long long _log10_step(double limit) noexcept:
    cdef long long n = <long long>limit
    cdef long long s
    if n < 1:
        return 1
    s = <long long>log10(<double>n)
    return s if s > 1 else 1


def log10_step(limit):
    """concurrency-limits' ``Log10RootIntFunction``: ``max(1, floor(log10(limit)))``."""
    return _log10_step(limit)


cdef inline double _clamp(double x, double lo, double hi) noexcept:
    return lo if x < lo else (hi if x > hi else x)


cdef class AdaptiveKernel(GuardKernel):
    """The limit of one ``AdaptiveLimiter``; see the pure twin."""

    cdef readonly int algorithm
    cdef readonly double min_limit, max_limit, window, min_rtt, smoothing, queue_size
    cdef readonly double long_factor, tolerance, probe_multiplier, backoff, timeout
    cdef readonly long long window_samples
    cdef readonly double estimate
    cdef readonly long long limit, in_flight, samples, drops, rejected
    cdef readonly double long_rtt, last_rtt, rtt_noload, probe_jitter, window_end
    cdef readonly long long long_count, probe_count
    cdef SplitMix64 _rng
    cdef double _w_sum
    cdef long long _w_count, _w_max_in_flight
    cdef bint _w_drop
    cdef readonly bint self_timed  # calls timed by the counter (see time_calls)
    cdef double _spt               # its seconds per tick

    def __init__(self, int algorithm, double initial, double min_limit, double max_limit,
                 double window, long long window_samples, double min_rtt, double smoothing,
                 double queue_size, long long long_window, double tolerance,
                 double probe_multiplier, double backoff, double timeout, seed):
        if algorithm not in (GRADIENT2_, VEGAS_, AIMD_):
            raise ValueError(f"unknown algorithm {algorithm}")
        self.algorithm = algorithm
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.window = window
        self.window_samples = window_samples
        self.min_rtt = min_rtt
        self.smoothing = smoothing
        self.queue_size = queue_size
        self.long_factor = 2.0 / (long_window + 1)
        self.tolerance = tolerance
        self.probe_multiplier = probe_multiplier
        self.backoff = backoff
        self.timeout = timeout
        self.estimate = initial
        self.limit = <long long>initial
        self._rng = SplitMix64(seed)
        self._reset_probe_jitter()
        self.window_end = -INFINITY

    def time_calls(self, bint on):
        """Time calls with the CPU's time-stamp counter (read unordered, about 1 ns) where it
        can be trusted, rather than by the caller's durations; ``now`` may then be the
        coarse clock (``precise`` turns False). Only for the default clock: an injected
        one (a ManualClock) must time calls itself. Set before the first call (tokens
        change form). Returns whether calls are self-timed."""
        global _seconds_per_tick
        if on and _seconds_per_tick == 0.0:
            _seconds_per_tick = calibrate()
        self.self_timed = on and _seconds_per_tick > 0.0 and self.max_limit <= IN_FLIGHT_MASK
        self._spt = _seconds_per_tick
        self.precise = not self.self_timed
        return self.self_timed

    cpdef long long enter(self, double now):
        if not fabs(now) < MAX_EPOCH:  # NaN too
            raise clock_error(now, MAX_EPOCH)
        if self.in_flight < self.limit:
            self.in_flight += 1
            if self.self_timed:
                return <long long>((gg_ticks() & TICK_MASK) << IN_FLIGHT_BITS) | self.in_flight
            return self.in_flight
        self.rejected += 1
        return REJECT_

    cpdef void exit(self, long long token, double now, double duration, int outcome):
        cdef bint drop
        if token < 0:
            return
        self.in_flight -= 1
        if outcome == IGNORED_:
            return
        if self.self_timed:
            duration = tick_duration(<unsigned long long>token >> IN_FLIGHT_BITS, duration,
                                     self._spt)
            token &= IN_FLIGHT_MASK
        drop = outcome == FAILURE_
        if drop:
            self.drops += 1
        if self.window > 0.0:
            self._pool(now, duration, token, drop)
        elif duration > 0.0:
            self._update(duration, token, drop)

    # -- WindowedLimit -------------------------------------------------------------------------
    cdef void _pool(self, double now, double rtt, long long in_flight, bint drop) noexcept:
        if rtt < self.min_rtt or not rtt > 0.0:  # no time measured: says nothing
            return
        self._w_sum += rtt
        self._w_count += 1
        if in_flight > self._w_max_in_flight:
            self._w_max_in_flight = in_flight
        self._w_drop = self._w_drop or drop
        if now > self.window_end:
            if self.window_end != -INFINITY and self._w_count >= self.window_samples:
                self._update(self._w_sum / self._w_count, self._w_max_in_flight, self._w_drop)
            self.window_end = now + self.window
            self._w_sum = 0.0
            self._w_count = 0
            self._w_max_in_flight = 0
            self._w_drop = False

    # -- the algorithms ------------------------------------------------------------------------
    cdef void _update(self, double rtt, long long in_flight, bint drop) noexcept:
        cdef double estimate
        self.samples += 1
        if self.algorithm == GRADIENT2_:
            estimate = self._gradient2(rtt, in_flight)
        elif self.algorithm == VEGAS_:
            estimate = self._vegas(rtt, in_flight, drop)
        else:
            estimate = self._aimd(rtt, in_flight, drop)
        self.estimate = _clamp(estimate, self.min_limit, self.max_limit)
        self.limit = <long long>self.estimate

    cdef double _gradient2(self, double rtt, long long in_flight) noexcept:
        cdef double estimate = self.estimate, long_rtt, gradient, new
        self.last_rtt = rtt
        if self.long_count < LONG_WARMUP:
            self.long_count += 1
            self.long_rtt += (rtt - self.long_rtt) / self.long_count
        else:
            self.long_rtt = self.long_rtt * (1.0 - self.long_factor) + rtt * self.long_factor
        long_rtt = self.long_rtt
        if long_rtt / rtt > 2.0:
            self.long_rtt = long_rtt * 0.95
        if in_flight < estimate / 2.0:
            return estimate
        gradient = _clamp(self.tolerance * long_rtt / rtt, 0.5, 1.0)
        new = estimate * gradient + self.queue_size
        return estimate * (1.0 - self.smoothing) + new * self.smoothing

    cdef void _reset_probe_jitter(self) noexcept:
        self.probe_jitter = 0.5 + 0.5 * self._rng.next_c()

    cdef double _vegas(self, double rtt, long long in_flight, bint drop) noexcept:
        cdef double estimate = self.estimate, new, queue
        cdef long long step
        self.probe_count += 1
        if self.probe_jitter * self.probe_multiplier * estimate <= self.probe_count:
            self._reset_probe_jitter()
            self.probe_count = 0
            self.rtt_noload = rtt
            return estimate
        if self.rtt_noload == 0.0 or rtt < self.rtt_noload:
            self.rtt_noload = rtt
            return estimate
        step = _log10_step(estimate)
        if drop:
            new = estimate - step
        elif in_flight * 2 < estimate:
            return estimate
        else:
            queue = ceil(estimate * (1.0 - self.rtt_noload / rtt))
            if queue <= step:
                new = estimate + 6 * step
            elif queue < 3 * step:
                new = estimate + step
            elif queue > 6 * step:
                new = estimate - step
            else:
                return estimate
        new = _clamp(new, 1.0, self.max_limit)
        return (1.0 - self.smoothing) * estimate + self.smoothing * new

    cdef double _aimd(self, double rtt, long long in_flight, bint drop) noexcept:
        cdef long long limit = self.limit
        if drop or rtt > self.timeout:
            return <double>(<long long>(limit * self.backoff))
        if in_flight * 2 >= limit:
            return <double>(limit + 1)
        return <double>limit
