cdef class RollingWindow:
    cdef public double window, bucket_len
    cdef public int buckets
    cdef public long long head
    cdef public long long calls, failures, slow
    cdef public double duration
    cdef double next_edge   # smallest now whose bucket is after head (exact: see _edge)
    cdef long long *_calls
    cdef long long *_failures
    cdef long long *_slow
    cdef double *_duration

    cdef void advance_c(self, double now) noexcept
    cdef void record_c(self, double now, bint failure, bint slow, double duration) noexcept
    cdef void reset_c(self) noexcept
    cdef double _edge(self, long long head) noexcept
