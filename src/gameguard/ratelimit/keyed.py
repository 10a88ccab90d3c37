"""One bucket per key: :class:`KeyedLimiter`."""
from __future__ import annotations

import functools
import os
import math
from .._hints import TYPE_CHECKING, cast, overload
from .. import _impl
from ..clock import Clock
from ..errors import ConfigurationError, RateLimitExceeded
from .._checks import check_callable, check_int, check_name, check_positive
from ..guard import Guard, _check_decoratable, _is_async_callable
from ._common import (CostOneGuard, Setting, changed, check_cost, check_rate_capacity,
                      guard_cost_error, retry)
from .._registry import register

if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, List, Optional, TypeVar
    from typing_extensions import ParamSpec, Protocol

    P = ParamSpec("P")
    R = TypeVar("R")

    class KeyedDecorator(Protocol):
        """What ``limit(key=...)`` returns: it keeps the decorated function's signature."""

        def __call__(self, func: Callable[P, R], /) -> Callable[P, R]: ...

#: Secret seed of the keyed tables' XXH64 fingerprints, drawn once per process: a client
#: who cannot learn it cannot choose keys that share a slot.
PROCESS_SEED: int = int.from_bytes(os.urandom(8), "little")
_FALLBACK: int = _impl.kernel("kernel").FALLBACK


class _KeyGuard(Guard):
    """A :class:`KeyedLimiter` bound to one key (``limiter.bind(key)``): a guard."""

    def __init__(self, owner: "KeyedLimiter", key: Any) -> None:
        self._owner = owner
        self.key = key
        self._init_guard(owner.name, owner._clock, owner._fallback)
        self._kernel = owner._table.view(key)

    def _rejection(self, now: float) -> Any:
        err = self._owner._guard_error()
        if err is not None:
            return err
        return self._owner._exceeded(self.key, now, 1.0)


