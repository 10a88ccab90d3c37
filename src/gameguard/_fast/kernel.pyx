# cython: language_level=3
"""The guard-kernel protocol (compiled twin of ``gameguard._pure.kernel``)."""

SUCCESS = SUCCESS_
FAILURE = FAILURE_
IGNORED = IGNORED_
REJECT = REJECT_
PENDING_EVENTS = PENDING_EVENTS_
PENDING_WAKE = PENDING_WAKE_
REJECTED = REJECTED_
FALLBACK = FALLBACK_

__all__ = ["SUCCESS", "FAILURE", "IGNORED", "REJECT", "PENDING_EVENTS", "PENDING_WAKE",
           "REJECTED", "FALLBACK", "GuardKernel", "SplitMix64"]


cdef class GuardKernel:
    """Base of every compiled kernel; see the pure twin for the protocol."""

    def __cinit__(self, *args, **kwargs):
        # Exact by default: a kernel opts into the coarse clock view only when a lag of one
        # tick cannot change what it admits beyond what its documentation allows.
        self.precise = True
        self.counts = self._counts

    def bump(self, int what):
        """Add one to counter ``what`` (an outcome, ``REJECTED`` or ``FALLBACK``)."""
        if not 0 <= what < N_COUNTS_:
            raise ValueError(f"no counter {what}")
        self.counts[what] += 1

    def share_counts(self, GuardKernel owner):
        """Count into ``owner``'s counters from now on (views of one limiter)."""
        share_counts(self, owner)

    def counters(self):
        """``(successful, failed, ignored, rejected, fallbacks)`` since creation."""
        cdef long long *c = self.counts
        return (c[0], c[1], c[2], c[3], c[4])

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
