"""Hot-key caching: :class:`HotKeyCache`, sharded, stampede-proof, hot keys kept warm.

The three classic cache failures and what answers each here:

* **breakdown** (one hot key expires, thousands of readers hit the database at once):
  per-key *singleflight* (``get_or_load``: one loader call, everyone shares its result or
  exception) and *refresh-ahead* of hot keys (a heavy-hitter sketch spots them; one reader
  reloads before expiry while the rest keep reading the still-valid value);
* **avalanche** (many keys set together expire together): each TTL is jittered by
  ``±ttl_jitter``;
* **penetration** (reads of keys that do not exist go to the database every time):
  *negative caching*: a loader result meaning "absent" is cached for ``negative_ttl``.

And when the database itself fails, ``stale_if_error`` (RFC 5861's name) keeps serving a
value that expired a little while ago rather than the loader's exception.

Bounded at ``maxsize`` with TinyLFU admission (see :mod:`gameguard._pure.cachetable`).
"""
from __future__ import annotations

import functools
import os
import threading
from ._hints import TYPE_CHECKING, Generic, Protocol, overload
from . import _impl
from ._checks import check_clock, check_int, check_name, check_non_negative, check_positive
from ._loop import warn_if_loop_thread
from .clock import Clock, monotonic
from .errors import ConfigurationError
from ._log import logger
from ._registry import register

if TYPE_CHECKING:
    import asyncio
    from typing import (Any, Awaitable, Callable, Coroutine, Dict, Hashable, List, Optional,
                        Set, Tuple)

    from typing_extensions import ParamSpec, TypeVar

    V = TypeVar("V", default=Any)   # the cached values' type; HotKeyCache() is HotKeyCache[Any]
    R = TypeVar("R")
    K = TypeVar("K", bound=Hashable)
    P = ParamSpec("P")
else:  # annotation-only names stay out of the import (typing_extensions costs milliseconds)
    V = None  # only subscripts the run-time stand-in of Generic

__all__ = ["HotKeyCache", "ABSENT", "STALE_RETRY"]

#: Seconds an expired value is served after its load failed (``stale_if_error``) before
#: a read tries the load again: one load per key per second against a dead dependency, and
#: a recovered one is noticed within a second.
STALE_RETRY = 1.0


def _seeded_random(seed: Optional[int]) -> Callable[[], float]:
    import random  # on first use: it costs milliseconds at import (hashlib, bisect)

    return random.Random(seed).random


class _Absent:
    """The loader result meaning "no such record" (see ``negative_ttl``)."""

    __slots__ = ()
    _instance: Optional["_Absent"] = None

    def __new__(cls) -> "_Absent":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "ABSENT"


#: Return this from a loader to say "this key has no value"; with ``negative_ttl`` the
#: answer is cached, so repeated reads of a missing key stop reaching the database.
ABSENT: Any = _Absent()


def _check_ttl(value: Any, param: str = "ttl") -> float:
    """A lifetime (``ttl``, per call or default, or ``negative_ttl``): a number > 0,
    ``float("inf")`` (never expires) allowed."""
    return check_positive(param, value, allow_inf=True)


class _Flight:
    """One in-flight load of one key, shared by the threads and tasks that wait for it.
    Waiters register under the shard's lock; the thread Event is made only when a thread
    actually waits (creating one costs more than the rest of a miss). ``owner`` is the
    leader's thread and ``task`` its asyncio task (None for a sync leader): a sync waiter on
    that thread could never be woken, as the leader cannot run while it blocks."""

    __slots__ = ("value", "exc", "abandoned", "done", "event", "futures", "owner", "task")

    def __init__(self, task: Optional["asyncio.Task[Any]"] = None) -> None:
        self.value: Any = None
        self.exc: Optional[BaseException] = None
        self.abandoned = False   # the leader was cancelled/interrupted: a waiter takes over
        self.done = False
        self.event: Optional[threading.Event] = None
        self.futures: List[Tuple["asyncio.AbstractEventLoop", "asyncio.Future[None]"]] = []
        self.owner = threading.get_ident()
        self.task = task

    def wake(self, futures: List[Tuple["asyncio.AbstractEventLoop",
                                       "asyncio.Future[None]"]]) -> None:
        if self.event is not None:
            self.event.set()
        for loop, fut in futures:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that loop is closed: its waiter is gone
                pass

    def outcome(self) -> Any:
        """The shared result for a woken waiter (the leader's exception is raised)."""
        if self.exc is not None:
            raise self.exc
        return self.value


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


