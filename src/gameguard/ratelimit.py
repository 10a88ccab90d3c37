"""Rate limiting: :class:`TokenBucket`, :class:`LeakyBucket`, :class:`HybridLimiter` and
:class:`KeyedLimiter`.

The arithmetic of every call runs in a kernel (``gameguard._fast.bucket`` / ``keyed``
compiled, ``gameguard._pure`` twins otherwise); this module validates, raises and waits.
``try_acquire`` of :class:`TokenBucket`, :class:`LeakyBucket` and :class:`KeyedLimiter` *is*
the kernel's method (an instance attribute), so a call costs one attribute lookup and one
C call, with the default clock read in C.

As guards (``@bucket``, ``with bucket:``, ``async with bucket:``) limiters never wait: a
call without budget raises :class:`~gameguard.errors.RateLimitExceeded` carrying
``retry_after`` and ``name`` (or returns the fallback). ``acquire``/``acquire_async`` wait,
through :func:`gameguard.clock.sleeper` / :func:`~gameguard.clock.async_sleeper`, so a
``ManualClock`` test never blocks.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import math
import secrets
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, TypeVar

from . import _impl
from .clock import Clock, async_sleeper, sleeper
from .errors import ConfigurationError, RateLimitExceeded
from ._checks import check_callable, check_int, check_name, check_non_negative, check_positive
from .guard import Guard, _check_decoratable

__all__ = ["TokenBucket", "LeakyBucket", "HybridLimiter", "KeyedLimiter"]

F = TypeVar("F", bound=Callable[..., Any])

#: Secret seed of the keyed tables' XXH64 fingerprints, drawn once per process: a client
#: who cannot learn it cannot choose keys that share a slot.
PROCESS_SEED: int = secrets.randbits(64)

_KINDS = {"burst": 0, "steady": 1}
_EPS = 2.220446049250313e-16


def _check_cost(cost: Any, capacity: float) -> float:
    c = check_positive("cost", cost)
    if c > capacity:
        raise ConfigurationError(
            f"cost must be at most capacity={capacity!r} (it could never be admitted), "
            f"got {cost!r}")
    return c


def _check_timeout(timeout: Any) -> float:
    if timeout is None:
        return math.inf
    return check_non_negative("timeout", timeout)


def _retry(seconds: float) -> Optional[float]:
    return None if math.isinf(seconds) else max(0.0, float(seconds))


def _set_if_pending(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _Waiter:
    """One caller of ``acquire``: its reservation is already taken from the kernel."""

    __slots__ = ("deadline", "cost", "shift", "fut", "loop")

    def __init__(self, deadline: float, cost: float, shift: float) -> None:
        self.deadline = deadline
        self.cost = cost
        self.shift = shift  # how much earlier every later waiter may go if this one leaves
        self.fut: Optional["asyncio.Future[None]"] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None


class _PacedGuard(Guard):
    """Reservation-and-wait shared by :class:`TokenBucket` and :class:`LeakyBucket`.

    ``acquire`` reserves in the kernel (taking budget on credit), then sleeps until its
    deadline. Waiters are kept in reservation order; one that leaves without being granted
    (cancellation, KeyboardInterrupt) refunds its reservation, and every waiter behind it
    moves up by ``cost / rate`` (as in aiolimiter), so nobody is delayed by it.
    """

    rate: float
    capacity: float

    def _init_waiting(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._waiters: List[_Waiter] = []
        self._sleep = sleeper(self._clock)
        self._asleep = async_sleeper(self._clock)

    def _cost(self, cost: Any) -> float:
        return _check_cost(cost, self.capacity)

    def _wait_needed(self, now: float, cost: float) -> float:
        raise NotImplementedError

    def _reserve(self, cost: Any, timeout: Any) -> Optional[_Waiter]:
        c = self._cost(cost)
        max_wait = _check_timeout(timeout)
        with self._cond:
            now = self._now()
            delay = self._kernel.reserve(now, c, max_wait)
            if delay < 0.0:
                wait = self._wait_needed(now, c)
                raise RateLimitExceeded(
                    f"{self.name!r}: cost {c!r} needs a wait of {wait:.6g}s, more than "
                    f"timeout={timeout!r}", retry_after=_retry(wait), name=self.name)
            if delay == 0.0:
                return None
            w = _Waiter(now + delay, c, c / self.rate)
            self._waiters.append(w)
            return w

    def _finish(self, w: _Waiter, granted: bool) -> None:
        with self._cond:
            i = next((j for j, other in enumerate(self._waiters) if other is w), -1)
            if i < 0:  # pragma: no cover - a waiter is removed exactly once
                return
            del self._waiters[i]
            if granted:
                return
            self._kernel.refund(self._now(), w.cost)
            for later in self._waiters[i:]:
                later.deadline -= w.shift
                self._wake(later)
            self._cond.notify_all()

    @staticmethod
    def _wake(w: _Waiter) -> None:
        fut, loop = w.fut, w.loop
        if fut is None or loop is None or fut.done() or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fut.set_result(None)
        else:
            loop.call_soon_threadsafe(_set_if_pending, fut)

    @staticmethod
    def _reached(w: _Waiter, now: float) -> bool:
        # within a few ulps of the deadline counts: a ManualClock advanced by exactly the
        # remaining wait may land one rounding short of it
        return w.deadline - now <= abs(w.deadline) * 4 * _EPS

    def _wait_sync(self, w: _Waiter) -> None:
        real = self._sleep is time.sleep
        while True:
            now = self._now()
            if self._reached(w, now):
                return
            remaining = w.deadline - now
            if real:
                with self._cond:  # a waiter ahead that leaves wakes us early
                    self._cond.wait(remaining)
            else:
                self._sleep(remaining)

    async def _wait_async(self, w: _Waiter) -> None:
        loop = asyncio.get_running_loop()
        real = self._asleep is asyncio.sleep
        while True:
            now = self._now()
            if self._reached(w, now):
                return
            remaining = w.deadline - now
            if real:
                fut: asyncio.Future[None] = loop.create_future()
                with self._cond:
                    w.fut, w.loop = fut, loop
                handle = loop.call_later(remaining, _set_if_pending, fut)
                try:
                    await fut
                finally:
                    handle.cancel()
                    w.fut = None
            else:
                await self._asleep(remaining)

    def acquire(self, cost: float = 1, timeout: Optional[float] = None) -> None:
        """Wait (blocking the thread) until ``cost`` is granted.

        Raises :class:`RateLimitExceeded` at once, taking nothing, when the wait would be
        longer than ``timeout`` seconds (``None``: wait as long as needed; 0: never wait).
        """
        w = self._reserve(cost, timeout)
        if w is None:
            return
        granted = False
        try:
            self._wait_sync(w)
            granted = True
        finally:
            self._finish(w, granted)

    async def acquire_async(self, cost: float = 1, timeout: Optional[float] = None) -> None:
        """``acquire`` for asyncio. Cancelled while waiting, the reservation is given back
        and the waiters behind move up."""
        w = self._reserve(cost, timeout)
        if w is None:
            return
        granted = False
        try:
            await self._wait_async(w)
            granted = True
        finally:
            self._finish(w, granted)

    @property
    def waiting(self) -> int:
        """Callers of ``acquire``/``acquire_async`` holding a reservation and waiting."""
        return len(self._waiters)

    def _rejection(self, now: float) -> Any:
        if self.capacity < 1.0:
            return ConfigurationError(
                f"{self.name!r}: a guarded call costs 1 but capacity={self.capacity!r}; "
                "use try_acquire(cost) with smaller costs or raise capacity")
        return RateLimitExceeded(
            f"rate limit {self.name!r} exceeded", retry_after=_retry(
                self._kernel.retry_after(now)), name=self.name)


class TokenBucket(_PacedGuard):
    """Token bucket: ``rate`` tokens per second, at most ``capacity`` stored (bursts).

    ``capacity=None`` holds one second of budget, at least one call:
    ``max(rate, 1.0)``; ``initial=None`` starts full. Costs and rates may be fractional;
    a ``cost`` above ``capacity`` could never be admitted and is a
    :class:`ConfigurationError`. Over any interval T the admitted cost is at most
    ``capacity + rate*T``.

    * ``try_acquire(cost=1) -> bool`` takes the tokens if they are there, never waits
      (O(1), the compiled kernel's method; ~the cost of a bare Python call).
    * ``acquire(cost=1, timeout=None)`` / ``await acquire_async(...)`` wait their turn
      (first come, first served; later ``try_acquire`` callers do not overtake waiters).
    * ``@bucket``, ``with bucket:``, ``async with bucket:`` take 1 token or raise
      :class:`RateLimitExceeded` with ``retry_after``.
    """

    def __init__(self, rate: float, capacity: Optional[float] = None, *,
                 initial: Optional[float] = None, clock: Optional[Clock] = None,
                 name: Optional[str] = None,
                 fallback: Optional[Callable[..., Any]] = None) -> None:
        self.rate = check_positive("rate", rate)
        self.capacity = (max(self.rate, 1.0) if capacity is None
                         else check_positive("capacity", capacity))
        if initial is None:
            start = self.capacity
        else:
            start = check_non_negative("initial", initial)
            if start > self.capacity:
                raise ConfigurationError(
                    f"initial must be at most capacity={self.capacity!r}, got {initial!r}")
        self._init_guard(check_name(name, "token_bucket"), clock, fallback)
        self._kernel = _impl.kernel("bucket").TokenBucketKernel(
            self.rate, self.capacity, start, self._now(), self._clock)
        #: ``try_acquire(cost=1) -> bool``: the kernel's own method (one lookup, one C call)
        self.try_acquire = self._kernel.try_acquire  # type: ignore[method-assign]
        self._init_waiting()

    def try_acquire(self, cost: float = 1) -> bool:  # replaced per instance by the kernel's
        """Take ``cost`` tokens if there are that many now; never waits."""
        return bool(self._kernel.try_acquire(cost))

    def retry_after(self, cost: float = 1) -> float:
        """Seconds until ``try_acquire(cost)`` would succeed (0.0 if now). Exact: after
        waiting exactly this long (with no other caller in between) it succeeds."""
        return float(self._kernel.delay_at(self._now(), self._cost(cost)))

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while ``acquire`` waiters hold reservations)."""
        return float(self._kernel.level_at(self._now()))

    def _wait_needed(self, now: float, cost: float) -> float:
        return float(self._kernel.delay_at(now, cost))

    def snapshot(self) -> Dict[str, Any]:
        return {"name": self.name, "rate": self.rate, "capacity": self.capacity,
                "tokens": self.tokens, "waiting": self.waiting}

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate!r}, capacity={self.capacity!r}, name={self.name!r})"


