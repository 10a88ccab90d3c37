"""Token-bucket, leaky-bucket and hybrid kernels (pure twin of ``_fast/bucket.pyx``).

All three are bookkeeping over ``now`` (seconds): they return bools and delays, never
read the clock inside an update, sleep or raise for a rejection.

* :class:`TokenBucketKernel`: ``tokens`` refill at ``rate`` per second up to ``capacity``;
  a call of weight ``cost`` is admitted when ``tokens >= cost``. ``reserve`` may take the
  level below zero (a debt that waiting callers pay off by sleeping), ``refund`` gives a
  cancelled reservation back.
* :class:`LeakyBucketKernel`: ``level`` drains at ``rate`` per second; a meter call of
  weight ``cost`` fits while ``level + cost <= capacity``. This is GCRA (the ATM "virtual
  scheduling" leaky bucket, ``tat = last + level/rate``) kept as a level, so integral costs
  at one instant add up exactly. As a shaper, ``reserve`` schedules the call when the
  bucket has drained everything before it (after ``level/rate``) and then adds its cost,
  so shaped calls leave at least ``cost/rate`` apart.
* :class:`HybridKernel`: a burst token bucket and a steady drain meter sharing one budget
  ``R``, split by the scene mode's burst share ``w``; the mode follows burst
  density per frame unless pinned.

Waits are exact: a ``delay`` d returned for time ``now`` is the smallest float (up to a few
ulps) such that the same call is admitted at ``now + d``.

Complexity: O(1) per call; a frame gap of any length is closed in O(1).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, List, Optional

from ..errors import ConfigurationError
from .kernel import REJECT, GuardKernel

__all__ = ["BURST", "STEADY", "MAX_MODES", "TokenBucketKernel", "LeakyBucketKernel",
           "HybridKernel", "HybridView"]

BURST = 0   #: hybrid traffic kind: skill casts, drawn from the token bucket
STEADY = 1  #: hybrid traffic kind: heartbeats, metered by the drain level
MAX_MODES = 16

_EPS = 2.220446049250313e-16
_INF = math.inf
_nextafter = math.nextafter
_floor = math.floor
_monotonic = time.monotonic


def as_double(param: str, value: Any) -> float:
    """What Cython's ``double`` argument conversion accepts, so both twins agree on types."""
    if isinstance(value, float):
        return value
    if isinstance(value, (str, bytes, bytearray)) or not hasattr(value, "__float__") and \
            not hasattr(value, "__index__"):
        raise TypeError(f"{param} must be a real number, not {type(value).__name__}")
    return float(value)


#: a clock reading whose frame index (or time) is past this is refused: floor() of it would
#: not fit the compiled twin's 64-bit integers
MAX_INDEX = 4611686018427387904.0  # 2**62


def frame_of(now: float, frame: float) -> int:
    """The index of the frame holding ``now``; ValueError for a non-finite or absurd reading
    (the compiled twin would otherwise convert it to an integer undefinedly)."""
    q = now / frame
    if not -MAX_INDEX < q < MAX_INDEX:
        raise ValueError(f"clock reading {now!r} is not a usable time (frame {frame!r})")
    return int(_floor(q))


def frame_bounds(index: int, frame: float) -> tuple[float, float]:
    """``[lo, hi)``: readings that are surely in frame ``index`` (floor(x / frame) == index),
    a few ulps inside its edges so rounding cannot put one in a neighbour; a reading near
    an edge is left to the exact path."""
    lo = float(index) * frame
    hi = float(index + 1) * frame
    return lo + abs(lo) * (8 * _EPS), hi - abs(hi) * (8 * _EPS)


def bad_cost(cost: float, capacity: float) -> None:
    raise ConfigurationError(f"cost must be a number in (0, capacity={capacity!r}], got {cost!r}")


# -- token-bucket arithmetic ------------------------------------------------------------------
def tb_level(tokens: float, last: float, now: float, rate: float, capacity: float) -> float:
    if now > last:
        t = tokens + (now - last) * rate
        return capacity if t > capacity else t
    return tokens