def _recursive(key: Any) -> RuntimeError:
    return RuntimeError(f"the loader of {key!r} loads {key!r} again (a recursive load "
                        "waits for itself for ever)")


def _make_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    """Default ``cached`` key: the single str/int argument itself (as ``functools.lru_cache``
    does), else the arguments as a tuple (keyword arguments sorted after a marker)."""
    if not kwargs:
        if len(args) == 1 and (type(args[0]) is str or type(args[0]) is int):
            return args[0]
        return args
    return args + (_KWMARK,) + tuple(sorted(kwargs.items()))


_KWMARK = object()


class CachedDecorator(Protocol):
    """What ``cache.cached(key=..., ttl=...)`` returns: it keeps the decorated signature."""

    @overload
    def __call__(self, func: Callable[P, Coroutine[Any, Any, R]], /
                 ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> Callable[P, R]: ...


class HotKeyCache(Generic[V]):
    """A bounded, sharded TTL cache for values read by many players at once.

    ``get`` of a present, fresh entry takes no lock: a dict lookup in the key's shard, an
    expiry check and two sketch updates, all in C in the compiled build. Writes and loads
    take the shard's lock. ``get_or_load`` runs one loader per key at a time (threads and
    asyncio tasks alike) and refreshes hot keys ahead of expiry. An entry is gone when
    ``now >= expires_at`` with ``expires_at = set time + ttl * (1 + ttl_jitter * u)``, ``u``
    uniform in [-1, 1].

    Parameters beyond the basics: ``refresh_ahead`` (fraction of an entry's lifetime after
    which a hot key is reloaded: 0.8), ``hot_rate`` (reads per second from which a key
    counts as hot: 1.0), ``hot_capacity`` (keys tracked by the heavy-hitter sketch: 64),
    ``hot_half_life`` (seconds; counts are halved this often: 2.0), ``none_is_absent``
    (a loader returning ``None`` means absent, like :data:`ABSENT`), ``seed`` (hash and
    jitter seed; default random per cache), ``rng`` (a zero-argument callable returning
    uniform floats in [0, 1) for the jitter) and ``stale_if_error`` (seconds past expiry
    during which an expired value is kept and served when its load raises: 0, never).

    Generic in its values: ``HotKeyCache[Player]`` types ``get``, ``set`` and the loaders;
    a plain ``HotKeyCache()`` is ``HotKeyCache[Any]``. Keys must be hashable (``TypeError``
    otherwise). Memory: at most ``maxsize`` entries, plus ~8 bytes per entry of sketch and a
    fixed ~40 KB heavy-hitter table.
    """

    def __init__(self, maxsize: int = 100_000, ttl: float = 60.0, *, shards: int = 64,
                 ttl_jitter: float = 0.1, negative_ttl: Optional[float] = None,
                 clock: Optional[Clock] = None, name: Optional[str] = None,
                 refresh_ahead: float = 0.8, hot_rate: float = 1.0, hot_capacity: int = 64,
                 hot_half_life: float = 2.0, none_is_absent: bool = False,
                 seed: Optional[int] = None,
                 rng: Optional[Callable[[], float]] = None,
                 stale_if_error: float = 0.0) -> None:
        self.maxsize = check_int("maxsize", maxsize, 1)
        self.ttl = _check_ttl(ttl)
        self.shards = check_int("shards", shards, 1, 1 << 16)
        if isinstance(ttl_jitter, bool) or not isinstance(ttl_jitter, (int, float)) \
                or not 0.0 <= ttl_jitter < 1.0:
            raise ConfigurationError(f"ttl_jitter must be a number in [0, 1), got {ttl_jitter!r}")
        self.ttl_jitter = float(ttl_jitter)
        self.negative_ttl = None if negative_ttl is None else \
            _check_ttl(negative_ttl, "negative_ttl")
        if isinstance(refresh_ahead, bool) or not isinstance(refresh_ahead, (int, float)) \
                or not 0.0 < refresh_ahead <= 1.0:
            raise ConfigurationError(
                f"refresh_ahead must be a fraction in (0, 1], got {refresh_ahead!r}")
        self.refresh_ahead = float(refresh_ahead)
        self.hot_rate = check_non_negative("hot_rate", hot_rate)
        hot_capacity = check_int("hot_capacity", hot_capacity, 1, 1 << 16)
        hot_half_life = check_positive("hot_half_life", hot_half_life)
        if not isinstance(none_is_absent, bool):
            raise ConfigurationError(f"none_is_absent must be a bool, got {none_is_absent!r}")
        self.none_is_absent = none_is_absent
        self.stale_if_error = check_non_negative("stale_if_error", stale_if_error)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigurationError(f"seed must be an int or None, got {seed!r}")
        if rng is not None and not callable(rng):
            raise ConfigurationError(f"rng must be a zero-argument callable, got {rng!r}")
        clock = check_clock(clock)
        self.name = check_name(name, "cache")
        self._clock: Clock = clock if clock is not None else monotonic
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self.seed = seed & ((1 << 64) - 1)
        self._rng: Callable[[], float] = rng if rng is not None else _seeded_random(seed)
        mod = _impl.kernel("cachetable")
        self._kmod = mod
        self._callmod = _impl.kernel("cachecall")
        self._MISS, self._REFRESH = mod.MISS, mod.REFRESH
        self._core = mod.CacheTable(
            self.maxsize, self.shards, self.seed, clock, hot_capacity=hot_capacity,
            hot_width=max(256, min(1 << 14, 16 * hot_capacity)), hot_half_life=hot_half_life,
            hot_rate=self.hot_rate, absent=ABSENT)
        n = self._core.nshards
        self._locks = [threading.Lock() for _ in range(n)]
        self._flights: List[Dict[Any, _Flight]] = [{} for _ in range(n)]
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self._loads = 0
        self._coalesced = 0
        self._duplicates = 0
        self._refreshes = 0
        self._refresh_failures = 0
        # finished loads by outcome (a loader that raised, or whose result could not be
        # stored, failed; a cancelled one is neither)
        self._load_successes = 0
        self._load_failures = 0
        # the hit path: straight into the kernel, no Python frame of ours in between
        self.get = self._core.get  # type: ignore[method-assign]
        register(self)

    # -- reading ------------------------------------------------------------------------
    @overload
    def get(self, key: Hashable) -> Optional[V]: ...

    @overload
    def get(self, key: Hashable, default: R) -> V | R: ...

    def get(self, key: Hashable, default: Any = None) -> Any:  # replaced per instance
        """The fresh value cached for ``key``, else ``default``. Lock-free; O(1)."""
        return self._core.get(key, default)

    def __contains__(self, key: Hashable) -> bool:
        return bool(self._core.contains(key, self._clock()))

    def __len__(self) -> int:
        """Entries held, including expired ones not yet dropped (see :meth:`expire`)."""
        return len(self._core)

    def expires_at(self, key: Hashable) -> Optional[float]:
        """When the entry for ``key`` expires (clock seconds), or None if none is held."""
        t = self._core.expires_at(key)
        return None if t is None else float(t)

    # -- writing ------------------------------------------------------------------------
    def _lifetime(self, ttl: Optional[float]) -> float:
        ttl = self.ttl if ttl is None else ttl
        if self.ttl_jitter == 0.0:
            return ttl
        return ttl * (1.0 + self.ttl_jitter * (2.0 * self._rng() - 1.0))

    def _put(self, key: Any, value: Any, ttl: Optional[float], now: float) -> None:
        """Store under the shard lock (held by the caller); ``ttl`` is already checked."""
        life = self._lifetime(ttl)
        expires = now + life
        self._core.put(key, value, expires, now + self.refresh_ahead * life, now)

    def set(self, key: Hashable, value: V, ttl: Optional[float] = None) -> None:
        """Cache ``value`` for ``ttl`` seconds (default: the cache's), jittered. A load in
        flight for ``key`` no longer stores its result; later misses do not wait for it."""
        if ttl is not None:
            ttl = _check_ttl(ttl)
        s = self._core.shard_of(key)
        with self._locks[s]:
            self._flights[s].pop(key, None)
            self._put(key, value, ttl, self._clock())

    def delete(self, key: Hashable) -> bool:
        """Drop ``key``; True if an entry was held. A load in flight no longer stores its
        result; later misses start a new one."""
        s = self._core.shard_of(key)
        with self._locks[s]:
            self._flights[s].pop(key, None)
            return bool(self._core.delete(key))

    def clear(self) -> None:
        for lock in self._locks:
            lock.acquire()
        try:
            for flights in self._flights:
                flights.clear()
            self._core.clear()
        finally:
            for lock in self._locks:
                lock.release()

    def expire(self) -> int:
        """Drop every expired entry now (O(n)), except those still within
        ``stale_if_error`` of their expiry; returns how many. Not needed for correctness:
        reads treat expired entries as absent and eviction drops them first."""
        for lock in self._locks:
            lock.acquire()
        try:
            return int(self._core.expire(self._clock() - self.stale_if_error))
        finally:
            for lock in self._locks:
                lock.release()

    # -- negative results ---------------------------------------------------------------
    def _is_absent(self, value: Any) -> bool:
        return value is ABSENT or (value is None and self.none_is_absent)

    def _out(self, stored: Any) -> Any:
        """What callers see: ABSENT reads as None when ``none_is_absent``."""
        if stored is ABSENT and self.none_is_absent:
            return None
        return stored

    def _store_result(self, key: Any, value: Any, ttl: Optional[float], now: float) -> None:
        if self._is_absent(value):
            if self.negative_ttl is not None:
                self._put(key, ABSENT, self.negative_ttl, now)
            elif self._core.peek(key, now) is not self._MISS:
                self._core.delete(key)  # a refresh found the record gone
        else:
            self._put(key, value, ttl, now)

    # -- singleflight (threads) ---------------------------------------------------------
    def get_or_load(self, key: K, loader: Callable[[K], V], ttl: Optional[float] = None) -> V:
        """The cached value for ``key``, else ``loader(key)``, cached for ``ttl``.

        Concurrent misses on one key (threads or tasks) run ``loader`` once and all get its
        result or its exception; nothing is cached on an exception (with
        ``stale_if_error``, a key that expired less than that long ago answers all of them
        with its expired value instead, and for ``STALE_RETRY`` seconds after). A hot key past its
        refresh point is reloaded by one caller while the others keep the current value.
        ``ttl`` is checked before anything is loaded. On an event loop's thread, a miss
        whose load a task of that loop leads cannot wait for it (the task cannot run
        meanwhile): it runs ``loader`` itself (``stats()["duplicate_loads"]``); waiting
        for another thread's load there warns (``RuntimeWarning``). A loader that loads its
        own key again gets a ``RuntimeError`` instead of waiting for itself.
        """
        if not callable(loader):
            raise TypeError(f"loader must be callable, got {loader!r}")
        if ttl is not None:
            ttl = _check_ttl(ttl)
        v = self._core.lookup(key)
        if v is self._MISS:
            return self._load(key, loader, ttl)  # type: ignore[no-any-return]
        if v is self._REFRESH:
            return self._refresh(key, loader, ttl)  # type: ignore[no-any-return]
        return self._out(v)  # type: ignore[no-any-return]

    def _load(self, key: Any, loader: Callable[[Any], Any], ttl: Optional[float]) -> Any:
        s = self._core.shard_of(key)
        lock, flights = self._locks[s], self._flights[s]
        while True:
            with lock:
                v = self._fresh_or_stale(key)
                if v is not self._MISS:
                    return self._out(v)
                fl = flights.get(key)
                if fl is None:
                    fl = flights[key] = _Flight()
                    self._loads += 1
                    event = None
                elif fl.owner == threading.get_ident():
                    if fl.task is None:  # this very thread leads it: the loader recursed
                        raise _recursive(key)
                    self._loads += 1     # a task of the loop on this thread leads it
                    self._duplicates += 1
                    fl = event = None
                else:
                    self._coalesced += 1
                    if fl.event is None:
                        fl.event = threading.Event()
                    event = fl.event
            if fl is None:
                return self._out(self._load_alone(s, key, loader, ttl))
            if event is None:
                return self._out(self._lead(s, key, fl, loader, ttl, refresh=False))
            warn_if_loop_thread(f"get_or_load({key!r}) waiting for another thread's load",
                                "get_or_load_async", stacklevel=4)
            event.wait()
            if not fl.abandoned:
                return self._out(fl.outcome())

    @staticmethod
    def _call_loader(loader: Callable[[Any], Any], key: Any) -> Any:
        value = loader(key)
        if hasattr(type(value), "__await__"):
            close = getattr(value, "close", None)
            if close is not None:
                close()
            raise TypeError("the loader returned an awaitable: use get_or_load_async")
        return value

    def _load_alone(self, s: int, key: Any, loader: Callable[[Any], Any],
                    ttl: Optional[float]) -> Any:
        """Load beside a flight this thread cannot wait for, and store the result."""
        try:
            value = self._call_loader(loader, key)
        except Exception as exc:
            with self._locks[s]:
                self._load_failures += 1
                kept = self._keep_stale(key) if self.stale_if_error else self._MISS
            if kept is self._MISS:
                raise
            _log_stale(key, exc)
            return kept
        with self._locks[s]:
            self._store_result(key, value, ttl, self._clock())
            self._load_successes += 1
        return value

    def _lead(self, s: int, key: Any, fl: _Flight, loader: Callable[[Any], Any],
              ttl: Optional[float], refresh: bool) -> Any:
        try:
            value = self._call_loader(loader, key)
        except Exception as exc:
            if not self._finish(s, key, fl, exc=exc, refresh=refresh):
                raise
            return fl.value  # stale_if_error: the kept value, for every waiter too
        except BaseException:
            self._finish(s, key, fl, abandoned=True, refresh=refresh)
            raise
        self._finish(s, key, fl, value=value, ttl=ttl, refresh=refresh)
        return value

    def _finish(self, s: int, key: Any, fl: _Flight, *, value: Any = None,
                exc: Optional[BaseException] = None, abandoned: bool = False,
                ttl: Optional[float] = None, refresh: bool = False) -> bool:
        """End a flight: store the result (unless ``set``/``delete`` detached it), then wake
        every waiter, whatever fails. A result that cannot be stored (a user clock or rng
        raised, say) becomes the error every waiter and the leader get. True when the
        loader's exception gave way to a stale value (``stale_if_error``): it is
        ``fl.value``, every waiter's result."""
        error: Optional[BaseException] = None
        kept: Any = self._MISS
        with self._locks[s]:
            flights = self._flights[s]
            current = flights.get(key) is fl
            if current:
                del flights[key]
            try:
                if exc is None and not abandoned:
                    if current:
                        self._store_result(key, value, ttl, self._clock())
                elif refresh:
                    self._core.end_refresh(key, self._clock())
                    if exc is not None:
                        self._refresh_failures += 1
                if exc is not None and current and self.stale_if_error:
                    kept = self._keep_stale(key)
            except BaseException as err:
                if exc is None and not abandoned:
                    error = exc = err
                else:  # keep the loader's own exception; this one is only logged
                    logger().warning("cleaning up the failed load of %r failed", key, exc_info=True)
            if exc is not None:
                self._load_failures += 1
            elif not abandoned:
                self._load_successes += 1
            failure = exc
            if kept is not self._MISS:
                value, exc = kept, None
            fl.value, fl.exc, fl.abandoned, fl.done = value, exc, abandoned, True
            futures, fl.futures = fl.futures, []
        fl.wake(futures)
        if error is not None:
            raise error
        if kept is self._MISS:
            return False
        _log_stale(key, failure)
        return True

    # -- stale_if_error -----------------------------------------------------------------
    def _fresh_or_stale(self, key: Any) -> Any:
        """Under the shard's lock: the fresh value, else the stale one kept after a failed
        load (its retry not due yet), else ``MISS``."""
        now = self._clock()
        v = self._core.peek(key, now)
        if v is self._MISS and self.stale_if_error:
            v = self._core.stale_value(key, now)
        return v

    def _keep_stale(self, key: Any) -> Any:
        """Under the shard's lock, after ``key``'s load raised: its value if it expired less
        than ``stale_if_error`` ago (kept and served for ``STALE_RETRY`` seconds, when a
        read loads again), else ``MISS``."""
        try:
            return self._core.keep_stale(key, self._clock(), self.stale_if_error, STALE_RETRY)
        except Exception:  # a user clock or key raised: the loader's exception stands
            logger().warning("keeping the stale value of %r failed", key, exc_info=True)
            return self._MISS

    def _refresh(self, key: Any, loader: Callable[[Any], Any], ttl: Optional[float]) -> Any:
        """This caller owns the refresh of a fresh hot key: reload it inline; on failure
        keep (and return) the current value, logged, as Caffeine's refreshAfterWrite does."""
        s = self._core.shard_of(key)
        with self._locks[s]:
            now = self._clock()
            old = self._core.peek(key, now)
            if old is self._MISS or key in self._flights[s]:
                self._core.end_refresh(key, now)
                fl = None
            else:
                fl = self._flights[s][key] = _Flight()
                self._loads += 1
                self._refreshes += 1
        if fl is None:
            return self._out(old) if old is not self._MISS else self._load(key, loader, ttl)
        try:
            return self._out(self._lead(s, key, fl, loader, ttl, refresh=True))
        except Exception:
            logger().warning("hot-key refresh of %r failed; keeping the current value", key,
                        exc_info=True)
            return self._out(old)

    # -- singleflight (asyncio) ---------------------------------------------------------
    @overload
    async def get_or_load_async(self, key: K, loader: Callable[[K], Awaitable[V]],
                                ttl: Optional[float] = None) -> V: ...

    @overload
    async def get_or_load_async(self, key: K, loader: Callable[[K], V],
                                ttl: Optional[float] = None) -> V: ...

    async def get_or_load_async(self, key: Any, loader: Callable[[Any], Any],
                                ttl: Optional[float] = None) -> Any:
        """``get_or_load`` for coroutines: ``await loader(key)`` (a sync loader works too).
        Returns the loaded value (never ``None`` for a loader that returned something else).

        If the task running the loader is cancelled, a waiting task takes over the load;
        a cancelled waiter leaves the others waiting. A hot key's refresh runs in a
        background task while every caller gets the current value at once.
        """
        if not callable(loader):
            raise TypeError(f"loader must be callable, got {loader!r}")
        if ttl is not None:
            ttl = _check_ttl(ttl)
        v = self._core.lookup(key)
        if v is self._REFRESH:
            v = self._refresh_async(key, loader, ttl)
        if v is self._MISS:
            return await self._load_async(key, loader, ttl)
        return self._out(v)

    async def _load_async(self, key: Any, loader: Callable[[Any], Any],
                          ttl: Optional[float]) -> Any:
        import asyncio
        s = self._core.shard_of(key)
        lock, flights = self._locks[s], self._flights[s]
        loop = asyncio.get_running_loop()
        while True:
            with lock:
                v = self._fresh_or_stale(key)
                if v is not self._MISS:
                    return self._out(v)
                fl = flights.get(key)
                fut: Optional["asyncio.Future[None]"] = None
                if fl is None:
                    fl = flights[key] = _Flight(asyncio.current_task())
                    self._loads += 1
                elif fl.owner == threading.get_ident() and (
                        fl.task is None or fl.task is asyncio.current_task()):
                    raise _recursive(key)  # its leader is this very caller
                else:
                    fut = loop.create_future()
                    fl.futures.append((loop, fut))
                    self._coalesced += 1
            if fut is None:
                return self._out(await self._lead_async(s, key, fl, loader, ttl, refresh=False))
            try:
                await fut
            except BaseException:
                with lock:
                    try:
                        fl.futures.remove((loop, fut))
                    except ValueError:
                        pass
                raise
            if not fl.abandoned:
                return self._out(fl.outcome())

    async def _lead_async(self, s: int, key: Any, fl: _Flight, loader: Callable[[Any], Any],
                          ttl: Optional[float], refresh: bool) -> Any:
        try:
            value = loader(key)
            if hasattr(type(value), "__await__"):
                value = await value
        except Exception as exc:
            if not self._finish(s, key, fl, exc=exc, refresh=refresh):
                raise
            return fl.value
        except BaseException:  # cancelled: hand the load over to a waiter
            self._finish(s, key, fl, abandoned=True, refresh=refresh)
            raise
        self._finish(s, key, fl, value=value, ttl=ttl, refresh=refresh)
        return value

    def _refresh_async(self, key: Any, loader: Callable[[Any], Any],
                       ttl: Optional[float]) -> Any:
        """Start the background refresh of a hot key; the stored value now, or ``MISS``
        if it expired or was deleted since the lookup (the caller then loads it)."""
        import asyncio
        s = self._core.shard_of(key)
        with self._locks[s]:
            now = self._clock()
            old = self._core.peek(key, now)
            if old is self._MISS or key in self._flights[s]:
                self._core.end_refresh(key, now)
                return old
            fl = self._flights[s][key] = _Flight()
            self._loads += 1
            self._refreshes += 1
        coro = self._refresh_task(s, key, fl, loader, ttl)
        try:
            fl.task = task = asyncio.get_running_loop().create_task(coro)
        except BaseException:
            coro.close()
            self._finish(s, key, fl, abandoned=True, refresh=True)
            raise
        self._tasks.add(task)
        # a task cancelled before it ever ran never enters _lead_async: end its flight here
        task.add_done_callback(lambda t: self._task_done(t, s, key, fl))
        return old

    def _task_done(self, task: "asyncio.Task[Any]", s: int, key: Any, fl: _Flight) -> None:
        self._tasks.discard(task)
        if not fl.done:
            self._finish(s, key, fl, abandoned=True, refresh=True)

    async def _refresh_task(self, s: int, key: Any, fl: _Flight, loader: Callable[[Any], Any],
                            ttl: Optional[float]) -> None:
        try:
            await self._lead_async(s, key, fl, loader, ttl, refresh=True)
        except Exception:
            logger().warning("hot-key refresh of %r failed; keeping the current value", key,
                        exc_info=True)

    # -- decorator ----------------------------------------------------------------------
    @overload
    def cached(self, func: Callable[P, Coroutine[Any, Any, R]], /
               ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def cached(self, func: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def cached(self, func: None = None, /, *, key: Optional[Callable[..., Hashable]] = None,
               ttl: Optional[float] = None) -> CachedDecorator: ...

    def cached(self, func: Optional[Callable[..., Any]] = None, /, *,
               key: Optional[Callable[..., Hashable]] = None,
               ttl: Optional[float] = None) -> Any:
        """Memoise a sync or async function in this cache, with singleflight and
        refresh-ahead; the wrapper keeps the signature (for type checkers too) and has
        ``__wrapped__`` and ``cache``. ``key(*args, **kwargs)`` makes the cache key
        (default: the single str/int argument, else the arguments as a tuple). Usable bare
        (``@cache.cached``) or called (``@cache.cached(key=..., ttl=...)``). Share a cache
        between functions only with keys that cannot collide.

        An async hit is looked up when the function is called and answered by an awaitable
        that is already done (no coroutine is made); a miss awaits the load."""
        if key is not None and not callable(key):
            raise ConfigurationError(f"key must be callable or None, got {key!r}")
        if ttl is not None:
            ttl = _check_ttl(ttl)

        def decorate(fn: Callable[..., Any]) -> Any:
            import inspect
            if not callable(fn):
                raise TypeError(f"cached() decorates a function, got {fn!r}")
            MISS = self._MISS
            if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                    getattr(fn, "__call__", None)):
                async def aslow(k: Any, v: Any, args: tuple[Any, ...],
                                kwargs: dict[str, Any]) -> Any:
                    loader = lambda _k: fn(*args, **kwargs)  # noqa: E731
                    if v is not MISS:  # REFRESH
                        v = self._refresh_async(k, loader, ttl)
                        if v is not MISS:
                            return self._out(v)
                    return await self._load_async(k, loader, ttl)
                wrapper = self._callmod.AsyncCachedCall(
                    fn, self._core, key, _make_key, aslow, self._out(ABSENT))
                _look_like_coroutine_function(wrapper, fn)
            else:
                def slow(k: Any, v: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                    loader = lambda _k: fn(*args, **kwargs)  # noqa: E731
                    if v is MISS:
                        return self._load(k, loader, ttl)
                    return self._refresh(k, loader, ttl)
                # the hit path (key, lookup, expiry) runs in the kernel's CachedCall
                wrapper = self._kmod.CachedCall(
                    fn, self._core, key, _make_key, slow, self._out(ABSENT))
                functools.update_wrapper(wrapper, fn)
            wrapper.cache = self
            return wrapper

        if func is not None:
            return decorate(func)
        return decorate

    # -- introspection ------------------------------------------------------------------
    def hot_keys(self, n: int = 10) -> List[Tuple[Any, float]]:
        """The ``n`` most read keys lately with estimated reads per second, hottest first
        (HeavyKeeper sketch; at most ``hot_capacity`` keys are tracked)."""
        n = check_int("n", n, 0)
        return [(k, float(r)) for k, r in self._core.hot_keys(n, self._clock())]

    def stats(self) -> Dict[str, Any]:
        """Counters since creation: reads by answer, each counted once, ``hits`` (a fresh
        value), ``stale_served`` (an expired value answered without a load after its load
        failed: ``stale_if_error``) and ``misses`` (the rest), ``loads`` (loader calls,
        refreshes included), ``load_successes`` and ``load_failures`` (finished loads: a
        loader that raised or whose result could not be stored failed; a cancelled one is
        neither), ``coalesced`` (callers that waited for another's load),
        ``duplicate_loads`` (of the loads, those run beside a load that the caller, on the
        event loop's thread, could not wait for), ``refreshes``, ``refresh_failures``,
        ``evictions`` (capacity), ``rejected`` (of those, new keys refused by admission),
        ``expirations``, ``size``, ``maxsize``, ``hot_keys`` (top 10). Read counters are
        exact in the compiled build; in the pure build they are kept under the kernel's
        lock too."""
        hits, misses, evictions, rejected, expirations, stale = self._core.counters()
        return {"name": self.name, "hits": hits, "misses": misses, "stale_served": stale,
                "loads": self._loads,
                "load_successes": self._load_successes, "load_failures": self._load_failures,
                "coalesced": self._coalesced, "duplicate_loads": self._duplicates,
                "refreshes": self._refreshes, "refresh_failures": self._refresh_failures,
                "evictions": evictions, "rejected": rejected, "expirations": expirations,
                "size": len(self._core), "maxsize": self.maxsize,
                "hot_keys": self.hot_keys(10)}

    def __repr__(self) -> str:
        return (f"<HotKeyCache {self.name!r} size={len(self._core)}/{self.maxsize} "
                f"ttl={self.ttl!r}>")


def _log_stale(key: Any, exc: Optional[BaseException]) -> None:
    logger().warning("loading %r failed; serving its stale value (stale_if_error)", key,
                     exc_info=exc)


def _look_like_coroutine_function(wrapper: Any, fn: Callable[..., Any]) -> None:
    """``functools.update_wrapper``, plus ``fn``'s code object and defaults, so that
    ``inspect.iscoroutinefunction(wrapper)`` stays true (frameworks dispatch on it)."""
    functools.update_wrapper(wrapper, fn)
    code = getattr(fn, "__code__", None)
    if code is not None:
        wrapper.__code__ = code
        wrapper.__defaults__ = getattr(fn, "__defaults__", None)
        wrapper.__kwdefaults__ = getattr(fn, "__kwdefaults__", None)