class LeakyBucket(_PacedGuard):
    """Leaky bucket draining at ``rate`` per second, holding up to ``capacity``.

    As a **meter**, ``try_acquire(cost=1)`` admits while the level plus ``cost`` fits in
    ``capacity`` (GCRA kept as a level; with ``capacity=1`` calls are admitted at most one
    per ``1/rate`` seconds). As a **shaper**, ``acquire``/``acquire_async`` let every call
    through, evenly spaced: a call leaves when the bucket has drained everything before it,
    so consecutive shaped calls are at least ``cost/rate`` apart (Sentinel's uniform-rate
    queue). A call whose wait would pass ``timeout`` is refused at once, taking nothing.
    """

    def __init__(self, rate: float, capacity: float = 1, *, clock: Optional[Clock] = None,
                 name: Optional[str] = None,
                 fallback: Optional[Callable[..., Any]] = None) -> None:
        self.rate = check_positive("rate", rate)
        self.capacity = check_positive("capacity", capacity)
        self._init_guard(check_name(name, "leaky_bucket"), clock, fallback)
        self._kernel = _impl.kernel("bucket").LeakyBucketKernel(
            self.rate, self.capacity, self._now(), self._clock)
        #: ``try_acquire(cost=1) -> bool``: the kernel's own method (one lookup, one C call)
        self.try_acquire = self._kernel.try_acquire  # type: ignore[method-assign]
        self._init_waiting()

    def try_acquire(self, cost: float = 1) -> bool:  # replaced per instance by the kernel's
        """Meter: admit ``cost`` if it fits in the bucket now; never waits."""
        return bool(self._kernel.try_acquire(cost))

    def retry_after(self, cost: float = 1) -> float:
        """Seconds until the meter would admit ``cost`` (0.0 if now); exact."""
        return float(self._kernel.delay_at(self._now(), self._cost(cost)))

    @property
    def level(self) -> float:
        """The bucket's level now (0 = empty)."""
        return float(self._kernel.level_at(self._now()))

    def _wait_needed(self, now: float, cost: float) -> float:
        return float(self._kernel.level_at(now)) / self.rate

    def snapshot(self) -> Dict[str, Any]:
        return {"name": self.name, "rate": self.rate, "capacity": self.capacity,
                "level": self.level, "waiting": self.waiting}

    def __repr__(self) -> str:
        return f"LeakyBucket(rate={self.rate!r}, capacity={self.capacity!r}, name={self.name!r})"


