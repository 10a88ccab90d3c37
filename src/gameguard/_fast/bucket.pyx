# cython: language_level=3
"""Token-bucket, leaky-bucket and hybrid kernels (compiled twin of ``gameguard._pure.bucket``).

Every method does the same float operations in the same order as the pure twin. The
state updates make no Python-level call (a custom clock is called *before* them), so each
call is atomic under the GIL without a lock. See the pure twin for the semantics.
"""
cimport cython
from libc.math cimport floor, fabs
from posix.time cimport timespec, clock_getres

from gameguard._fast.arith cimport (_tb_level, _tb_wait, _lv_level, _lv_fits,
                                    _lv_wait, cost_double as _as_double, MAX_INDEX, EPS)
from gameguard._fast.kernel cimport (GuardKernel, REJECT_, SUCCESS_, CLOCK_MONOTONIC_COARSE_,
                                     bump, share_counts, tally,
                                     monotonic_coarse, monotonic_precise as _monotonic)

from gameguard.errors import ConfigurationError

__all__ = ["BURST", "STEADY", "MAX_MODES", "TokenBucketKernel", "LeakyBucketKernel",
           "HybridKernel", "HybridView"]

cdef enum:
    BURST_ = 0
    STEADY_ = 1
    MAX_MODES_ = 16

BURST, STEADY, MAX_MODES = BURST_, STEADY_, MAX_MODES_


cdef double _coarse_lag():
    """An upper bound of how far CLOCK_MONOTONIC_COARSE trails CLOCK_MONOTONIC: two of its
    ticks (one tick of resolution, one of slack for a late tick); 0 (do not use it) when
    the coarse clock is missing or coarser than 10 ms."""
    cdef timespec ts
    if clock_getres(CLOCK_MONOTONIC_COARSE_, &ts) != 0:
        return 0.0
    cdef double res = <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
    return 2.0 * res if 0.0 < res <= 0.010 else -1.0  # -1: never eligible


COARSE_LAG_S = _coarse_lag()
#: the largest share of (capacity - cost) the coarse path may withhold
cdef double CAPACITY_SHARE = 1.0 / 32.0
CAPACITY_SHARE_PY = CAPACITY_SHARE
cdef double COARSE_LAG = COARSE_LAG_S


cdef str _BURST_NAME = "burst"
cdef str _STEADY_NAME = "steady"


cdef int _kind_index(object kind) except -1:
    raise ConfigurationError(f"kind must be 'burst' or 'steady', got {kind!r}")


cdef int _bad_cost(double cost, double capacity) except -1:
    raise ConfigurationError(
        f"cost must be a number in (0, capacity={capacity!r}], got {cost!r}")


cdef long long _frame_of(double now, double frame) except? -1:
    """Twin of ``frame_of``: the frame index of ``now``; ValueError for a reading whose
    index is not finite or does not fit (``<long long>`` of it would be undefined)."""
    cdef double q = now / frame
    if not (-MAX_INDEX < q < MAX_INDEX):
        raise ValueError(f"clock reading {now!r} is not a usable time (frame {frame!r})")
    return <long long>floor(q)


cdef inline void _frame_bounds(long long index, double frame, double *lo, double *hi) noexcept:
    # twin of frame_bounds: readings surely in frame ``index``, a few ulps inside its edges
    cdef double a = <double>index * frame
    cdef double b = <double>(index + 1) * frame
    lo[0] = a + fabs(a) * (8.0 * EPS)
    hi[0] = b - fabs(b) * (8.0 * EPS)


cdef inline bint _coarse_ok(double rate, double capacity, double cost) noexcept:
    # the lag rule makes a bucket act at worst like one COARSE_LAG * rate smaller: used only
    # while that is a sliver of the room a call leaves (0.8 % of the default capacity of
    # one second of rate), else the exact clock decides
    return COARSE_LAG * rate <= CAPACITY_SHARE * (capacity - cost)


