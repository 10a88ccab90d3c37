# cython: language_level=3
"""Circuit-breaker and adaptive-throttle kernels (compiled twin of ``gameguard._pure.breaker``).

No Python-level call happens inside ``enter``/``exit`` (except a user-injected throttle
``rng``, and raising for an unusable clock reading), so each is atomic under the GIL
without a lock. Sizes, indices and the state are read-only from Python: bounds checks are
off, and a size written from Python could send the probe loops outside their arrays.
"""
cimport cython
from libc.math cimport fabs, isinf, INFINITY
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy
from cpython.exc cimport PyErr_NoMemory

from gameguard._fast.kernel cimport (GuardKernel, SplitMix64, FAILURE_, IGNORED_, REJECT_,
                                     PENDING_EVENTS_)
from gameguard._fast.window cimport RollingWindow
from gameguard._pure.window import clock_error

__all__ = ["CLOSED", "OPEN", "HALF_OPEN", "FORCED_OPEN", "DISABLED", "STATE_NAMES",
           "BreakerKernel", "ThrottleKernel"]

cdef enum:
    CLOSED_ = 0
    OPEN_ = 1
    HALF_OPEN_ = 2
    FORCED_OPEN_ = 3
    DISABLED_ = 4
    FREE_ = 0
    DONE_ = -1
    LOG_SIZE_ = 8

CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED = CLOSED_, OPEN_, HALF_OPEN_, FORCED_OPEN_, DISABLED_
STATE_NAMES = ("closed", "open", "half_open", "forced_open", "disabled")
LOG_SIZE = LOG_SIZE_