def _step(d: float, now: float, i: int) -> float:
    # a few ulps of d first; then ulps of the clock value, in case d is below its resolution
    if i < 8:
        return _nextafter(d, _INF)
    return d + (abs(now) if abs(now) > d else d) * _EPS


def tb_wait(tokens: float, last: float, now: float, rate: float, capacity: float,
            cost: float) -> float:
    """Seconds from ``now`` until ``tb_level >= cost`` (0.0 if already)."""
    level = tb_level(tokens, last, now, rate, capacity)
    if level >= cost:
        return 0.0
    if rate <= 0.0:
        return _INF
    d = (cost - level) / rate
    if last > now:
        d = d + (last - now)
    i = 0
    while tb_level(tokens, last, now + d, rate, capacity) < cost and i < 16:
        d = _step(d, now, i)
        i += 1
    return d


# -- drain-level arithmetic (leaky meter, the hybrid's steady meter) ----------------------
def lv_level(level: float, last: float, now: float, rate: float) -> float:
    if now > last:
        t = level - (now - last) * rate
        return 0.0 if t < 0.0 else t
    return level


def lv_fits(level: float, last: float, now: float, rate: float, capacity: float,
            cost: float) -> bool:
    return lv_level(level, last, now, rate) + cost <= capacity


def lv_wait(level: float, last: float, now: float, rate: float, capacity: float,
            cost: float) -> float:
    if lv_fits(level, last, now, rate, capacity, cost):
        return 0.0
    if rate <= 0.0:
        return _INF
    d = (level + cost - capacity) / rate
    if last > now:
        d = d + (last - now)
    i = 0
    while not lv_fits(level, last, now + d, rate, capacity, cost) and i < 16:
        d = _step(d, now, i)
        i += 1
    return d


class _Bucket(GuardKernel):
    """``rate`` and ``capacity``, read-only (``configure`` changes them), as in the
    compiled twin."""

    _rate: float
    _capacity: float

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:  # the per-call paths read _capacity: a property is a call
        return self._capacity