class _KindGuard(Guard):
    """One traffic kind of a :class:`HybridLimiter` as a guard (``hybrid.steady``)."""

    def __init__(self, owner: "HybridLimiter", kind: int) -> None:
        self._owner = owner
        self.kind = ("burst", "steady")[kind]
        self._init_guard(f"{owner.name}.{self.kind}", owner._clock, owner._fallback)
        self._kernel = owner._core.view(kind)
        #: ``try_acquire(cost=1) -> bool`` for this kind (the kernel's method)
        self.try_acquire = self._kernel.try_acquire

    def _rejection(self, now: float) -> RateLimitExceeded:
        return RateLimitExceeded(
            f"rate limit {self._owner.name!r} exceeded for {self.kind} traffic",
            retry_after=_retry(self._kernel.retry_after(now)), name=self._owner.name)


class HybridLimiter(Guard):
    """The MOBA limiter: bursty skill casts and steady heartbeats over one budget.

    The budget is ``R = token_rate + leak_rate`` per second; the scene mode's burst share
    ``w`` (``modes[name]``) splits it. ``kind="burst"`` draws from a token bucket refilling
    at ``w*R`` (capacity ``capacity``); ``kind="steady"`` from a leaky meter draining at
    ``(1-w)*R`` (capacity ``leak_capacity``). Defaults: team fight gives bursts 68/s and
    heartbeats 12/s, laning 24/s and 56/s.

    Time is cut into frames ``[k*frame, (k+1)*frame)``. A frame with more than
    ``dense_rate*frame`` burst *attempts* (admitted or not) is dense; at the end of the
    ``dense_frames``-th dense frame in a row the mode becomes ``dense_mode``; after
    ``calm_frames`` frames in a row that are not dense (empty ones included) it returns to
    ``calm_mode``. ``set_mode(name)`` pins a mode (automatic switching off);
    ``set_mode("auto")`` resumes it. A switch settles both levels at the old rates up to
    the switch time and changes rates only, so over any interval T the admitted cost is
    at most ``capacity + leak_capacity + R*T``, whatever the switches.

    ``@hybrid`` / ``with hybrid:`` guard burst traffic; ``hybrid.steady`` (and
    ``hybrid.burst``) are guards for one kind. All O(1) per call.
    """

    def __init__(self, token_rate: float = 50.0, leak_rate: float = 30.0,
                 capacity: float = 100.0, *, leak_capacity: float = 5.0,
                 modes: Optional[Mapping[str, float]] = None, calm_mode: str = "laning",
                 dense_mode: str = "teamfight", dense_rate: float = 12.0,
                 dense_frames: int = 3, calm_frames: int = 30, frame: float = 0.1,
                 clock: Optional[Clock] = None, name: Optional[str] = None,
                 fallback: Optional[Callable[..., Any]] = None) -> None:
        self.token_rate = check_positive("token_rate", token_rate)
        self.leak_rate = check_positive("leak_rate", leak_rate)
        self.capacity = check_positive("capacity", capacity)
        self.leak_capacity = check_positive("leak_capacity", leak_capacity)
        modes = {"laning": 0.30, "teamfight": 0.85} if modes is None else modes
        if not isinstance(modes, Mapping) or not 1 <= len(modes) <= 16:
            raise ConfigurationError(
                f"modes must be a mapping of 1 to 16 mode names to burst shares, got {modes!r}")
        self._names: List[str] = []
        shares: List[float] = []
        for mname, share in modes.items():
            if not isinstance(mname, str) or mname == "auto":
                raise ConfigurationError(f"mode names must be str other than 'auto', got {mname!r}")
            if isinstance(share, bool) or not isinstance(share, (int, float)) or \
                    not 0.0 <= share <= 1.0:
                raise ConfigurationError(
                    f"modes[{mname!r}] must be a burst share in [0, 1], got {share!r}")
            self._names.append(mname)
            shares.append(float(share))
        self.modes: Dict[str, float] = dict(zip(self._names, shares))
        for param, value in (("calm_mode", calm_mode), ("dense_mode", dense_mode)):
            if value not in self.modes:
                raise ConfigurationError(
                    f"{param} must be one of {sorted(self.modes)}, got {value!r}")
        self.calm_mode, self.dense_mode = calm_mode, dense_mode
        self.dense_rate = check_positive("dense_rate", dense_rate)
        self.dense_frames = check_int("dense_frames", dense_frames, 1, 1 << 30)
        self.calm_frames = check_int("calm_frames", calm_frames, 1, 1 << 30)
        self.frame = check_positive("frame", frame)
        self._init_guard(check_name(name, "hybrid_limiter"), clock, fallback)
        self._module = _impl.kernel("bucket")
        self._core = self._module.HybridKernel(
            self.token_rate, self.leak_rate, self.capacity, self.leak_capacity, shares,
            self._names.index(calm_mode), self._names.index(dense_mode), self.dense_rate,
            self.dense_frames, self.calm_frames, self.frame, self._now(), self._clock)
        self._kernel = self._core.view(0)
        #: ``try_acquire(kind="burst", cost=1) -> bool``: the kernel's own method
        self.try_acquire = self._core.try_acquire  # type: ignore[method-assign]
        self.burst = _KindGuard(self, 0)
        self.steady = _KindGuard(self, 1)

    @staticmethod
    def _kind(kind: Any) -> int:
        try:
            return _KINDS[kind]
        except (KeyError, TypeError):
            raise ConfigurationError(
                f"kind must be 'burst' or 'steady', got {kind!r}") from None

    @property
    def total_rate(self) -> float:
        """The budget ``R`` (calls per second, both kinds together)."""
        return self.token_rate + self.leak_rate

    def try_acquire(self, kind: str = "burst", cost: float = 1) -> bool:  # per instance
        """Admit ``cost`` of ``kind`` ("burst" or "steady") traffic now; never waits."""
        return bool(self._core.try_acquire(kind, cost))

    def retry_after(self, kind: str = "burst", cost: float = 1) -> float:
        """Seconds until ``cost`` of ``kind`` would fit, at the rates of the current mode
        (a later mode switch changes it); ``inf`` if that kind has no rate in this mode."""
        k = self._kind(kind)
        c = _check_cost(cost, self.capacity if k == 0 else self.leak_capacity)
        return float(self._core.delay_at(self._now(), k, c))

    @property
    def mode(self) -> str:
        """The mode in force now."""
        return self._names[int(self._core.poll(self._now()))]

    @property
    def auto(self) -> bool:
        """Whether the mode follows burst density (not pinned by :meth:`set_mode`)."""
        return not self._core.pinned

    def set_mode(self, name: str) -> None:
        """Pin mode ``name`` (automatic switching off), or ``"auto"`` to resume it."""
        now = self._now()
        if name == "auto":
            self._core.unpin(now)
            return
        if not isinstance(name, str) or name not in self.modes:
            raise ConfigurationError(
                f"name must be 'auto' or one of {sorted(self.modes)}, got {name!r}")
        self._core.set_mode(now, self._names.index(name), True)

    def rates(self) -> Dict[str, float]:
        """Current burst refill and steady drain rates (per second)."""
        self._core.poll(self._now())
        return {"burst": float(self._core.burst_rate), "steady": float(self._core.steady_rate)}

    def budget(self, seconds: float) -> float:
        """Most cost this limiter can admit over any interval of ``seconds``."""
        return self.capacity + self.leak_capacity + self.total_rate * float(seconds)

    def snapshot(self) -> Dict[str, Any]:
        core = self._core
        mode = self.mode
        return {"name": self.name, "mode": mode, "auto": self.auto,
                "burst_rate": float(core.burst_rate), "steady_rate": float(core.steady_rate),
                "burst_tokens": float(core.burst_tokens),
                "steady_level": float(core.steady_level),
                "admitted": {"burst": float(core.admitted_burst),
                             "steady": float(core.admitted_steady)},
                "rejected": {"burst": int(core.rejected_burst),
                             "steady": int(core.rejected_steady)},
                "switches": int(core.switches), "switched_at": float(core.switched_at)}

    def _rejection(self, now: float) -> RateLimitExceeded:
        return self.burst._rejection(now)

    def __repr__(self) -> str:
        return f"<HybridLimiter {self.name!r} mode={self.mode!r}>"