@cython.no_gc_clear  # a pending awaitable may release through us during GC teardown
cdef class BreakerKernel(GuardKernel):
    """The breaker state machine over a :class:`RollingWindow` (see the pure twin)."""

    cdef readonly double failure_rate, slow_call_rate, slow_call_duration, open_duration
    cdef readonly double opened_at, open_until
    cdef readonly bint slow_trips
    cdef readonly long long minimum_calls, consecutive_failures, failure_count
    cdef readonly long long generation, consecutive, transitions, tickets
    cdef readonly int half_open_calls, state, probes_done
    cdef readonly RollingWindow stats
    cdef double _limit              # stats.limit, one load nearer on the per-call path
    # what enter hands out at once (closed/disabled: the epoch's token, else -1: look) and
    # what exit counts (closed: that token, else -2: nothing); set with the state
    cdef long long _admit, _counted
    cdef long long *_owner
    cdef double *_until
    cdef int _log[LOG_SIZE_]

    def __cinit__(self, *args, **kwargs):
        self._owner = NULL
        self._until = NULL

    def __init__(self, double failure_rate, double slow_call_rate, double slow_call_duration,
                 long long minimum_calls, double window, int buckets,
                 long long consecutive_failures, long long failure_count,
                 double open_duration, int half_open_calls):
        self.stats = RollingWindow(window, buckets)
        self._limit = self.stats.limit
        self.state = CLOSED_
        self.configure(failure_rate, slow_call_rate, slow_call_duration, minimum_calls,
                       consecutive_failures, failure_count, open_duration, half_open_calls, 0.0)

    def configure(self, double failure_rate, double slow_call_rate, double slow_call_duration,
                  long long minimum_calls, long long consecutive_failures,
                  long long failure_count, double open_duration, int half_open_calls,
                  double now):
        """New thresholds from the next outcome on, keeping the window and the state (see
        the pure twin)."""
        cdef int i, keep
        if half_open_calls < 1:
            raise ValueError(f"half_open_calls must be >= 1, got {half_open_calls}")
        cdef long long *owner = <long long *>calloc(half_open_calls, sizeof(long long))
        cdef double *until = <double *>calloc(half_open_calls, sizeof(double))
        if owner == NULL or until == NULL:
            free(owner)
            free(until)
            PyErr_NoMemory()
        keep = min(half_open_calls, self.half_open_calls)
        if keep:
            memcpy(owner, self._owner, keep * sizeof(long long))
            memcpy(until, self._until, keep * sizeof(double))
        free(self._owner)
        free(self._until)
        self._owner = owner
        self._until = until
        self.half_open_calls = half_open_calls
        self.failure_rate = failure_rate
        self.slow_call_rate = slow_call_rate
        self.slow_call_duration = slow_call_duration
        self.slow_trips = not isinf(slow_call_duration)
        self.precise = self.slow_trips  # else a tick of lag only moves bucket edges
        self.minimum_calls = minimum_calls
        self.consecutive_failures = consecutive_failures
        self.failure_count = failure_count
        self.open_duration = open_duration
        if self.state == OPEN_:
            self.open_until = self.opened_at + open_duration
        self.probes_done = 0
        for i in range(half_open_calls):
            if owner[i] == DONE_:
                self.probes_done += 1
        if self.state == HALF_OPEN_ and self.probes_done >= half_open_calls:
            self._transition(CLOSED_)

    def __dealloc__(self):
        free(self._owner)
        free(self._until)

    @property
    def log(self):
        return [self._log[i] for i in range(LOG_SIZE_)]

    @property
    def probe_owner(self):
        return [self._owner[i] for i in range(self.half_open_calls)]

    @property
    def probe_until(self):
        return [self._until[i] for i in range(self.half_open_calls)]

    # -- the guard protocol -------------------------------------------------------------
    cpdef long long enter(self, double now):
        cdef int i, free_slot
        cdef long long owner
        if not fabs(now) < self._limit:  # NaN too
            raise clock_error(now, self._limit)
        if self._admit >= 0:
            return self._admit
        cdef int state = self.state
        if state == OPEN_:
            if now < self.open_until:
                return REJECT_
            self._transition(HALF_OPEN_)
        elif state == FORCED_OPEN_:
            return REJECT_
        free_slot = -1
        for i in range(self.half_open_calls):
            owner = self._owner[i]
            if owner > 0 and now >= self._until[i]:
                self._owner[i] = FREE_
                owner = FREE_
            if owner == FREE_ and free_slot < 0:
                free_slot = i
        if free_slot < 0:
            return REJECT_
        self.tickets += 1
        self._owner[free_slot] = self.tickets
        self._until[free_slot] = now + self.open_duration
        return self.tickets * 2 + 1

    cpdef void exit(self, long long token, double now, double duration, int outcome):
        cdef bint failure
        cdef long long ticket
        cdef int i, slot
        if token == self._counted:  # a closed call of this epoch
            if outcome == IGNORED_ or not fabs(now) < self._limit:
                return
            failure = outcome == FAILURE_
            self.stats.record_c(now, failure, duration >= self.slow_call_duration, duration)
            if failure:
                self.consecutive += 1
            else:
                self.consecutive = 0
                if self.stats.failures == 0 and self.stats.slow == 0:
                    return  # healthy: nothing could trip (as in the pure twin)
            if self._should_trip():
                self._open(now)
            return
        if token < 0 or token & 1 == 0 or self.state != HALF_OPEN_:
            return
        ticket = token >> 1
        slot = -1
        for i in range(self.half_open_calls):
            if self._owner[i] == ticket:
                slot = i
                break
        if slot < 0:
            return
        if outcome == IGNORED_ or not now < self._until[slot] or not self.stats.usable(now):
            # no outcome, one too late to count, or an unusable clock reading
            self._owner[slot] = FREE_
        elif outcome == FAILURE_ or (self.slow_trips and duration >= self.slow_call_duration):
            self._open(now)
        else:
            self._owner[slot] = DONE_
            self.probes_done += 1
            if self.probes_done >= self.half_open_calls:
                self._transition(CLOSED_)

    cpdef double retry_after(self, double now):
        cdef double first = INFINITY
        cdef int i
        self.stats.check(now)
        if self.state == OPEN_:
            return max(self.open_until - now, 0.0)
        if self.state == HALF_OPEN_:
            for i in range(self.half_open_calls):
                if self._owner[i] > 0:
                    first = min(first, self._until[i])
            return max(first - now, 0.0) if not isinf(first) else 0.0
        return -1.0

    # -- state ----------------------------------------------------------------------------
    def poll(self, double now):
        """The state at ``now`` (makes the due open → half-open move)."""
        self.stats.check(now)
        if self.state == OPEN_ and now >= self.open_until:
            self._transition(HALF_OPEN_)
        return self.state

    def force(self, int state, double now):
        """Move to ``state`` by hand (forced_open, disabled, or closed as a reset)."""
        self.stats.check(now)
        if self.state == OPEN_ and now >= self.open_until:
            self._transition(HALF_OPEN_)  # listeners see the due move first
        if state == OPEN_:
            self._open(now)
        else:
            self._transition(state)

    def totals(self, double now):
        self.stats.check(now)
        self.stats.advance_c(now)
        return (self.stats.calls, self.stats.failures, self.stats.slow, self.stats.duration)

    cdef bint _should_trip(self) noexcept:
        cdef RollingWindow stats = self.stats
        cdef long long calls = stats.calls
        if self.consecutive_failures and self.consecutive >= self.consecutive_failures:
            return True
        if self.failure_count and stats.failures >= self.failure_count:
            return True
        if calls >= self.minimum_calls:  # a zero count cannot reach a rate > 0: no division
            if stats.failures and <double>stats.failures / <double>calls >= self.failure_rate:
                return True
            if self.slow_trips and stats.slow and \
                    <double>stats.slow / <double>calls >= self.slow_call_rate:
                return True
        return False

    cdef void _open(self, double now) noexcept:
        self._transition(OPEN_)
        self.opened_at = now
        self.open_until = now + self.open_duration

    cdef void _transition(self, int new) noexcept:
        cdef int i
        cdef int old = self.state
        self.state = new
        self.generation += 1
        self._admit = self.generation * 2 if new == CLOSED_ or new == DISABLED_ else REJECT_
        self._counted = self.generation * 2 if new == CLOSED_ else -2
        for i in range(self.half_open_calls):
            self._owner[i] = FREE_
        self.probes_done = 0
        if new == CLOSED_:
            self.stats.reset_c()
            self.consecutive = 0
        if old == new:  # a reset of a closed breaker: a fresh epoch, but no state change
            return
        self._log[self.transitions % LOG_SIZE_] = old * 8 + new
        self.transitions += 1
        self.pending |= PENDING_EVENTS_


