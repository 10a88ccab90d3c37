"""Circuit-breaker and adaptive-throttle kernels (pure twin of ``_fast/breaker.pyx``).

Tokens: an even token ``2 * generation`` admits a call in the closed (or disabled) state;
its outcome counts only if the breaker is still in that same state epoch. An odd token
``2 * ticket + 1`` is a half-open probe; its outcome counts only while the probe still
holds its slot (a probe older than ``open_duration`` loses the slot, as in Polly).

Deadlines (``open_until``, a probe's ``probe_until``) are stored as ``start + open_duration``
and compared with ``now >= deadline``: a rejection then always has ``retry_after > 0``, and
a clock advanced by exactly ``open_duration`` reaches the deadline (``now - start`` may round
below ``open_duration``).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from .kernel import FAILURE, IGNORED, PENDING_EVENTS, REJECT, GuardKernel, SplitMix64
from .window import RollingWindow

__all__ = ["CLOSED", "OPEN", "HALF_OPEN", "FORCED_OPEN", "DISABLED", "STATE_NAMES",
           "BreakerKernel", "ThrottleKernel"]

CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED = 0, 1, 2, 3, 4
STATE_NAMES = ("closed", "open", "half_open", "forced_open", "disabled")

_FREE = 0   # probe slot states besides a ticket (> 0)
_DONE = -1
LOG_SIZE = 8  # transitions kept for listeners between two drains


class BreakerKernel(GuardKernel):
    """The breaker state machine over a :class:`RollingWindow`.

    ``slow_call_duration`` is ``inf`` when slow calls are not tracked; ``consecutive_failures``
    and ``failure_count`` are 0 when off.
    """

    def __init__(self, failure_rate: float, slow_call_rate: float, slow_call_duration: float,
                 minimum_calls: int, window: float, buckets: int, consecutive_failures: int,
                 failure_count: int, open_duration: float, half_open_calls: int) -> None:
        super().__init__()
        self.failure_rate = failure_rate
        self.slow_call_rate = slow_call_rate
        self.slow_call_duration = slow_call_duration
        self.slow_trips = not math.isinf(slow_call_duration)
        self.precise = self.slow_trips  # else a tick of lag only moves bucket edges
        self.minimum_calls = minimum_calls
        self.consecutive_failures = consecutive_failures
        self.failure_count = failure_count
        self.open_duration = open_duration
        self.half_open_calls = half_open_calls
        self.stats = RollingWindow(window, buckets)
        self.state = CLOSED
        self.generation = 0
        self.opened_at = 0.0
        self.open_until = 0.0
        self.consecutive = 0
        self.transitions = 0
        self.log = [0] * LOG_SIZE  # old * 8 + new, ring indexed by transition number
        self.probe_owner = [_FREE] * half_open_calls
        self.probe_until = [0.0] * half_open_calls
        self.probes_done = 0
        self.tickets = 0

    # -- the guard protocol -------------------------------------------------------------
    def enter(self, now: float) -> int:
        # Closed fast path without the lock: read the generation *before* the state, so a
        # transition racing in between either shows in the state check (locked path below)
        # or leaves this token stale, and a stale token's outcome counts for nothing.
        generation = self.generation
        state = self.state
        if state == CLOSED or state == DISABLED:
            return generation * 2
        with self._lock:
            state = self.state
            if state == CLOSED or state == DISABLED:
                return self.generation * 2
            if state == OPEN:
                if now < self.open_until:
                    return REJECT
                self._transition(HALF_OPEN, now)
            elif state == FORCED_OPEN:
                return REJECT
            free = -1
            for i in range(self.half_open_calls):
                owner = self.probe_owner[i]
                if owner > 0 and now >= self.probe_until[i]:
                    self.probe_owner[i] = owner = _FREE  # a stuck probe loses its slot
                if owner == _FREE and free < 0:
                    free = i
            if free < 0:
                return REJECT
            self.tickets += 1
            self.probe_owner[free] = self.tickets
            self.probe_until[free] = now + self.open_duration
            return self.tickets * 2 + 1

    def exit(self, token: int, now: float, duration: float, outcome: int) -> None:
        if token < 0:
            return
        with self._lock:
            if token & 1 == 0:
                if self.state != CLOSED or token >> 1 != self.generation or outcome == IGNORED:
                    return
                failure = outcome == FAILURE
                stats = self.stats
                stats.record(now, failure, duration >= self.slow_call_duration, duration)
                self.consecutive = self.consecutive + 1 if failure else 0
                if self._should_trip():  # after every outcome: a window advance can trip too
                    self._open(now)
                return
            if self.state != HALF_OPEN:
                return
            ticket = token >> 1
            for i in range(self.half_open_calls):
                if self.probe_owner[i] == ticket:
                    break
            else:
                return  # the probe timed out of its slot: its outcome counts for nothing
            if outcome == IGNORED or now >= self.probe_until[i]:
                # no outcome, or one too late to count (the slot was due to be lost anyway)
                self.probe_owner[i] = _FREE
            elif outcome == FAILURE or (self.slow_trips and duration >= self.slow_call_duration):
                self._open(now)
            else:
                self.probe_owner[i] = _DONE
                self.probes_done += 1
                if self.probes_done >= self.half_open_calls:
                    self._transition(CLOSED, now)

    def retry_after(self, now: float) -> float:
        with self._lock:
            state = self.state
            if state == OPEN:
                return max(self.open_until - now, 0.0)
            if state == HALF_OPEN:  # all probe slots busy: the first one that can expire
                first = math.inf
                for i in range(self.half_open_calls):
                    if self.probe_owner[i] > 0:
                        first = min(first, self.probe_until[i])
                return max(first - now, 0.0) if first != math.inf else 0.0
            return -1.0

    # -- state ----------------------------------------------------------------------------
    def poll(self, now: float) -> int:
        """The state at ``now`` (makes the due open → half-open move)."""
        with self._lock:
            if self.state == OPEN and now >= self.open_until:
                self._transition(HALF_OPEN, now)
            return self.state

    def force(self, state: int, now: float) -> None:
        """Move to ``state`` by hand (forced_open, disabled, or closed as a reset)."""
        with self._lock:
            if self.state == OPEN and now >= self.open_until:
                self._transition(HALF_OPEN, now)  # listeners see the due move first
            if state == OPEN:
                self._open(now)
            else:
                self._transition(state, now)

    def totals(self, now: float) -> tuple[int, int, int, float]:
        with self._lock:
            return self.stats.totals(now)

    def _should_trip(self) -> bool:
        if self.consecutive_failures and self.consecutive >= self.consecutive_failures:
            return True
        stats = self.stats
        if self.failure_count and stats.failures >= self.failure_count:
            return True
        calls = stats.calls
        if calls >= self.minimum_calls:  # a zero count cannot reach a rate > 0: no division
            if stats.failures and stats.failures / calls >= self.failure_rate:
                return True
            if self.slow_trips and stats.slow and stats.slow / calls >= self.slow_call_rate:
                return True
        return False

    def _open(self, now: float) -> None:
        self._transition(OPEN, now)
        self.opened_at = now
        self.open_until = now + self.open_duration

    def _transition(self, new: int, now: float) -> None:
        old = self.state
        self.state = new
        self.generation += 1
        for i in range(self.half_open_calls):
            self.probe_owner[i] = _FREE
        self.probes_done = 0
        if new == CLOSED:
            self.stats.reset()
            self.consecutive = 0
        if old == new:  # a reset of a closed breaker: a fresh epoch, but no state change
            return
        self.log[self.transitions % LOG_SIZE] = old * 8 + new
        self.transitions += 1
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
        self.k = k
        self.protection = protection
        self.precise = False  # a probabilistic window of seconds: a 4 ms lag changes nothing
        self.stats = RollingWindow(window, buckets)
        self.random = SplitMix64(seed)
        self.rng = rng

    def drop_probability(self, now: float) -> float:
        """The drop probability at ``now`` (advances the window: takes the lock)."""
        with self._lock:
            return self._p(now)

    def _p(self, now: float) -> float:
        stats = self.stats
        stats.advance(now)
        requests = stats.calls
        accepts = requests - stats.failures
        excess = requests - self.protection - self.k * accepts
        if excess <= 0.0:  # healthy: no division (the denominator is positive)
            return 0.0
        return excess / (requests + 1)

    def enter(self, now: float) -> int:
        with self._lock:
            p = self._p(now)
            if p <= 0.0:
                return 0
            draw = self.rng() if self.rng is not None else self.random.next_float()
            if draw < p:
                self.stats.record(now, True, False, 0.0)
                return REJECT
            return 0

    def exit(self, token: int, now: float, duration: float, outcome: int) -> None:
        if token < 0 or outcome == IGNORED:
            return
        with self._lock:
            self.stats.record(now, outcome == FAILURE, False, duration)

    def totals(self, now: float) -> tuple[int, int, int, float]:
        with self._lock:
            return self.stats.totals(now)
