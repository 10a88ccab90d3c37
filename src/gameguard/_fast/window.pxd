from libc.math cimport fabs

cdef class RollingWindow:
    # readonly: with bounds checks off, a size or index written from Python could send the
    # ring arithmetic outside its arrays
    cdef readonly double window, bucket_len, limit
    cdef readonly int buckets
    cdef readonly long long head
    cdef readonly long long calls, failures, slow
    cdef readonly double duration
    cdef double next_edge   # smallest now whose bucket is after head (exact: see _edge)
    cdef long long *_calls
    cdef long long *_failures
    cdef long long *_slow
    cdef double *_duration

    cdef void advance_c(self, double now) noexcept
    cdef void record_c(self, double now, bint failure, bint slow, double duration) noexcept
    cdef void reset_c(self) noexcept
    cdef double _edge(self, long long head) noexcept
    cdef inline bint usable(self, double now) noexcept:
        """Whether ``now`` is a clock reading the bucket arithmetic can take exactly (NaN
        fails: every comparison with it is false)."""
        return fabs(now) < self.limit