@cython.no_gc_clear
cdef class ThrottleKernel(GuardKernel):
    """Google SRE client-side throttling (go-zero's ``googleBreaker``); see the pure twin."""

    cdef readonly double k, protection
    cdef readonly RollingWindow stats
    cdef readonly SplitMix64 random
    cdef readonly object rng

    def __init__(self, double k, double protection, double window, int buckets, seed, rng=None):
        self.precise = False  # a probabilistic window of seconds: a 4 ms lag changes nothing
        self.stats = RollingWindow(window, buckets)
        self.random = SplitMix64(seed)
        self.rng = rng
        self.configure(k, protection)

    def configure(self, double k, double protection):
        """New ``k`` and ``protection`` from the next call on; the window is kept."""
        self.k = k
        self.protection = protection

    cdef double _p(self, double now) noexcept:
        cdef RollingWindow stats = self.stats
        stats.advance_c(now)
        cdef double requests = <double>stats.calls
        cdef double accepts = <double>(stats.calls - stats.failures)
        cdef double excess = requests - self.protection - self.k * accepts
        if excess <= 0.0:  # healthy: no division (the denominator is positive)
            return 0.0
        return excess / (requests + 1.0)

    def drop_probability(self, double now):
        self.stats.check(now)
        return self._p(now)

    cpdef long long enter(self, double now):
        if not self.stats.usable(now):
            raise clock_error(now, self.stats.limit)
        cdef double p = self._p(now)
        cdef double draw
        if p <= 0.0:
            return 0
        if self.rng is not None:
            draw = self.rng()
        else:
            draw = self.random.next_c()
        if draw < p:
            self.stats.record_c(now, True, False, 0.0)
            return REJECT_
        return 0

    cpdef void exit(self, long long token, double now, double duration, int outcome):
        if token < 0 or outcome == IGNORED_ or not self.stats.usable(now):
            return
        self.stats.record_c(now, outcome == FAILURE_, False, duration)

    def totals(self, double now):
        self.stats.check(now)
        self.stats.advance_c(now)
        return (self.stats.calls, self.stats.failures, self.stats.slow, self.stats.duration)
