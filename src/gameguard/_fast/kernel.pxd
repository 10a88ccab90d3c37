# The guard-kernel protocol at C level: the compiled call wrapper calls these through the
# vtable, with no Python-level call. Twin of gameguard/_pure/kernel.py.

cdef enum:
    SUCCESS_ = 0
    FAILURE_ = 1
    IGNORED_ = 2
    REJECT_ = -1
    PENDING_EVENTS_ = 1
    PENDING_WAKE_ = 2
    # cumulative counters, indexed by outcome (SUCCESS_, FAILURE_, IGNORED_), then these
    REJECTED_ = 3
    FALLBACK_ = 4
    N_COUNTS_ = 5

cdef extern from *:
    """
    #include <time.h>
    /* CLOCK_MONOTONIC_COARSE is Linux's; elsewhere the coarse view is the precise clock. */
    #ifdef CLOCK_MONOTONIC_COARSE
    #define GG_CLOCK_COARSE CLOCK_MONOTONIC_COARSE
    #else
    #define GG_CLOCK_COARSE CLOCK_MONOTONIC
    #endif
    """
    int CLOCK_MONOTONIC_COARSE_ "GG_CLOCK_COARSE"

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef inline double monotonic_precise() noexcept nogil:
    """CLOCK_MONOTONIC, the clock time.monotonic() reads on Linux (about 25 ns)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9

cdef inline double monotonic_coarse() noexcept nogil:
    """The same clock as of the last kernel tick (about 4 ns; up to one tick, typically
    1-4 ms, behind monotonic_precise()). Where the OS has no coarse clock (not Linux),
    the precise one."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE_, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9

from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE, PyFloat_AsDouble
from cpython.long cimport PyLong_CheckExact, PyLong_AsDouble

cdef inline double as_double(object x) except? -1.0:
    """A cost or amount as a C double; TypeError for strings (which float() would parse).
    An int converted by PyFloat_AsDouble allocates a temporary float (~70 ns);
    PyLong_AsDouble does not."""
    if PyFloat_CheckExact(x):
        return PyFloat_AS_DOUBLE(x)
    if PyLong_CheckExact(x):
        return PyLong_AsDouble(x)
    if isinstance(x, (str, bytes, bytearray)):
        raise TypeError(f"cost must be a real number, not {type(x).__name__}")
    return PyFloat_AsDouble(x)

cdef class GuardKernel:
    cdef public int pending
    cdef public bint precise   # needs the exact clock (the default); False: the coarse view will do
    # Cumulative calls by outcome, rejections, fallbacks: bumped by the call protocol
    # (``counts[outcome] += 1``), read by exporters through ``counters()``. ``counts``
    # points at ``_counts``, or at the owner's for a view (a key of a keyed table).
    cdef long long _counts[N_COUNTS_]
    cdef long long *counts
    cdef object _counts_owner   # keeps the kernel ``counts`` points into alive
    cpdef long long enter(self, double now)
    cpdef void exit(self, long long token, double now, double duration, int outcome)
    cpdef double retry_after(self, double now)

cdef inline void share_counts(GuardKernel view, GuardKernel owner) noexcept:
    """``view`` counts into ``owner``'s counters (a key of a table, a kind of a limiter)."""
    view.counts = owner.counts
    view._counts_owner = owner

cdef inline void bump(GuardKernel k, int what) noexcept:
    """``counts[what] += 1`` (a function: on an attribute chain Cython would take a
    reference to the kernel for the update)."""
    k.counts[what] += 1

cdef inline bint tally(GuardKernel k, bint admitted) noexcept:
    """Count a ``try_acquire`` decision: admitted as successful, else rejected."""
    k.counts[SUCCESS_ if admitted else REJECTED_] += 1
    return admitted

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