class KeyedLimiter(CostOneGuard):
    """One bucket per key (player, IP, session), for millions of keys in bounded memory.

    ``kind="token"``: each key is a :class:`TokenBucket` (``rate``, ``capacity``);
    ``kind="leaky"``: a :class:`LeakyBucket` meter (GCRA). ``capacity=None`` means
    ``max(rate, 1.0)``. The table lives in the kernel: 24 bytes per slot, at most
    ``ceil(1.25*max_keys)`` slots, no Python object per key (``bytes_per_key``).

    Keys are identified by a 64-bit XXH64 fingerprint seeded with a per-process secret
    (``seed=`` fixes it, for reproducible tests only), so a hostile client cannot aim its
    keys at one slot. ``int``, ``str`` and ``bytes`` keys are hashed in C; other hashable
    keys by the same rule as :class:`~gameguard.HotKeyCache` (``key_hash``): equal keys are
    one key (``1``, ``1.0``, ``True``, ``IntEnum`` members equal to 1), tuples by value;
    an unhashable key is a ``TypeError``.

    Memory stays bounded: a key idle ``idle_ttl`` seconds is dropped (``None``: only when
    dropping it loses nothing, i.e. its bucket is full again). ``idle_ttl`` must be at
    least ``capacity / rate``, the time an emptied bucket takes to refill: dropping a key
    sooner would hand it back a full bucket (budget minted). A new key arriving at a full
    table first drops every key whose bucket has refilled, then the stalest keys, an eighth
    of the table at a time (amortised O(1)).

    ``try_acquire(key, cost=1) -> bool`` (the kernel's method), ``len()``, ``key in``,
    ``@limiter.limit(key=lambda player_id, *a, **kw: player_id)`` (sync or async; raises
    :class:`RateLimitExceeded` with ``.key``), ``with limiter.bind(key):``,
    ``configure(rate=..., capacity=..., idle_ttl=...)`` for live changes.
    """

    #: a KeyedLimiter needs a key per call: ``pipeline()`` refuses it (use ``bind(key)``)
    _needs_key = True
    rate = Setting()
    capacity = Setting()

    def __init__(self, rate: float, capacity: Optional[float] = None, *, kind: str = "token",
                 max_keys: int = 1_000_000, idle_ttl: Optional[float] = None,
                 clock: Optional[Clock] = None, name: Optional[str] = None,
                 fallback: Optional[Callable[..., Any]] = None,
                 seed: Optional[int] = None, backend: Optional[Any] = None) -> None:
        self._rate, self._capacity, self._idle_ttl = self._settings(rate, capacity, idle_ttl)
        if not isinstance(kind, str) or kind not in ("token", "leaky"):
            raise ConfigurationError(f"kind must be 'token' or 'leaky', got {kind!r}")
        self.kind = kind
        self.max_keys = check_int("max_keys", max_keys, 1, 1 << 31)
        if seed is not None:
            seed = check_int("seed", seed, 0, (1 << 64) - 1)
        self._init_guard(check_name(name, "keyed_limiter"), clock, fallback)
        self._table = _impl.kernel("keyed").KeyedTable(
            0 if kind == "token" else 1, self._rate, self._capacity, self.max_keys,
            math.inf if self._idle_ttl is None else self._idle_ttl,
            PROCESS_SEED if seed is None else seed, self._clock)
        self._kernel = self._table
        #: ``try_acquire(key, cost=1) -> bool``: the kernel's own method
        self.try_acquire = self._table.try_acquire  # type: ignore[method-assign]
        self.backend = backend
        self._remote: Any = None
        if backend is not None:
            self._use_backend(backend)
        register(self)

    def _use_backend(self, backend: Any) -> None:
        """Decide through ``backend`` (e.g. :class:`gameguard.redis.RedisBackend`): its
        ``bind(limiter)`` gives the ``try_acquire`` family, which replace the table's."""
        if not callable(getattr(backend, "bind", None)):
            raise ConfigurationError(
                f"backend must be a shared-state backend such as "
                f"gameguard.redis.RedisBackend, got {backend!r}")
        remote = self._remote = backend.bind(self)
        self.try_acquire = remote.try_acquire  # type: ignore[method-assign]
        self.try_acquire_async = remote.try_acquire_async  # type: ignore[method-assign]
        self.try_acquire_many = remote.try_acquire_many  # type: ignore[method-assign]
        self.try_acquire_many_async = remote.try_acquire_many_async  # type: ignore[method-assign]

    @staticmethod
    def _settings(rate: Any, capacity: Any, idle_ttl: Any) -> tuple[float, float, Optional[float]]:
        """The checks shared by the constructor and configure()."""
        r, c = check_rate_capacity(rate, capacity, True)
        if idle_ttl is None:
            return r, c, None
        ttl = check_positive("idle_ttl", idle_ttl)
        if ttl < c / r:
            raise ConfigurationError(
                f"idle_ttl must be at least capacity/rate={c / r!r} seconds (an emptied "
                f"bucket refills in that long: dropping its key sooner would hand it a full "
                f"bucket), got {idle_ttl!r}")
        return r, c, ttl

    @property
    def idle_ttl(self) -> Optional[float]:
        """Seconds idle after which a key is dropped (None: only once it is full again)."""
        return self._idle_ttl

    def configure(self, **changes: Any) -> None:
        """Change ``rate``, ``capacity`` and/or ``idle_ttl`` live, with the constructor's
        checks, all or nothing (an unknown setting is a :class:`ConfigurationError`).

        Every key is settled at the old rate up to now (one O(slots) pass), then the table
        switches; tokens are clipped to a smaller capacity, leaky levels kept."""
        new = changed(self, changes, {"rate": self._rate, "capacity": self._capacity,
                                      "idle_ttl": self._idle_ttl})
        rate, capacity, ttl = self._settings(new["rate"], new["capacity"], new["idle_ttl"])
        self._check_bound([("capacity", capacity)])
        self._table.configure(self._now(), rate, capacity, math.inf if ttl is None else ttl)
        if self._remote is not None:
            self._remote.configure(rate, capacity)
        self._rate, self._capacity, self._idle_ttl = rate, capacity, ttl

    def _guard_error(self) -> Optional[ConfigurationError]:
        return guard_cost_error(self.name, "capacity", self._capacity)

    def try_acquire(self, key: Any, cost: float = 1) -> bool:  # replaced per instance
        """Admit ``cost`` for ``key`` now; never waits. A new key starts full."""
        return bool(self._table.try_acquire(key, cost))

    async def try_acquire_async(self, key: Any, cost: float = 1) -> bool:  # per instance too
        """``try_acquire`` awaited: in-process it never waits; with an asyncio backend
        client it is the one round trip."""
        return bool(self._table.try_acquire(key, cost))

    def try_acquire_many(self, keys: Iterable[Any], cost: float = 1) -> List[bool]:
        """``try_acquire(key, cost)`` for each key, in order (with a backend: one pipelined
        round trip for all of them)."""
        acquire = self._table.try_acquire
        return [bool(acquire(k, cost)) for k in keys]

    async def try_acquire_many_async(self, keys: Iterable[Any],
                                     cost: float = 1) -> List[bool]:
        """``try_acquire_many`` awaited (asyncio backend clients)."""
        return self.try_acquire_many(keys, cost)

    def retry_after(self, key: Any, cost: float = 1) -> float:
        """Seconds until ``try_acquire(key, cost)`` would succeed (0.0 if now)."""
        return float(self._table.delay_at(self._now(), key, check_cost(cost, self._capacity)))

    def tokens(self, key: Any) -> float:
        """Budget ``key`` has now (token kind: tokens; leaky kind: room in the bucket)."""
        level = float(self._table.level_at(self._now(), key))
        return level if self.kind == "token" else self._capacity - level

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
        return {"name": self.name, "kind": self.kind, "rate": self._rate,
                "capacity": self._capacity, "idle_ttl": self._idle_ttl,
                "keys": len(t), "max_keys": self.max_keys,
                "slots": int(t.slots), "nbytes": self.nbytes, "max_bytes": self.max_bytes,
                "evicted": {"full": int(t.evicted_full), "idle": int(t.evicted_idle),
                            "stale": int(t.evicted_stale)},
                "sweeps": int(t.sweeps), "counters": self._counters()}

    # -- guard forms ------------------------------------------------------------------------
    def bind(self, key: Any) -> Guard:
        """A guard for one key: ``with limiter.bind(player_id):`` (cost 1 per call; a
        capacity below 1 is refused here, not on every call)."""
        if self._remote is not None:
            raise ConfigurationError(
                f"{self.name!r} decides through {self.backend!r}: use try_acquire(key) or "
                "@limiter.limit(key=...), not bind(key)")
        self._bind_cost(1.0)
        return _KeyGuard(self, key)

    def _exceeded(self, key: Any, now: float, cost: float) -> RateLimitExceeded:
        # with a backend, the wait its reply to this thread's refused call gave
        wait = retry(self._table.delay_at(now, key, cost)) if self._remote is None \
            else self._remote.last_wait()
        return RateLimitExceeded(f"rate limit {self.name!r} exceeded for key {key!r}",
                                 retry_after=wait, name=self.name, key=key)

    def limit(self, key: Callable[..., Any], cost: float = 1,
              fallback: Optional[Callable[..., Any]] = None) -> "KeyedDecorator":
        """Decorator: each call is limited under ``key(*args, **kwargs)``.

        A call over its key's budget does not run: ``fallback(*args, **kwargs)`` (this
        one's, else the limiter's) answers, or :class:`RateLimitExceeded` with ``.key``
        is raised. Works on sync and async functions.
        """
        if not callable(key):
            raise ConfigurationError(f"key must be a callable deriving the key, got {key!r}")
        c = check_cost(cost, self._capacity)
        check_callable("fallback", fallback)
        self._bind_cost(c)
        fb = fallback if fallback is not None else self._fallback
        acquire = self.try_acquire  # the table's own method, or the backend's
        # an asyncio backend client decides by awaiting; everything else answers at once
        acquire_async = self.try_acquire_async if getattr(self.backend, "is_async", False) \
            else None
        bump = self._table.bump

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            _check_decoratable(func)
            if _is_async_callable(func):
                import inspect
                afunc: Any = func

                async def refused(k: Any, args: Any, kwargs: Any) -> Any:
                    if fb is None:
                        raise self._exceeded(k, self._now(), c)
                    bump(_FALLBACK)
                    result = fb(*args, **kwargs)
                    return (await result) if inspect.isawaitable(result) else result

                if acquire_async is not None:  # an asyncio backend client: one awaited trip
                    @functools.wraps(func)
                    async def guarded_remote(*args: Any, **kwargs: Any) -> Any:
                        k = key(*args, **kwargs)
                        if await acquire_async(k, c):
                            return await afunc(*args, **kwargs)
                        return await refused(k, args, kwargs)
                    return cast("Callable[P, R]", guarded_remote)

                @functools.wraps(func)
                async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                    k = key(*args, **kwargs)
                    if acquire(k, c):
                        return await afunc(*args, **kwargs)
                    return await refused(k, args, kwargs)
                return cast("Callable[P, R]", guarded_async)

            @functools.wraps(func)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                k = key(*args, **kwargs)
                if acquire(k, c):
                    return func(*args, **kwargs)
                if fb is None:
                    raise self._exceeded(k, self._now(), c)
                bump(_FALLBACK)
                return fb(*args, **kwargs)
            return cast("Callable[P, R]", guarded)
        return decorate

    @overload  # type: ignore[override]
    def __call__(self, func: None = None, /, *, key: Optional[Callable[..., Any]] = None,
                 cost: float = 1,
                 fallback: Optional[Callable[..., Any]] = None) -> "KeyedDecorator": ...
    @overload
    def __call__(self, func: "Callable[P, R]", /, *, key: Optional[Callable[..., Any]] = None,
                 cost: float = 1,
                 fallback: Optional[Callable[..., Any]] = None) -> "Callable[P, R]": ...

    def __call__(self, func: Any = None, /, *, key: Optional[Callable[..., Any]] = None,
                 cost: float = 1, fallback: Optional[Callable[..., Any]] = None) -> Any:
        """``@limiter(key=...)`` is ``@limiter.limit(key=...)``; a key function is required."""
        if key is None:
            raise TypeError(
                f"{self!r} limits per key: decorate with @limiter.limit(key=lambda *args, "
                "**kwargs: <key>) or use `with limiter.bind(key):`")
        deco: Any = self.limit(key, cost, fallback)
        return deco if func is None else deco(func)

    def __enter__(self) -> Any:
        raise TypeError(f"{self!r} limits per key: use `with limiter.bind(key):`")

    async def __aenter__(self) -> Any:
        raise TypeError(f"{self!r} limits per key: use `async with limiter.bind(key):`")

    def _rejection(self, now: float) -> RateLimitExceeded:  # pragma: no cover - needs a key
        raise TypeError("a KeyedLimiter needs a key")

    def __repr__(self) -> str:
        return (f"KeyedLimiter(rate={self._rate!r}, capacity={self._capacity!r}, "
                f"kind={self.kind!r}, max_keys={self.max_keys!r}, name={self.name!r})")