@cython.final  # direct (inlinable) calls of its cdef methods, no vtable
cdef class TokenBucketKernel(GuardKernel):
    """``tokens`` refill at ``rate`` up to ``capacity``; see the pure twin."""

    cdef readonly double rate, capacity, tokens, last
    cdef readonly object clock

    def __init__(self, double rate, double capacity, double initial, double now, clock=None):
        self.rate = rate
        self.capacity = capacity
        self.tokens = initial
        self.last = now
        self.clock = clock

    cdef inline void _settle(self, double now) noexcept:
        cdef double t
        if now > self.last:
            t = self.tokens + (now - self.last) * self.rate
            self.tokens = self.capacity if t > self.capacity else t
            self.last = now

    cdef inline bint _take(self, double now, double cost) noexcept:
        self._settle(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def configure(self, double now, double rate, double capacity):
        """See the pure twin: settle at the old rate, switch, clip tokens."""
        self._settle(now)
        self.rate = rate
        self.capacity = capacity
        if self.tokens > capacity:
            self.tokens = capacity

    def try_acquire(self, object cost=1.0):
        """Take ``cost`` tokens now. With the default clock: decided at the coarse clock's
        reading (4 ns instead of 25) with the lag rule of :meth:`take_lagged`, and a
        refusal decided again at the exact time, so no more is ever granted than the
        exact clock would grant."""
        cdef double now
        cdef double c = _as_double(cost)
        if not (c > 0.0 and c <= self.capacity):
            _bad_cost(c, self.capacity)
        if self.clock is None:
            if _coarse_ok(self.rate, self.capacity, c) and \
                    self._take_lagged(monotonic_coarse(), c, COARSE_LAG):
                bump(self, SUCCESS_)
                return True
            now = _monotonic()
        else:
            now = self.clock()
        return tally(self, self._take(now, c))

    def acquire_at(self, double now, double cost):
        return self._take(now, cost)

    cdef inline bint _take_lagged(self, double now, double cost, double lag) noexcept:
        cdef double t = self.tokens + (now - self.last) * self.rate if now > self.last else self.tokens
        if t + lag * self.rate >= self.capacity:
            # may reach capacity before the true time: settle at its upper bound
            self.tokens = self.capacity if t > self.capacity else t
            if now + lag > self.last:
                self.last = now + lag
        elif now > self.last:
            self.tokens = t
            self.last = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def take_lagged(self, double now, double cost, double lag):
        """See the pure twin: ``now`` may lag the true time by up to ``lag`` seconds."""
        return self._take_lagged(now, cost, lag)

    def delay_at(self, double now, double cost):
        return _tb_wait(self.tokens, self.last, now, self.rate, self.capacity, cost)

    def level_at(self, double now):
        return _tb_level(self.tokens, self.last, now, self.rate, self.capacity)

    def reserve(self, double now, double cost, double max_wait):
        cdef double d
        self._settle(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        d = _tb_wait(self.tokens, self.last, now, self.rate, self.capacity, cost)
        if d > max_wait:
            return -1.0
        self.tokens -= cost
        return d

    def refund(self, double now, double cost):
        cdef double t
        self._settle(now)
        t = self.tokens + cost
        self.tokens = self.capacity if t > self.capacity else t

    cpdef long long enter(self, double now):
        return 0 if self._take(now, 1.0) else REJECT_

    cpdef double retry_after(self, double now):
        return _tb_wait(self.tokens, self.last, now, self.rate, self.capacity, 1.0)


@cython.final  # direct (inlinable) calls of its cdef methods, no vtable
cdef class LeakyBucketKernel(GuardKernel):
    """``level`` drains at ``rate`` (counted at ``last``); see the pure twin."""

    cdef readonly double rate, capacity, level, last
    cdef readonly object clock

    def __init__(self, double rate, double capacity, double now, clock=None):
        self.rate = rate
        self.capacity = capacity
        self.level = 0.0
        self.last = now
        self.clock = clock

    cdef inline void _settle(self, double now) noexcept:
        cdef double t
        if now > self.last:
            t = self.level - (now - self.last) * self.rate
            self.level = 0.0 if t < 0.0 else t
            self.last = now

    cdef inline bint _take(self, double now, double cost) noexcept:
        self._settle(now)
        if self.level + cost <= self.capacity:
            self.level += cost
            return True
        return False

    def configure(self, double now, double rate, double capacity):
        """See the pure twin: settle at the old rate, switch, keep the level."""
        self._settle(now)
        self.rate = rate
        self.capacity = capacity

    cdef inline bint _take_lagged(self, double now, double cost, double lag) noexcept:
        cdef double t = self.level - (now - self.last) * self.rate if now > self.last else self.level
        if t < 0.0:
            t = 0.0
        if t - lag * self.rate <= 0.0:
            # may run empty before the true time: settle at its upper bound
            self.level = t
            if now + lag > self.last:
                self.last = now + lag
        elif now > self.last:
            self.level = t
            self.last = now
        if self.level + cost <= self.capacity:
            self.level += cost
            return True
        return False

    def take_lagged(self, double now, double cost, double lag):
        """See the pure twin: ``now`` may lag the true time by up to ``lag`` seconds."""
        return self._take_lagged(now, cost, lag)

    def try_acquire(self, object cost=1.0):
        """Meter ``cost`` now. With the default clock: decided at the coarse clock's reading
        with the lag rule of :meth:`take_lagged`, a refusal decided again at the exact time
        (as the token bucket does)."""
        cdef double now
        cdef double c = _as_double(cost)
        if not (c > 0.0 and c <= self.capacity):
            _bad_cost(c, self.capacity)
        if self.clock is None:
            if _coarse_ok(self.rate, self.capacity, c) and \
                    self._take_lagged(monotonic_coarse(), c, COARSE_LAG):
                bump(self, SUCCESS_)
                return True
            now = _monotonic()
        else:
            now = self.clock()
        return tally(self, self._take(now, c))

    def acquire_at(self, double now, double cost):
        return self._take(now, cost)

    def delay_at(self, double now, double cost):
        return _lv_wait(self.level, self.last, now, self.rate, self.capacity, cost)

    def level_at(self, double now):
        return _lv_level(self.level, self.last, now, self.rate)

    def reserve(self, double now, double cost, double max_wait):
        cdef double d
        self._settle(now)
        d = self.level / self.rate
        if d > max_wait:
            return -1.0
        self.level += cost
        return d

    def refund(self, double now, double cost):
        cdef double t
        self._settle(now)
        t = self.level - cost
        self.level = 0.0 if t < 0.0 else t

    cpdef long long enter(self, double now):
        return 0 if self._take(now, 1.0) else REJECT_

    cpdef double retry_after(self, double now):
        return _lv_wait(self.level, self.last, now, self.rate, self.capacity, 1.0)


@cython.final  # direct (inlinable) calls of its cdef methods, no vtable
cdef class HybridKernel:
    """Burst token bucket + steady leaky meter over one budget; see the pure twin.

    Every field is read-only from Python: ``mode`` and the other indices address the
    ``_shares`` array without bounds checks."""

    cdef readonly double total_rate, capacity, leak_capacity, frame, threshold
    cdef readonly double burst_rate, steady_rate, burst_tokens, steady_level
    cdef readonly double burst_last, steady_last
    cdef readonly int nmodes, mode, calm_mode, dense_mode, dense_frames, calm_frames
    cdef readonly bint pinned
    cdef readonly long long frame_index, frame_count, dense_streak, calm_streak, switches
    cdef readonly double admitted_burst, admitted_steady, switched_at
    cdef readonly long long rejected_burst, rejected_steady
    cdef readonly object clock
    cdef readonly GuardKernel counter   # the call counters every view of it shares
    cdef double _shares[MAX_MODES_]
    cdef double _lo, _hi  # readings surely in frame frame_index (the coarse path's test)

    def __init__(self, double token_rate, double leak_rate, double capacity,
                 double leak_capacity, shares, int calm_mode, int dense_mode,
                 double dense_rate, int dense_frames, int calm_frames, double frame,
                 double now, clock=None):
        cdef int i
        self.counter = GuardKernel()
        self.nmodes = len(shares)
        if not 1 <= self.nmodes <= MAX_MODES_:
            raise ValueError(f"between 1 and {MAX_MODES_} modes, got {self.nmodes}")
        for i in range(self.nmodes):
            self._shares[i] = shares[i]
        self.total_rate = token_rate + leak_rate
        self.capacity = capacity
        self.leak_capacity = leak_capacity
        self.calm_mode = calm_mode
        self.dense_mode = dense_mode
        for param, m in (("calm_mode", calm_mode), ("dense_mode", dense_mode)):
            if not 0 <= m < self.nmodes:
                raise ValueError(f"{param} index out of range: {m}")
        self.dense_frames = dense_frames
        self.calm_frames = calm_frames
        self.frame = frame
        self.threshold = dense_rate * frame
        self.mode = calm_mode
        self.pinned = False
        self._rates()
        self.burst_tokens = capacity
        self.steady_level = 0.0
        self.frame_index = _frame_of(now, frame)
        _frame_bounds(self.frame_index, frame, &self._lo, &self._hi)
        self.burst_last = now
        self.steady_last = now
        self.switched_at = now
        self.clock = clock

    @property
    def shares(self):
        return [self._shares[i] for i in range(self.nmodes)]

    cdef inline void _rates(self) noexcept:
        cdef double w = self._shares[self.mode]
        self.burst_rate = w * self.total_rate
        self.steady_rate = (1.0 - w) * self.total_rate

    cdef inline void _settle(self, double now) noexcept:
        cdef double t
        if now > self.burst_last:
            t = self.burst_tokens + (now - self.burst_last) * self.burst_rate
            self.burst_tokens = self.capacity if t > self.capacity else t
            self.burst_last = now
        if now > self.steady_last:
            t = self.steady_level - (now - self.steady_last) * self.steady_rate
            self.steady_level = 0.0 if t < 0.0 else t
            self.steady_last = now

    cdef void _switch(self, int mode, double at) noexcept:
        # settle at the old rates up to the switch, then change rates only: levels are
        # never raised, so a switch cannot mint budget
        self._settle(at)
        if mode != self.mode:
            self.mode = mode
            self.switches += 1
            self.switched_at = at
            self._rates()

    cdef void _end_frames(self, long long index) noexcept:
        cdef long long k, gap
        cdef double end
        if index <= self.frame_index:
            return
        end = <double>(self.frame_index + 1) * self.frame
        if <double>self.frame_count > self.threshold:
            self.dense_streak += 1
            self.calm_streak = 0
        else:
            self.calm_streak += 1
            self.dense_streak = 0
        if not self.pinned:
            if self.dense_streak >= self.dense_frames and self.mode != self.dense_mode:
                self._switch(self.dense_mode, end)
            elif self.calm_streak >= self.calm_frames and self.mode != self.calm_mode:
                self._switch(self.calm_mode, end)
        gap = index - self.frame_index - 1  # frames that passed with no call: calm
        if gap > 0:
            self.dense_streak = 0
            if not self.pinned and self.mode != self.calm_mode:
                k = self.calm_frames - self.calm_streak
                if k < 1:
                    k = 1
                if k <= gap:
                    self._switch(self.calm_mode, <double>(self.frame_index + 1 + k) * self.frame)
            self.calm_streak += gap
        self.frame_index = index
        _frame_bounds(index, self.frame, &self._lo, &self._hi)
        self.frame_count = 0

    cdef inline int _poll(self, double now) except -1:
        self._end_frames(_frame_of(now, self.frame))
        self._settle(now)
        return 0

    cdef int _take(self, double now, int kind, double cost) except -1:
        self._poll(now)
        if kind == BURST_:
            self.frame_count += 1
            if self.burst_tokens >= cost:
                self.burst_tokens -= cost
                self.admitted_burst += cost
                return True
            self.rejected_burst += 1
            return False
        if self.steady_level + cost <= self.leak_capacity:
            self.steady_level += cost
            self.admitted_steady += cost
            return True
        self.rejected_steady += 1
        return False

    cdef inline int _take_lagged(self, double now, double cost, double lag) noexcept:
        # see the pure twin's take_lagged: 1 admitted, 0 refused, -1 undecided
        cdef double t, rate, cap
        if not (self._lo <= now + lag < self._hi):  # NaN and inf too
            return -1
        if now > self.steady_last:
            t = self.steady_level - (now - self.steady_last) * self.steady_rate
            self.steady_level = 0.0 if t < 0.0 else t
            self.steady_last = now
        rate = self.burst_rate
        cap = self.capacity
        t = self.burst_tokens + (now - self.burst_last) * rate if now > self.burst_last \
            else self.burst_tokens
        if t + lag * rate >= cap:
            # may reach capacity before the true time: settle at its upper bound
            self.burst_tokens = cap if t > cap else t
            if now + lag > self.burst_last:
                self.burst_last = now + lag
        elif now > self.burst_last:
            self.burst_tokens = t
            self.burst_last = now
        self.frame_count += 1
        if self.burst_tokens >= cost:
            self.burst_tokens -= cost
            self.admitted_burst += cost
            return 1
        self.rejected_burst += 1
        return 0

    def take_lagged(self, double now, double cost, double lag):
        """See the pure twin: burst traffic at a reading that may lag by up to ``lag``."""
        return self._take_lagged(now, cost, lag)

    cdef int _check(self, int kind, double cost) except -1:
        if kind != BURST_ and kind != STEADY_:
            raise ConfigurationError(f"kind must be BURST (0) or STEADY (1), got {kind!r}")
        if kind == BURST_:
            if not (cost > 0.0 and cost <= self.capacity):
                _bad_cost(cost, self.capacity)
        elif not (cost > 0.0 and cost <= self.leak_capacity):
            _bad_cost(cost, self.leak_capacity)
        return 0

    cdef double _now(self) except? -1.0:
        if self.clock is None:
            return _monotonic()
        return self.clock()

    cdef inline int _take_now(self, int kind, double c) except -1:
        """A call at the kernel's clock. Default clock, burst traffic: decided at the coarse
        reading where the true time is known to be in the current frame (a refusal is
        decided again at the exact time); else at the exact time."""
        cdef int r
        if self.clock is None:
            if kind == BURST_ and _coarse_ok(self.burst_rate, self.capacity, c):
                r = self._take_lagged(monotonic_coarse(), c, COARSE_LAG)
                if r == 1:
                    return 1
                if r == 0:  # counted as an attempt already: re-decide without counting twice
                    self.frame_count -= 1
                    self.rejected_burst -= 1
            return self._take(_monotonic(), kind, c)
        return self._take(self.clock(), kind, c)

    def try_acquire(self, object kind="burst", object cost=1.0):
        """Admit ``cost`` of ``kind`` ("burst" or "steady") traffic now (clock read in C for
        the default clock)."""
        cdef double c = _as_double(cost)
        cdef int k
        if kind is _BURST_NAME or kind == "burst":
            k = BURST_
        elif kind is _STEADY_NAME or kind == "steady":
            k = STEADY_
        else:
            k = _kind_index(kind)
        if not (c > 0.0 and c <= (self.capacity if k == BURST_ else self.leak_capacity)):
            self._check(k, c)  # raises
        return tally(self.counter, self._take_now(k, c) == 1)

    def acquire_at(self, double now, int kind, double cost):
        return self._take(now, kind, cost) == 1

    def delay_at(self, double now, int kind, double cost):
        self._poll(now)
        if kind == BURST_:
            return _tb_wait(self.burst_tokens, self.burst_last, now, self.burst_rate,
                            self.capacity, cost)
        return _lv_wait(self.steady_level, self.steady_last, now, self.steady_rate,
                        self.leak_capacity, cost)

    def poll(self, double now):
        """Close the frames that ended by ``now``; the mode index in force."""
        self._poll(now)
        return self.mode

    def set_mode(self, double now, int mode, bint pinned):
        if not 0 <= mode < self.nmodes:
            raise ValueError(f"mode index out of range: {mode}")
        self._poll(now)
        self.pinned = pinned
        self._switch(mode, now)

    def unpin(self, double now):
        self._poll(now)
        self.pinned = False

    def view(self, int kind):
        cdef HybridView v = HybridView(self, kind)
        share_counts(v, self.counter)
        return v


@cython.final  # direct (inlinable) calls of its cdef methods, no vtable
cdef class HybridView(GuardKernel):
    """One traffic kind of a :class:`HybridKernel`, as a guard kernel (cost 1 per call)."""

    cdef readonly HybridKernel core
    cdef readonly int kind

    def __init__(self, HybridKernel core, int kind):
        self.core = core
        self.kind = kind

    def try_acquire(self, object cost=1.0):
        cdef double c = _as_double(cost)
        cdef HybridKernel core = self.core
        if not (c > 0.0 and c <= (core.capacity if self.kind == BURST_ else core.leak_capacity)):
            core._check(self.kind, c)  # raises
        return tally(self, core._take_now(self.kind, c) == 1)

    cpdef long long enter(self, double now):
        return 0 if self.core._take(now, self.kind, 1.0) == 1 else REJECT_

    cpdef double retry_after(self, double now):
        return self.core.delay_at(now, self.kind, 1.0)
