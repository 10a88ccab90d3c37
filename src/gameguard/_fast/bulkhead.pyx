# cython: language_level=3
"""Concurrency-limit kernel (compiled twin of ``gameguard._pure.bulkhead``)."""
from libc.math cimport fabs
from gameguard._fast.kernel cimport GuardKernel, REJECT_, PENDING_WAKE_
from gameguard._pure.window import clock_error

__all__ = ["BulkheadKernel"]

cdef double MAX_EPOCH = <double>(1LL << 52)


cdef class BulkheadKernel(GuardKernel):
    """At most ``limit`` admitted calls in flight; see the pure twin."""

    cdef readonly long long limit, in_flight
    cdef public long long waiters

    def __init__(self, long long limit):
        self.limit = limit
        self.precise = False  # counts calls in flight: time plays no part

    def set_limit(self, long long limit):
        """A new bound from the next ``enter`` on (>= 1)."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit

    cpdef long long enter(self, double now):
        if not fabs(now) < MAX_EPOCH:  # NaN too
            raise clock_error(now, MAX_EPOCH)
        if self.in_flight < self.limit:
            self.in_flight += 1
            return 0
        return REJECT_

    cpdef void exit(self, long long token, double now, double duration, int outcome):
        if token < 0:
            return
        self.in_flight -= 1
        if self.waiters:
            self.pending |= PENDING_WAKE_