class _KeyGuard(Guard):
    """A :class:`KeyedLimiter` bound to one key (``limiter.bind(key)``): a guard."""

    def __init__(self, owner: "KeyedLimiter", key: Any) -> None:
        self._owner = owner
        self.key = key
        self._init_guard(owner.name, owner._clock, owner._fallback)
        self._kernel = owner._table.view(key)

    def _rejection(self, now: float) -> RateLimitExceeded:
        return self._owner._exceeded(self.key, now, 1.0)


class KeyedLimiter(Guard):
    """One bucket per key (player, IP, session), for millions of keys in bounded memory.

    ``kind="token"``: each key is a :class:`TokenBucket` (``rate``, ``capacity``);
    ``kind="leaky"``: a :class:`LeakyBucket` meter (GCRA). ``capacity=None`` means
    ``max(rate, 1.0)``. The table lives in the kernel: 24 bytes per slot, at most
    ``ceil(1.25*max_keys)`` slots, no Python object per key (``bytes_per_key``).

    Keys are identified by a 64-bit XXH64 fingerprint seeded with a per-process secret
    (``seed=`` fixes it, for reproducible tests only), so a hostile client cannot aim its
    keys at one slot. ``int``, ``str`` and ``bytes`` keys are hashed in C; other hashable
    keys through ``repr()``; an unhashable key is a ``TypeError``.

    Memory stays bounded: a key idle ``idle_ttl`` seconds is dropped (``None``: only when
    dropping it loses nothing, i.e. its bucket is full again); a new key arriving at a full
    table first drops every key whose bucket has refilled, then the stalest keys, an eighth
    of the table at a time (amortised O(1)).

    ``try_acquire(key, cost=1) -> bool`` (the kernel's method), ``len()``, ``key in``,
    ``@limiter.limit(key=lambda player_id, *a, **kw: player_id)`` (sync or async; raises
    :class:`RateLimitExceeded` with ``.key``), ``with limiter.bind(key):``.
    """

    def __init__(self, rate: float, capacity: Optional[float] = None, *, kind: str = "token",
                 max_keys: int = 1_000_000, idle_ttl: Optional[float] = None,
                 clock: Optional[Clock] = None, name: Optional[str] = None,
                 fallback: Optional[Callable[..., Any]] = None,
                 seed: Optional[int] = None) -> None:
        self.rate = check_positive("rate", rate)
        self.capacity = (max(self.rate, 1.0) if capacity is None
                         else check_positive("capacity", capacity))
        if not isinstance(kind, str) or kind not in ("token", "leaky"):
            raise ConfigurationError(f"kind must be 'token' or 'leaky', got {kind!r}")
        self.kind = kind
        self.max_keys = check_int("max_keys", max_keys, 1, 1 << 31)
        self.idle_ttl = None if idle_ttl is None else check_positive("idle_ttl", idle_ttl)
        if seed is not None:
            seed = check_int("seed", seed, 0, (1 << 64) - 1)
        self._init_guard(check_name(name, "keyed_limiter"), clock, fallback)
        self._table = _impl.kernel("keyed").KeyedTable(
            0 if kind == "token" else 1, self.rate, self.capacity, self.max_keys,
            math.inf if self.idle_ttl is None else self.idle_ttl,
            PROCESS_SEED if seed is None else seed, self._clock)
        self._kernel = self._table
        #: ``try_acquire(key, cost=1) -> bool``: the kernel's own method
        self.try_acquire = self._table.try_acquire  # type: ignore[method-assign]

    def try_acquire(self, key: Any, cost: float = 1) -> bool:  # replaced per instance
        """Admit ``cost`` for ``key`` now; never waits. A new key starts full."""
        return bool(self._table.try_acquire(key, cost))

    def retry_after(self, key: Any, cost: float = 1) -> float:
        """Seconds until ``try_acquire(key, cost)`` would succeed (0.0 if now)."""
        return float(self._table.delay_at(self._now(), key, _check_cost(cost, self.capacity)))

    def tokens(self, key: Any) -> float:
        """Budget ``key`` has now (token kind: tokens; leaky kind: room in the bucket)."""
        level = float(self._table.level_at(self._now(), key))
        return level if self.kind == "token" else self.capacity - level

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: Any) -> bool:
        return key in self._table

    def purge(self) -> int:
        """Drop every key that is back to full (or idle past ``idle_ttl``) now: O(slots)."""
        return int(self._table.purge(self._now()))

    def clear(self) -> None:
        """Forget every key."""
        self._table.clear()

    @property
    def nbytes(self) -> int:
        """Bytes the table holds now (it grows up to ``max_bytes``)."""
        return int(self._table.nbytes)

    @property
    def max_bytes(self) -> int:
        """The table's memory bound: ``24 * ceil(1.25 * max_keys)`` bytes."""
        return int(self._table.max_slots) * 24

    @property
    def bytes_per_key(self) -> float:
        """Table bytes per key held now (per slot of a full table: 24 / 0.8 = 30)."""
        n = len(self._table)
        return self.nbytes / n if n else float(self.nbytes)

    def snapshot(self) -> Dict[str, Any]:
        t = self._table
        return {"name": self.name, "kind": self.kind, "keys": len(t), "max_keys": self.max_keys,
                "slots": int(t.slots), "nbytes": self.nbytes, "max_bytes": self.max_bytes,
                "evicted": {"full": int(t.evicted_full), "idle": int(t.evicted_idle),
                            "stale": int(t.evicted_stale)},
                "sweeps": int(t.sweeps)}

    # -- guard forms ------------------------------------------------------------------------
    def bind(self, key: Any) -> Guard:
        """A guard for one key: ``with limiter.bind(player_id):`` (cost 1 per call)."""
        return _KeyGuard(self, key)

    def _exceeded(self, key: Any, now: float, cost: float) -> RateLimitExceeded:
        return RateLimitExceeded(
            f"rate limit {self.name!r} exceeded for key {key!r}",
            retry_after=_retry(self._table.delay_at(now, key, cost)), name=self.name, key=key)

    def limit(self, key: Callable[..., Any], cost: float = 1,
              fallback: Optional[Callable[..., Any]] = None) -> Callable[[F], F]:
        """Decorator: each call is limited under ``key(*args, **kwargs)``.

        A call over its key's budget does not run: ``fallback(*args, **kwargs)`` (this
        one's, else the limiter's) answers, or :class:`RateLimitExceeded` with ``.key``
        is raised. Works on sync and async functions.
        """
        if not callable(key):
            raise ConfigurationError(f"key must be a callable deriving the key, got {key!r}")
        c = _check_cost(cost, self.capacity)
        check_callable("fallback", fallback)
        fb = fallback if fallback is not None else self._fallback
        acquire = self._table.try_acquire

        def decorate(func: F) -> F:
            _check_decoratable(func)
            if inspect.iscoroutinefunction(func):
                @functools.wraps(func)
                async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                    k = key(*args, **kwargs)
                    if acquire(k, c):
                        return await func(*args, **kwargs)
                    if fb is None:
                        raise self._exceeded(k, self._now(), c)
                    result = fb(*args, **kwargs)
                    return (await result) if inspect.isawaitable(result) else result
                return guarded_async  # type: ignore[return-value]

            @functools.wraps(func)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                k = key(*args, **kwargs)
                if acquire(k, c):
                    return func(*args, **kwargs)
                if fb is None:
                    raise self._exceeded(k, self._now(), c)
                return fb(*args, **kwargs)
            return guarded  # type: ignore[return-value]
        return decorate

    def __call__(self, func: Any = None, /, *, key: Optional[Callable[..., Any]] = None,
                 cost: float = 1, fallback: Optional[Callable[..., Any]] = None) -> Any:
        """``@limiter(key=...)`` is ``@limiter.limit(key=...)``; a key function is required."""
        if key is None:
            raise TypeError(
                f"{self!r} limits per key: decorate with @limiter.limit(key=lambda *args, "
                "**kwargs: <key>) or use `with limiter.bind(key):`")
        deco = self.limit(key, cost, fallback)
        return deco if func is None else deco(func)

    def __enter__(self) -> Any:
        raise TypeError(f"{self!r} limits per key: use `with limiter.bind(key):`")

    async def __aenter__(self) -> Any:
        raise TypeError(f"{self!r} limits per key: use `async with limiter.bind(key):`")

    def _rejection(self, now: float) -> RateLimitExceeded:  # pragma: no cover - needs a key
        raise TypeError("a KeyedLimiter needs a key")

    def __repr__(self) -> str:
        return (f"KeyedLimiter(rate={self.rate!r}, capacity={self.capacity!r}, "
                f"kind={self.kind!r}, max_keys={self.max_keys!r}, name={self.name!r})")