class TokenBucketKernel(_Bucket):
    """``tokens`` refill at ``rate`` up to ``capacity``; ``last`` is when they were counted."""

    def __init__(self, rate: float, capacity: float, initial: float, now: float,
                 clock: Optional[Callable[[], float]] = None) -> None:
        super().__init__()
        self._rate = float(rate)
        self._capacity = float(capacity)
        self.tokens = float(initial)
        self.last = float(now)
        self.clock = clock

    def _settle(self, now: float) -> None:
        if now > self.last:
            t = self.tokens + (now - self.last) * self.rate
            self.tokens = self.capacity if t > self.capacity else t
            self.last = now

    def configure(self, now: float, rate: float, capacity: float) -> None:
        """Settle at the old rate up to ``now``, then switch; tokens are clipped to the new
        capacity (never raised), so a change cannot mint budget."""
        with self._lock:
            self._settle(float(now))
            self._rate, self._capacity = float(rate), float(capacity)
            if self.tokens > self._capacity:
                self.tokens = self._capacity

    def _take(self, now: float, cost: float) -> bool:
        with self._lock:
            self._settle(now)
            if self.tokens >= cost:
                self.tokens -= cost
                return True
            return False

    def try_acquire(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens now, reading the kernel's clock."""
        cost = as_double("cost", cost)
        if not (cost > 0.0 and cost <= self._capacity):
            bad_cost(cost, self.capacity)
        clock = self.clock
        return self._tally(self._take(_monotonic() if clock is None else float(clock()), cost))

    def acquire_at(self, now: float, cost: float) -> bool:
        return self._take(float(now), float(cost))

    def take_lagged(self, now: float, cost: float, lag: float) -> bool:
        """Take ``cost`` at a reading ``now`` that may lag the true time by up to ``lag``
        seconds (a coarse clock), never granting more than the exact clock would.

        Refilling to a time earlier than the true one is exact (refills add up) unless the
        bucket could reach ``capacity`` in between: then the level is kept but ``last``
        is settled at ``now + lag``, an upper bound of the true time, which can only
        withhold budget. ``lag = 0`` is :meth:`acquire_at`.
        """
        now, cost, lag = float(now), float(cost), float(lag)
        with self._lock:
            t: float = self.tokens + (now - self.last) * self.rate if now > self.last \
                else self.tokens
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

    def delay_at(self, now: float, cost: float) -> float:
        """Seconds until ``cost`` tokens are there (non-mutating)."""
        with self._lock:
            return tb_wait(self.tokens, self.last, float(now), self.rate, self.capacity,
                           float(cost))

    def level_at(self, now: float) -> float:
        with self._lock:
            return tb_level(self.tokens, self.last, float(now), self.rate, self.capacity)

    def reserve(self, now: float, cost: float, max_wait: float) -> float:
        """Take ``cost`` now or on credit: the wait (>= 0) until the debt is paid, or -1.0
        (nothing taken) when that wait would exceed ``max_wait``."""
        now, cost = float(now), float(cost)
        with self._lock:
            self._settle(now)
            if self.tokens >= cost:
                self.tokens -= cost
                return 0.0
            d = tb_wait(self.tokens, self.last, now, self.rate, self.capacity, cost)
            if d > max_wait:
                return -1.0
            self.tokens -= cost
            return d

    def refund(self, now: float, cost: float) -> None:
        """Give back a reservation that was never used (a cancelled waiter)."""
        with self._lock:
            self._settle(float(now))
            t = self.tokens + float(cost)
            self.tokens = self.capacity if t > self.capacity else t

    def enter(self, now: float) -> int:
        return 0 if self._take(now, 1.0) else REJECT

    def retry_after(self, now: float) -> float:
        return self.delay_at(now, 1.0)


class LeakyBucketKernel(_Bucket):
    """``level`` drains at ``rate`` per second (counted at ``last``); holds ``capacity``."""

    def __init__(self, rate: float, capacity: float, now: float,
                 clock: Optional[Callable[[], float]] = None) -> None:
        super().__init__()
        self._rate = float(rate)
        self._capacity = float(capacity)
        self.level = 0.0
        self.last = float(now)
        self.clock = clock

    def _settle(self, now: float) -> None:
        if now > self.last:
            t = self.level - (now - self.last) * self.rate
            self.level = 0.0 if t < 0.0 else t
            self.last = now

    def configure(self, now: float, rate: float, capacity: float) -> None:
        """Settle at the old rate up to ``now``, then switch. The level is kept: lowering it
        to a smaller capacity would free room (mint), and it holds the shaper's queue."""
        with self._lock:
            self._settle(float(now))
            self._rate, self._capacity = float(rate), float(capacity)

    def _take(self, now: float, cost: float) -> bool:
        with self._lock:
            self._settle(now)
            if self.level + cost <= self._capacity:
                self.level += cost
                return True
            return False

    def take_lagged(self, now: float, cost: float, lag: float) -> bool:
        """Meter ``cost`` at a reading ``now`` that may lag the true time by up to ``lag``
        seconds, never admitting what the exact clock would refuse.

        Draining to an earlier time is exact (drains compose, the clamp at 0 included)
        and leaves the level higher, so the decision is safe. Only adding ``cost`` early
        could mint: drained over the lag, it would leave less than the exact bucket, which
        was clamped at 0 meanwhile. So when the bucket could run empty within ``lag``,
        the level is kept and ``last`` is settled at ``now + lag``, an upper bound of the
        true time (withholding at most ``lag * rate`` of drain). ``lag = 0`` is
        :meth:`acquire_at`.
        """
        now, cost, lag = float(now), float(cost), float(lag)
        with self._lock:
            t: float = self.level - (now - self.last) * self.rate if now > self.last \
                else self.level
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
            if self.level + cost <= self._capacity:
                self.level += cost
                return True
            return False

    def try_acquire(self, cost: float = 1.0) -> bool:
        """Meter ``cost`` now, reading the kernel's clock."""
        cost = as_double("cost", cost)
        if not (cost > 0.0 and cost <= self._capacity):
            bad_cost(cost, self.capacity)
        clock = self.clock
        return self._tally(self._take(_monotonic() if clock is None else float(clock()), cost))

    def acquire_at(self, now: float, cost: float) -> bool:
        return self._take(float(now), float(cost))

    def delay_at(self, now: float, cost: float) -> float:
        with self._lock:
            return lv_wait(self.level, self.last, float(now), self.rate, self.capacity,
                           float(cost))

    def level_at(self, now: float) -> float:
        with self._lock:
            return lv_level(self.level, self.last, float(now), self.rate)

    def reserve(self, now: float, cost: float, max_wait: float) -> float:
        """Shaper: the call leaves once the bucket has drained everything before it, i.e.
        after ``level / rate``; it then adds ``cost``. The wait, or -1.0 (nothing taken)
        when it would exceed ``max_wait``."""
        with self._lock:
            self._settle(float(now))
            d = self.level / self.rate
            if d > max_wait:
                return -1.0
            self.level += float(cost)
            return d

    def refund(self, now: float, cost: float) -> None:
        with self._lock:
            self._settle(float(now))
            t = self.level - float(cost)
            self.level = 0.0 if t < 0.0 else t

    def enter(self, now: float) -> int:
        return 0 if self._take(now, 1.0) else REJECT

    def retry_after(self, now: float) -> float:
        with self._lock:
            return lv_wait(self.level, self.last, now, self.rate, self.capacity, 1.0)


class HybridKernel:
    """The scene-aware MOBA limiter, made exact (docs/ratelimit.md).

    Budget ``R = token_rate + leak_rate``; the mode's burst share ``w`` gives the burst
    token bucket ``w*R`` per second (capacity ``capacity``) and the steady meter a drain of
    ``(1-w)*R`` (capacity ``leak_capacity``). Frames are ``[k*frame, (k+1)*frame)``; a frame
    with more than ``dense_rate*frame`` burst *attempts* is dense. ``dense_frames`` dense
    frames in a row switch to ``dense_mode`` at the end of the last of them;
    ``calm_frames`` calm ones (frames with no call at all included) switch to
    ``calm_mode``. A switch settles both levels at the old rates up to the switch time,
    then changes the rates only, so over any interval T the admitted cost is at most
    ``capacity + leak_capacity + R*T``. ``pinned`` (``set_mode``) stops automatic switching.
    """

    def __init__(self, token_rate: float, leak_rate: float, capacity: float,
                 leak_capacity: float, shares: List[float], calm_mode: int, dense_mode: int,
                 dense_rate: float, dense_frames: int, calm_frames: int, frame: float,
                 now: float, clock: Optional[Callable[[], float]] = None) -> None:
        import threading
        self._lock = threading.RLock()
        self._nmodes = len(shares)
        if not 1 <= self._nmodes <= MAX_MODES:
            raise ValueError(f"between 1 and {MAX_MODES} modes, got {self._nmodes}")
        self.shares = [float(s) for s in shares]
        self.total_rate = float(token_rate) + float(leak_rate)
        self.capacity = float(capacity)
        self.leak_capacity = float(leak_capacity)
        self._calm_mode = int(calm_mode)
        self._dense_mode = int(dense_mode)
        for param, m in (("calm_mode", self._calm_mode), ("dense_mode", self._dense_mode)):
            if not 0 <= m < self._nmodes:
                raise ValueError(f"{param} index out of range: {m}")
        self.dense_frames = int(dense_frames)
        self.calm_frames = int(calm_frames)
        self.frame = float(frame)
        self.threshold = float(dense_rate) * self.frame
        self._mode = self._calm_mode
        self.pinned = False
        self._rates()
        self.burst_tokens = self.capacity
        self.steady_level = 0.0
        now = float(now)
        self._frame_index = frame_of(now, self.frame)
        self._lo, self._hi = frame_bounds(self._frame_index, self.frame)
        self.burst_last = now   # when burst_tokens were counted
        self.steady_last = now  # when steady_level was counted
        self.switched_at = now
        self.frame_count = 0
        self.dense_streak = 0
        self.calm_streak = 0
        self.switches = 0
        self.admitted_burst = 0.0
        self.admitted_steady = 0.0
        self.rejected_burst = 0
        self.rejected_steady = 0
        self.clock = clock
        #: the call counters every view of it shares
        self.counter = GuardKernel()

    # indices into the modes: read-only (the compiled twin indexes a C array with them)
    @property
    def nmodes(self) -> int:
        return self._nmodes

    @property
    def mode(self) -> int:
        """Index of the mode in force."""
        return self._mode

    @property
    def calm_mode(self) -> int:
        return self._calm_mode

    @property
    def dense_mode(self) -> int:
        return self._dense_mode

    @property
    def frame_index(self) -> int:
        return self._frame_index

    def _rates(self) -> None:
        w = self.shares[self._mode]
        self.burst_rate = w * self.total_rate
        self.steady_rate = (1.0 - w) * self.total_rate

    def _settle(self, now: float) -> None:
        # each level has its own ``last``: the coarse path may settle one at an upper bound
        # of the true time without holding back the other
        if now > self.burst_last:
            t = self.burst_tokens + (now - self.burst_last) * self.burst_rate
            self.burst_tokens = self.capacity if t > self.capacity else t
            self.burst_last = now
        if now > self.steady_last:
            t = self.steady_level - (now - self.steady_last) * self.steady_rate
            self.steady_level = 0.0 if t < 0.0 else t
            self.steady_last = now

    def _switch(self, mode: int, at: float) -> None:
        # settle at the old rates up to the switch, then change rates only: levels are
        # never raised, so a switch cannot mint budget
        self._settle(at)
        if mode != self._mode:
            self._mode = mode
            self.switches += 1
            self.switched_at = at
            self._rates()

    def _end_frames(self, index: int) -> None:
        if index <= self._frame_index:
            return
        end = float(self._frame_index + 1) * self.frame
        if float(self.frame_count) > self.threshold:
            self.dense_streak += 1
            self.calm_streak = 0
        else:
            self.calm_streak += 1
            self.dense_streak = 0
        if not self.pinned:
            if self.dense_streak >= self.dense_frames and self._mode != self._dense_mode:
                self._switch(self._dense_mode, end)
            elif self.calm_streak >= self.calm_frames and self._mode != self._calm_mode:
                self._switch(self._calm_mode, end)
        gap = index - self._frame_index - 1  # frames that passed with no call: calm
        if gap > 0:
            self.dense_streak = 0
            if not self.pinned and self._mode != self._calm_mode:
                k = self.calm_frames - self.calm_streak
                if k < 1:
                    k = 1
                if k <= gap:
                    self._switch(self._calm_mode, float(self._frame_index + 1 + k) * self.frame)
            self.calm_streak += gap
        self._frame_index = index
        self._lo, self._hi = frame_bounds(index, self.frame)
        self.frame_count = 0

    def _poll(self, now: float) -> None:
        self._end_frames(frame_of(now, self.frame))
        self._settle(now)

    def _take(self, now: float, kind: int, cost: float) -> bool:
        with self._lock:
            self._poll(now)
            if kind == BURST:
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

    def _check(self, kind: int, cost: float) -> None:
        if kind != BURST and kind != STEADY:
            raise ConfigurationError(f"kind must be BURST (0) or STEADY (1), got {kind!r}")
        cap = self.capacity if kind == BURST else self.leak_capacity
        if not (cost > 0.0 and cost <= cap):
            bad_cost(cost, cap)

    def _now(self) -> float:
        return _monotonic() if self.clock is None else float(self.clock())

    def try_acquire(self, kind: Any = "burst", cost: float = 1.0) -> bool:
        """Admit ``cost`` of ``kind`` ("burst" or "steady") traffic now, reading the
        kernel's clock."""
        cost = as_double("cost", cost)
        if kind == "burst":
            k = BURST
        elif kind == "steady":
            k = STEADY
        else:
            raise ConfigurationError(f"kind must be 'burst' or 'steady', got {kind!r}")
        self._check(k, cost)
        return self.counter._tally(self._take(self._now(), k, cost))

    def acquire_at(self, now: float, kind: int, cost: float) -> bool:
        return self._take(float(now), int(kind), float(cost))

    def take_lagged(self, now: float, cost: float, lag: float) -> int:
        """Burst traffic at a reading ``now`` that may lag the true time by up to ``lag``:
        1 admitted, 0 refused, -1 undecided (the true time might lie in another frame than
        the current one: decide at the exact time instead).

        The true time is at least every reading already seen and at most ``now + lag``; when
        ``now + lag`` is in the current frame, so is the true time, and the attempt is counted
        where the exact clock would count it, at the mode's rates. The burst tokens then
        follow :meth:`TokenBucketKernel.take_lagged`; the steady level is only drained,
        which is exact at an earlier time.
        """
        now, cost, lag = float(now), float(cost), float(lag)
        with self._lock:
            if not self._lo <= now + lag < self._hi:  # NaN and inf too
                return -1
            if now > self.steady_last:
                t = self.steady_level - (now - self.steady_last) * self.steady_rate
                self.steady_level = 0.0 if t < 0.0 else t
                self.steady_last = now
            rate, cap = self.burst_rate, self.capacity
            t = self.burst_tokens + (now - self.burst_last) * rate \
                if now > self.burst_last else self.burst_tokens
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

    def delay_at(self, now: float, kind: int, cost: float) -> float:
        """Seconds until ``cost`` of ``kind`` fits, at the rates of the mode now in force."""
        now, cost = float(now), float(cost)
        with self._lock:
            self._poll(now)
            if kind == BURST:
                return tb_wait(self.burst_tokens, self.burst_last, now, self.burst_rate,
                               self.capacity, cost)
            return lv_wait(self.steady_level, self.steady_last, now, self.steady_rate,
                           self.leak_capacity, cost)

    def poll(self, now: float) -> int:
        """Close the frames that ended by ``now``; the mode index in force."""
        with self._lock:
            self._poll(float(now))
            return self._mode

    def set_mode(self, now: float, mode: int, pinned: bool) -> None:
        if not 0 <= mode < self._nmodes:
            raise ValueError(f"mode index out of range: {mode}")
        with self._lock:
            self._poll(float(now))
            self.pinned = bool(pinned)
            self._switch(int(mode), float(now))

    def unpin(self, now: float) -> None:
        with self._lock:
            self._poll(float(now))
            self.pinned = False

    def view(self, kind: int) -> "HybridView":
        view = HybridView(self, kind)
        view.share_counts(self.counter)
        return view


class HybridView(GuardKernel):
    """One traffic kind of a :class:`HybridKernel`, as a guard kernel (cost 1 per call)."""

    def __init__(self, core: HybridKernel, kind: int) -> None:
        super().__init__()
        self.core = core
        self.kind = int(kind)

    def try_acquire(self, cost: float = 1.0) -> bool:
        cost = as_double("cost", cost)
        self.core._check(self.kind, cost)
        return self._tally(self.core._take(self.core._now(), self.kind, cost))

    def enter(self, now: float) -> int:
        return 0 if self.core._take(now, self.kind, 1.0) else REJECT

    def retry_after(self, now: float) -> float:
        return self.core.delay_at(now, self.kind, 1.0)
