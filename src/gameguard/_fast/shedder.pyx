# cython: language_level=3
"""Load-shedding kernel (compiled twin of ``gameguard._pure.shedder``): go-zero's adaptive
shedder, same arithmetic in the same order as the pure twin."""
from libc.math cimport fabs, floor, INFINITY
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from gameguard._fast.kernel cimport GuardKernel, REJECT_, SUCCESS_
from gameguard._fast.ticks cimport gg_ticks, TICK_MASK, calibrate, tick_duration
from gameguard._pure.window import clock_error

__all__ = ["ShedderKernel"]

cdef double MAX_EPOCH = <double>(1LL << 52)
cdef double FLYING_BETA = 0.9
cdef double DEFAULT_MIN_RT = 1.0
cdef double OVERLOAD_FLOOR = 0.1
cdef double _seconds_per_tick = 0.0   # 0: not measured yet; < 0: no usable counter


cdef class ShedderKernel(GuardKernel):
    """The drop decision of one ``LoadShedder``; see the pure twin."""

    cdef readonly double threshold, bucket_len, cool_off, cpu, avg_flying, overload_time
    cdef readonly int buckets
    cdef readonly long long flying, passed, dropped
    cdef readonly bint dropped_recently
    cdef readonly object cpu_source
    cdef long long _head
    cdef long long *_pass
    cdef double *_rt_sum
    cdef long long *_rt_count
    cdef readonly bint self_timed  # calls timed by the counter (see time_calls)
    cdef double _spt

    def __init__(self, double threshold, double window, int buckets, double cool_off,
                 cpu_source=None):
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        self.cpu_source = cpu_source
        self.threshold = threshold
        self.buckets = buckets
        self.bucket_len = window / buckets
        self.cool_off = cool_off
        self.overload_time = -INFINITY
        self._pass = <long long *>PyMem_Calloc(buckets, sizeof(long long))
        self._rt_sum = <double *>PyMem_Calloc(buckets, sizeof(double))
        self._rt_count = <long long *>PyMem_Calloc(buckets, sizeof(long long))
        if self._pass == NULL or self._rt_sum == NULL or self._rt_count == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self._pass)
        PyMem_Free(self._rt_sum)
        PyMem_Free(self._rt_count)

    def time_calls(self, bint on):
        """Time calls with the CPU's time-stamp counter where it can be trusted (the
        adaptive limiter's kernel explains why); ``precise`` turns False. Only for the
        default clock; set before the first call. Returns whether calls are self-timed."""
        global _seconds_per_tick
        if on and _seconds_per_tick == 0.0:
            _seconds_per_tick = calibrate()
        self.self_timed = on and _seconds_per_tick > 0.0
        self._spt = _seconds_per_tick
        self.precise = not self.self_timed
        return self.self_timed

    def set_cpu(self, double cpu):
        """The latest CPU reading in [0, 1] (the public layer's sampler writes it)."""
        self.cpu = cpu

    cdef void _advance(self, double now) noexcept:
        cdef long long head = <long long>floor(now / self.bucket_len)
        cdef long long gap = head - self._head, i, j, last
        if gap <= 0:
            return
        last = gap if gap < self.buckets else self.buckets
        for i in range(1, last + 1):
            j = (self._head + i) % self.buckets
            if j < 0:
                j += self.buckets
            self._pass[j] = 0
            self._rt_sum[j] = 0.0
            self._rt_count[j] = 0
        self._head = head

    cdef inline long long _current(self) noexcept:
        cdef long long j = self._head % self.buckets
        return j + self.buckets if j < 0 else j

    def max_flight(self, double now):
        """``max(1, max_pass * min_rt / bucket_len)`` over the window before ``now``'s bucket."""
        return self._max_flight(now)

    cdef double _max_flight(self, double now) noexcept:
        cdef long long cur, max_pass = 1, j
        cdef double min_rt = DEFAULT_MIN_RT, avg, flight
        self._advance(now)
        cur = self._current()
        for j in range(self.buckets):
            if j == cur:
                continue
            if self._pass[j] > max_pass:
                max_pass = self._pass[j]
            if self._rt_count[j] > 0:
                avg = self._rt_sum[j] / self._rt_count[j]
                if avg < min_rt:
                    min_rt = avg
        flight = max_pass * min_rt / self.bucket_len
        return flight if flight > 1.0 else 1.0

    cdef bint _hot(self, double now) noexcept:
        if self.cpu >= self.threshold:
            self.overload_time = now
            return True
        if not self.dropped_recently:
            return False
        if now - self.overload_time < self.cool_off:
            return True
        self.dropped_recently = False
        return False

    cdef bint _over(self, double now) noexcept:
        cdef double factor = (1.0 - self.cpu) / (1.0 - self.threshold), limit
        factor = 1.0 if factor > 1.0 else (OVERLOAD_FLOOR if factor < OVERLOAD_FLOOR else factor)
        limit = self._max_flight(now) * factor
        return self.avg_flying > limit and self.flying > limit

    cpdef long long enter(self, double now):
        cdef double cpu
        if not fabs(now) < MAX_EPOCH:  # NaN too
            raise clock_error(now, MAX_EPOCH)
        if self.cpu_source is not None:
            cpu = float(self.cpu_source())
            self.cpu = 0.0 if cpu != cpu else (1.0 if cpu > 1.0 else (0.0 if cpu < 0.0 else cpu))
        if self._hot(now) and self._over(now):
            self.dropped_recently = True
            self.dropped += 1
            return REJECT_
        self.flying += 1
        return <long long>(gg_ticks() & TICK_MASK) if self.self_timed else 0

    cpdef void exit(self, long long token, double now, double duration, int outcome):
        cdef long long j
        if token < 0:
            return
        self.flying -= 1
        self.avg_flying = self.avg_flying * FLYING_BETA + self.flying * (1.0 - FLYING_BETA)
        if outcome != SUCCESS_:
            return
        if self.self_timed:
            duration = tick_duration(<unsigned long long>token, duration, self._spt)
        self._advance(now)
        j = self._current()
        self._pass[j] += 1
        self._rt_sum[j] += duration
        self._rt_count[j] += 1
        self.passed += 1
