# cython: language_level=3
"""Drain kernel (compiled twin of ``gameguard._pure.drain``)."""
from libc.math cimport fabs
from gameguard._fast.kernel cimport GuardKernel, REJECT_, PENDING_WAKE_
from gameguard._pure.window import clock_error

__all__ = ["DrainKernel"]

cdef double MAX_EPOCH = <double>(1LL << 52)


cdef class DrainKernel(GuardKernel):
    """Admits every call until :meth:`start`, then none; see the pure twin."""

    cdef readonly bint draining
    cdef readonly long long in_flight
    cdef public long long waiters

    def __init__(self):
        self.precise = False  # counts calls in flight: time plays no part

    def start(self):
        """Refuse every ``enter`` from now on (calls in flight finish)."""
        self.draining = True

    cpdef long long enter(self, double now):
        if not fabs(now) < MAX_EPOCH:  # NaN too
            raise clock_error(now, MAX_EPOCH)
        if self.draining:
            return REJECT_
        self.in_flight += 1
        return 0

    cpdef void exit(self, long long token, double now, double duration, int outcome):
        if token < 0:
            return
        self.in_flight -= 1
        if self.in_flight == 0 and self.waiters:
            self.pending |= PENDING_WAKE_
