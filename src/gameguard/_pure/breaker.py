"""Circuit-breaker and adaptive-throttle kernels (pure twin of ``_fast/breaker.pyx``).

Tokens: an even token ``2 * generation`` admits a call in the closed (or disabled) state;
its outcome counts only if the breaker is still closed in that same state epoch. An odd
token ``2 * ticket + 1`` is a half-open probe; its outcome counts only while the probe still
holds its slot (a probe older than ``open_duration`` loses the slot, as in Polly).

Deadlines (``open_until``, a probe's ``probe_until``) are stored as ``start + open_duration``
and compared with ``now >= deadline``: a rejection then always has ``retry_after > 0``, and
a clock advanced by exactly ``open_duration`` reaches the deadline (``now - start`` may round
below ``open_duration``).

Clock readings: ``enter`` and the queries raise ``ValueError`` for a reading the window
cannot take (NaN, infinite, ``|now| >=`` the window's ``limit``); ``exit`` never raises: it
releases the permit and records nothing. Sizes, indices and the state are read-only.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from .kernel import FAILURE, IGNORED, PENDING_EVENTS, REJECT, GuardKernel, SplitMix64
from .window import RollingWindow, clock_error

__all__ = ["CLOSED", "OPEN", "HALF_OPEN", "FORCED_OPEN", "DISABLED", "STATE_NAMES",
           "BreakerKernel", "ThrottleKernel"]

CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED = 0, 1, 2, 3, 4
STATE_NAMES = ("closed", "open", "half_open", "forced_open", "disabled")

_FREE = 0   # probe slot states besides a ticket (> 0)
_DONE = -1
_NEVER = -2  # a token no call holds (even, so only the closed path looks at it)
LOG_SIZE = 8  # transitions kept for listeners between two drains


class BreakerKernel(GuardKernel):
    """The breaker state machine over a :class:`RollingWindow`.

    ``slow_call_duration`` is ``inf`` when slow calls are not tracked; ``consecutive_failures``
    and ``failure_count`` are 0 when off. ``configure`` changes the thresholds live.
    """

    def __init__(self, failure_rate: float, slow_call_rate: float, slow_call_duration: float,
                 minimum_calls: int, window: float, buckets: int, consecutive_failures: int,
                 failure_count: int, open_duration: float, half_open_calls: int) -> None:
        super().__init__()
        self.stats = RollingWindow(window, buckets)
        self._limit = self.stats.limit
        self._below = -self._limit  # negated once here, not on every call
        # bound once: a call each costs about half of `with self._lock`; the methods read
        # them into locals first (`self._acquire()` is a method-call site CPython 3.11
        # cannot specialise for an instance attribute: a generic lookup on every call)
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self._state = CLOSED
        self._generation = 0
        # what enter hands out without the lock (closed/disabled) and what exit counts
        # (closed only); both change together with the state, in one assignment each
        self._admit = 0
        self._counted = 0
        self.opened_at = 0.0
        self.open_until = 0.0
        self.consecutive = 0
        self._transitions = 0
        self.log = [0] * LOG_SIZE  # old * 8 + new, ring indexed by transition number
        self._owner: list[int] = []
        self._until: list[float] = []
        self._probes_done = 0
        self._tickets = 0
        self.configure(failure_rate, slow_call_rate, slow_call_duration, minimum_calls,
                       consecutive_failures, failure_count, open_duration, half_open_calls, 0.0)

    state = property(lambda self: self._state)
    generation = property(lambda self: self._generation)
    transitions = property(lambda self: self._transitions)
    tickets = property(lambda self: self._tickets)
    probes_done = property(lambda self: self._probes_done)
    half_open_calls = property(lambda self: len(self._owner))
    probe_owner = property(lambda self: list(self._owner))
    probe_until = property(lambda self: list(self._until))
    failure_rate = property(lambda self: self._failure_rate)
    slow_call_rate = property(lambda self: self._slow_call_rate)
    slow_call_duration = property(lambda self: self._slow_call_duration)
    minimum_calls = property(lambda self: self._minimum_calls)
    consecutive_failures = property(lambda self: self._consecutive_failures)
    failure_count = property(lambda self: self._failure_count)
    open_duration = property(lambda self: self._open_duration)

    def configure(self, failure_rate: float, slow_call_rate: float, slow_call_duration: float,
                  minimum_calls: int, consecutive_failures: int, failure_count: int,
                  open_duration: float, half_open_calls: int, now: float) -> None:
        """New thresholds from the next outcome on, keeping the window and the state. An
        open breaker's deadline moves to ``opened_at + open_duration``; shrinking
        ``half_open_calls`` drops the last slots (their probes' outcomes count for nothing)
        and closes the breaker if the probes already done are now enough."""
        with self._lock:
            self._failure_rate = failure_rate
            self._slow_call_rate = slow_call_rate
            self._slow_call_duration = slow_call_duration
            self.slow_trips = not math.isinf(slow_call_duration)
            self.precise = self.slow_trips  # else a tick of lag only moves bucket edges
            self._minimum_calls = minimum_calls
            self._consecutive_failures = consecutive_failures
            self._failure_count = failure_count
            self._open_duration = open_duration
            if self._state == OPEN:
                self.open_until = self.opened_at + open_duration
            keep = min(half_open_calls, len(self._owner))
            self._owner = self._owner[:keep] + [_FREE] * (half_open_calls - keep)
            self._until = self._until[:keep] + [0.0] * (half_open_calls - keep)
            self._probes_done = self._owner.count(_DONE)
            if self._state == HALF_OPEN and self._probes_done >= half_open_calls:
                self._transition(CLOSED, now)

    # -- the guard protocol -------------------------------------------------------------
    def enter(self, now: float) -> int:
        if not self._below < now < self._limit:
            raise clock_error(now, self._limit)
        token = self._admit  # closed/disabled: no lock (a stale token counts for nothing)
        return token if token >= 0 else self._enter_locked(now)

    def _enter_locked(self, now: float) -> int:
        with self._lock:
            state = self._state
            if state == CLOSED or state == DISABLED:
                return self._admit
            if state == OPEN:
                if now < self.open_until:
                    return REJECT
                self._transition(HALF_OPEN, now)
            elif state == FORCED_OPEN:
                return REJECT
            owner, until = self._owner, self._until
            free = -1
            for i in range(len(owner)):
                if owner[i] > 0 and now >= until[i]:
                    owner[i] = _FREE  # a stuck probe loses its slot
                if owner[i] == _FREE and free < 0:
                    free = i
            if free < 0:
                return REJECT
            self._tickets += 1
            owner[free] = self._tickets
            until[free] = now + self._open_duration
            return self._tickets * 2 + 1

    def exit(self, token: int, now: float, duration: float, outcome: int) -> None:
        if token != self._counted:  # not a closed call of this epoch: a probe, or nothing
            if token > 0 and token & 1:
                self._exit_probe(token, now, duration, outcome)
            return
        if outcome:  # not SUCCESS (the common case, tested first without a global lookup)
            if outcome == IGNORED:
                return
            failure = True
        else:
            failure = False
        if not self._below < now < self._limit:
            return
        stats = self.stats
        acquire, release = self._acquire, self._release  # see __init__
        acquire()
        try:
            if token != self._counted:
                return
            stats.record(now, failure, duration >= self._slow_call_duration, duration)
            if failure:
                self.consecutive += 1
            elif not (stats.failures or stats.slow):  # healthy: nothing could trip
                self.consecutive = 0
                return
            else:
                self.consecutive = 0
            if self._should_trip():  # after every outcome: a window advance can trip too
                self._open(now)
        finally:
            release()

    def _exit_probe(self, token: int, now: float, duration: float, outcome: int) -> None:
        with self._lock:
            if self._state != HALF_OPEN:
                return
            ticket = token >> 1
            owner = self._owner
            for i in range(len(owner)):
                if owner[i] == ticket:
                    break
            else:
                return  # the probe timed out of its slot: its outcome counts for nothing
            if outcome == IGNORED or not now < self._until[i] or \
                    not -self._limit < now < self._limit:
                # no outcome, one too late to count, or an unusable clock reading
                owner[i] = _FREE
            elif outcome == FAILURE or (self.slow_trips and duration >= self._slow_call_duration):
                self._open(now)
            else:
                owner[i] = _DONE
                self._probes_done += 1
                if self._probes_done >= len(owner):
                    self._transition(CLOSED, now)

    def retry_after(self, now: float) -> float:
        self.stats.check(now)
        with self._lock:
            state = self._state
            if state == OPEN:
                return max(self.open_until - now, 0.0)
            if state == HALF_OPEN:  # all probe slots busy: the first one that can expire
                first = math.inf
                for i in range(len(self._owner)):
                    if self._owner[i] > 0:
                        first = min(first, self._until[i])
                return max(first - now, 0.0) if first != math.inf else 0.0
            return -1.0

    # -- state ----------------------------------------------------------------------------
    def poll(self, now: float) -> int:
        """The state at ``now`` (makes the due open → half-open move)."""
        self.stats.check(now)
        with self._lock:
            if self._state == OPEN and now >= self.open_until:
                self._transition(HALF_OPEN, now)
            return self._state

    def force(self, state: int, now: float) -> None:
        """Move to ``state`` by hand (forced_open, disabled, or closed as a reset)."""
        self.stats.check(now)
        with self._lock:
            if self._state == OPEN and now >= self.open_until:
                self._transition(HALF_OPEN, now)  # listeners see the due move first
            if state == OPEN:
                self._open(now)
            else:
                self._transition(state, now)

    def totals(self, now: float) -> tuple[int, int, int, float]:
        with self._lock:
            return self.stats.totals(now)

    def _should_trip(self) -> bool:
        if self._consecutive_failures and self.consecutive >= self._consecutive_failures:
            return True
        stats = self.stats
        if self._failure_count and stats.failures >= self._failure_count:
            return True
        calls = stats.calls
        if calls >= self._minimum_calls:  # a zero count cannot reach a rate > 0: no division
            if stats.failures and stats.failures / calls >= self._failure_rate:
                return True
            if self.slow_trips and stats.slow and stats.slow / calls >= self._slow_call_rate:
                return True
        return False

    def _open(self, now: float) -> None:
        self._transition(OPEN, now)
        self.opened_at = now
        self.open_until = now + self._open_duration

    def _transition(self, new: int, now: float) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        token = self._generation * 2
        self._admit = token if new == CLOSED or new == DISABLED else REJECT
        self._counted = token if new == CLOSED else _NEVER
        for i in range(len(self._owner)):
            self._owner[i] = _FREE
        self._probes_done = 0
        if new == CLOSED:
            self.stats.reset()
            self.consecutive = 0
        if old == new:  # a reset of a closed breaker: a fresh epoch, but no state change
            return
        self.log[self._transitions % LOG_SIZE] = old * 8 + new
        self._transitions += 1
        self.pending |= PENDING_EVENTS


class ThrottleKernel(GuardKernel):
    """Google SRE client-side throttling (go-zero's ``googleBreaker``).

    Over the window, ``requests`` counts every attempt (dropped ones too) and ``accepts`` the
    successes; a call is dropped with probability
    ``max(0, (requests - protection - k * accepts) / (requests + 1))``.
    The draw comes from ``rng`` when given, else from an internal splitmix64 stream.
    """

    def __init__(self, k: float, protection: float, window: float, buckets: int,
                 seed: int, rng: Optional[Callable[[], float]] = None) -> None:
        super().__init__()
        self.precise = False  # a probabilistic window of seconds: a 4 ms lag changes nothing
        self.stats = RollingWindow(window, buckets)
        self._limit = self.stats.limit
        self._below = -self._limit
        self.random = SplitMix64(seed)
        self.rng = rng
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self.configure(k, protection)

    k = property(lambda self: self._k)
    protection = property(lambda self: self._protection)

    def configure(self, k: float, protection: float) -> None:
        """New ``k`` and ``protection`` from the next call on; the window is kept."""
        with self._lock:
            self._k = k
            self._protection = protection

    def drop_probability(self, now: float) -> float:
        """The drop probability at ``now`` (advances the window: takes the lock)."""
        self.stats.check(now)
        with self._lock:
            return self._p(now)

    def _p(self, now: float) -> float:
        stats = self.stats
        stats.advance(now)
        requests = stats.calls
        accepts = requests - stats.failures
        excess = requests - self._protection - self._k * accepts
        if excess <= 0.0:  # healthy: no division (the denominator is positive)
            return 0.0
        return excess / (requests + 1)

    def enter(self, now: float) -> int:
        if not self._below < now < self._limit:
            raise clock_error(now, self._limit)
        acquire, release = self._acquire, self._release  # see BreakerKernel.__init__
        acquire()
        try:
            p = self._p(now)
            if p <= 0.0:
                return 0
            draw = self.rng() if self.rng is not None else self.random.next_float()
            if draw < p:
                self.stats.record(now, True, False, 0.0)
                return REJECT
            return 0
        finally:
            release()

    def exit(self, token: int, now: float, duration: float, outcome: int) -> None:
        if token < 0 or outcome == IGNORED or not self._below < now < self._limit:
            return
        acquire, release = self._acquire, self._release  # see BreakerKernel.__init__
        acquire()
        try:
            self.stats.record(now, outcome == FAILURE, False, duration)
        finally:
            release()

    def totals(self, now: float) -> tuple[int, int, int, float]:
        with self._lock:
            return self.stats.totals(now)
