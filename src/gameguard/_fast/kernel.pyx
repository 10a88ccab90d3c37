# cython: language_level=3
"""The guard-kernel protocol (compiled twin of ``gameguard._pure.kernel``)."""

SUCCESS = SUCCESS_
FAILURE = FAILURE_
IGNORED = IGNORED_
REJECT = REJECT_
PENDING_EVENTS = PENDING_EVENTS_
PENDING_WAKE = PENDING_WAKE_

__all__ = ["SUCCESS", "FAILURE", "IGNORED", "REJECT", "PENDING_EVENTS", "PENDING_WAKE",
           "GuardKernel", "SplitMix64"]


cdef class GuardKernel:
    """Base of every compiled kernel; see the pure twin for the protocol."""

    def __cinit__(self, *args, **kwargs):
        # Exact by default: a kernel opts into the coarse clock view only when a lag of one
        # tick cannot change what it admits beyond what its documentation allows.
        self.precise = True

    cpdef long long enter(self, double now):
        raise NotImplementedError

    cpdef void exit(self, long long token, double now, double duration, int outcome):
        pass

    cpdef double retry_after(self, double now):
        return -1.0


cdef class SplitMix64:
    """splitmix64, bit-identical to the pure twin."""

    def __init__(self, seed):
        self.state = <unsigned long long>(seed & 0xFFFFFFFFFFFFFFFF)

    def next_float(self):
        return self.next_c()
