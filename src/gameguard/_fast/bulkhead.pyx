# cython: language_level=3
"""Concurrency-limit kernel (compiled twin of ``gameguard._pure.bulkhead``)."""
from gameguard._fast.kernel cimport GuardKernel, REJECT_, PENDING_WAKE_

__all__ = ["BulkheadKernel"]


cdef class BulkheadKernel(GuardKernel):
    """At most ``limit`` admitted calls in flight; see the pure twin."""

    cdef public long long limit, in_flight, waiters

    def __init__(self, long long limit):
        self.limit = limit
        self.precise = False  # counts calls in flight: time plays no part

    cpdef long long enter(self, double now):
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
