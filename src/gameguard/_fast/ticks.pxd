# The CPU's time-stamp counter as a call timer (header-only, cimported by the adaptive
# limiter's and the shedder's kernels): a raw read, calibration against CLOCK_MONOTONIC, and
# the duration of a call whose token holds the counter's low TICK_BITS bits.
from gameguard._fast.kernel cimport monotonic_precise

cdef extern from *:
    """
    /* The CPU's time-stamp counter, read unordered: it overlaps the work around it, where
       a precise CLOCK_MONOTONIC read orders itself (lfence/rdtscp) and stalls the pipeline
       (benchmarks/clock_reads.py). x86 only; elsewhere calls are timed by the clock. */
    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    #include <x86intrin.h>
    #define GG_HAVE_TICKS 1
    static inline unsigned long long gg_ticks(void) { return __rdtsc(); }
    #else
    #define GG_HAVE_TICKS 0
    static inline unsigned long long gg_ticks(void) { return 0; }
    #endif
    /* A token keeps the counter's low 43 bits: 40 minutes at 3.6 GHz. A call the caller's
       coarse clock says took 0.5 s or more keeps that duration (the bits may have wrapped). */
    #define GG_TICK_BITS 43
    #define GG_TICK_MASK ((1ULL << GG_TICK_BITS) - 1)
    #define GG_LONG 0.5
    """
    bint HAVE_TICKS "GG_HAVE_TICKS"
    unsigned long long gg_ticks() noexcept nogil
    int TICK_BITS "GG_TICK_BITS"
    unsigned long long TICK_MASK "GG_TICK_MASK"
    double LONG "GG_LONG"


cdef inline double calibrate() except? -2.0:
    """Seconds per tick of the time-stamp counter, against CLOCK_MONOTONIC over 1 ms;
    -1 where it cannot be trusted: not x86, or Linux does not use it as its own clock
    source (which it does only when the counter is constant-rate and in step across CPUs)."""
    cdef double a0, b0, a1, b1
    cdef unsigned long long k0, k1
    if not HAVE_TICKS:
        return -1.0
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            if f.read().strip() != "tsc":
                return -1.0
    except OSError:
        return -1.0
    for _ in range(5):  # each end bracketed by two clock reads: a preempted end is retried
        a0 = monotonic_precise(); k0 = gg_ticks(); b0 = monotonic_precise()
        while monotonic_precise() - a0 < 1e-3:
            pass
        a1 = monotonic_precise(); k1 = gg_ticks(); b1 = monotonic_precise()
        if b0 - a0 < 2e-6 and b1 - a1 < 2e-6 and k1 > k0:  # error under 0.4 %
            return ((a1 + b1) - (a0 + b0)) / 2.0 / <double>(k1 - k0)
    return -1.0


cdef inline double tick_duration(unsigned long long start, double duration,
                                 double seconds_per_tick) noexcept:
    """Seconds since ``start`` (the counter's low TICK_BITS bits) by the counter, or the
    caller's ``duration`` if that is LONG or more (the counter's bits may have wrapped)."""
    cdef unsigned long long ticks
    if duration >= LONG:
        return duration
    ticks = (gg_ticks() - start) & TICK_MASK
    # a counter a little behind on another CPU: "negative", nothing measured
    return 0.0 if ticks > TICK_MASK // 2 else <double>ticks * seconds_per_tick
