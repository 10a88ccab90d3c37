# The guard-kernel protocol at C level: the compiled call wrapper calls these through the
# vtable, with no Python-level call. Twin of gameguard/_pure/kernel.py.

cdef enum:
    SUCCESS_ = 0
    FAILURE_ = 1
    IGNORED_ = 2
    REJECT_ = -1
    PENDING_EVENTS_ = 1
    PENDING_WAKE_ = 2

cdef class GuardKernel:
    cdef public int pending
    cpdef long long enter(self, double now)
    cpdef void exit(self, long long token, double now, double duration, int outcome)
    cpdef double retry_after(self, double now)

cdef class SplitMix64:
    cdef public unsigned long long state
    cdef inline double next_c(self) noexcept:
        cdef unsigned long long z
        self.state += 0x9E3779B97F4A7C15ULL
        z = self.state
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
        z = z ^ (z >> 31)
        return <double>(z >> 11) * (1.0 / 9007199254740992.0)
