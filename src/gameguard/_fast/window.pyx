# cython: language_level=3
"""Rolling-window counters (compiled twin of ``gameguard._pure.window``)."""
from libc.math cimport floor, nextafter, INFINITY
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from cpython.exc cimport PyErr_NoMemory

__all__ = ["RollingWindow", "time_limit", "clock_error", "MAX_EPOCH"]

cdef long long FAR_PAST = -(1LL << 62)
# one copy of the bound and the error, shared with the pure twin (not per-call code)
from gameguard._pure.window import MAX_EPOCH, clock_error, time_limit


cdef inline long long _mod(long long a, long long n) noexcept:
    cdef long long r = a % n  # C truncates toward zero; Python's % is what the twin uses
    return r + n if r < 0 else r


cdef class RollingWindow:
    """Calls, failures, slow calls and total duration over the last ``window`` seconds."""

    def __cinit__(self, double window, int buckets):
        self.window = window
        self.buckets = buckets
        self.bucket_len = window / buckets
        self.limit = time_limit(self.bucket_len)
        self.head = FAR_PAST
        self.next_edge = -INFINITY
        self._calls = <long long *>calloc(buckets, sizeof(long long))
        self._failures = <long long *>calloc(buckets, sizeof(long long))
        self._slow = <long long *>calloc(buckets, sizeof(long long))
        self._duration = <double *>calloc(buckets, sizeof(double))
        if not (self._calls and self._failures and self._slow and self._duration):
            PyErr_NoMemory()

    def __dealloc__(self):
        free(self._calls)
        free(self._failures)
        free(self._slow)
        free(self._duration)

    cdef void advance_c(self, double now) noexcept:
        # Same decision as the twin's floor(now / bucket_len) <= head, without a division
        # on every call: division by a positive constant and floor are monotonic, so every
        # now below the first instant of the next bucket maps to head or earlier.
        if now < self.next_edge:
            return
        if not self.usable(now):  # callers check first; never UB from a bad reading
            return
        cdef long long epoch = <long long>floor(now / self.bucket_len)
        cdef long long gap = epoch - self.head
        cdef long long k, i
        if gap <= 0:
            return
        if gap >= self.buckets:
            self.reset_c()
        else:
            for k in range(1, gap + 1):
                i = _mod(self.head + k, self.buckets)
                self.calls -= self._calls[i]
                self.failures -= self._failures[i]
                self.slow -= self._slow[i]
                self.duration -= self._duration[i]
                self._calls[i] = 0
                self._failures[i] = 0
                self._slow[i] = 0
                self._duration[i] = 0.0
            if self.calls == 0:
                self.duration = 0.0
        self.head = epoch
        self.next_edge = self._edge(epoch)

    cdef double _edge(self, long long head) noexcept:
        """The smallest double t with floor(t / bucket_len) > head."""
        cdef double bl = self.bucket_len
        cdef double e = <double>(head + 1) * bl
        cdef double below = nextafter(e, -INFINITY)
        while floor(below / bl) > head:
            e = below
            below = nextafter(e, -INFINITY)
        while floor(e / bl) <= head:
            e = nextafter(e, INFINITY)
        return e

    cdef void record_c(self, double now, bint failure, bint slow, double duration) noexcept:
        self.advance_c(now)
        cdef long long i = _mod(self.head, self.buckets)
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

    cdef void reset_c(self) noexcept:
        memset(self._calls, 0, self.buckets * sizeof(long long))
        memset(self._failures, 0, self.buckets * sizeof(long long))
        memset(self._slow, 0, self.buckets * sizeof(long long))
        memset(self._duration, 0, self.buckets * sizeof(double))
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.duration = 0.0

    def check(self, double now):
        """``ValueError`` unless ``now`` is a usable clock reading (NaN fails too)."""
        if not self.usable(now):
            raise clock_error(now, self.limit)

    def advance(self, double now):
        """Drop the buckets that fell out of the window at ``now``."""
        if not now < self.next_edge:  # NaN too
            self.check(now)
        self.advance_c(now)

    def record(self, double now, bint failure, bint slow, double duration):
        """Count one call that ended at ``now``."""
        if not now < self.next_edge:  # NaN too
            self.check(now)
        self.record_c(now, failure, slow, duration)

    def reset(self):
        """Forget everything (a fresh window)."""
        self.reset_c()

    def totals(self, double now):
        """``(calls, failures, slow, total_duration)`` over the window at ``now``."""
        self.check(now)
        self.advance_c(now)
        return (self.calls, self.failures, self.slow, self.duration)
