"""The hot-key cache's entry store and eviction policy (pure twin of ``_fast/cachetable.pyx``).

:class:`CacheTable` holds ``shards`` dicts of :class:`Entry`, bounded at ``maxsize`` in all,
and decides admission and eviction the TinyLFU way, over key slots:

* A new key always enters its shard's **window**, a small FIFO (1 % of the shard, >= 1),
  so ``set(k, v); get(k)`` finds it and a burst of new keys gets a chance (W-TinyLFU).
* A key leaving the window is the **candidate** for the main region. If the main region is
  full, a **victim** is sampled (5 random main slots: an expired one if any, else the one
  the frequency sketch counts least, as ristretto does) and the candidate replaces it only
  if the sketch counts the candidate more often (Caffeine's admission, including its
  1/128 random admission of warm candidates against hash flooding). Otherwise the
  candidate is dropped. Scans and one-hit wonders therefore never push out hot keys.
* Reads touch no list: a hit is a dict lookup, an expiry check and sketch updates
  (:class:`~gameguard._pure.sketch.FrequencySketch` for admission,
  :class:`~gameguard._pure.sketch.HeavyHitters` for hot keys and their rates). That keeps
  the hit path free of shard locks; only writes (``put``/``delete``) are serialised by
  the public layer's per-shard lock.

An entry is fresh while ``now < expires_at``. Expired entries are not removed by reads
(that would be a write); they are the first to go when their shard needs room, are
overwritten by the next ``put`` and dropped by ``expire``. The kernel never reads the
clock except in ``get``/``lookup`` (the hit path: ``clock=None`` means the monotonic clock).
"""
from __future__ import annotations

import threading
import time
import types
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .kernel import SplitMix64
from .sketch import FrequencySketch, HeavyHitters, key_hash

__all__ = ["CacheTable", "CachedCall", "Entry", "MISS", "REFRESH", "SAMPLES",
           "ADMIT_HASHDOS_THRESHOLD",
           "MIN_SHARD"]

MIN_SHARD = 32               #: fewest entries a shard is sized for
SAMPLES = 5                  #: main slots sampled per eviction (ristretto's sample size)
ADMIT_HASHDOS_THRESHOLD = 6  #: Caffeine: a candidate this warm is admitted 1 time in 128
MASK64 = (1 << 64) - 1


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``lookup``/``probe``/``peek`` result: no fresh entry
MISS: Any = _Marker("MISS")
#: ``lookup``/``probe`` result: a fresh entry of a hot key is due for refresh and this caller
#: was chosen to refresh it (the value is still valid: read it with ``peek``)
REFRESH: Any = _Marker("REFRESH")


class Entry:
    """One cached value. ``slot`` is its index in the shard's main region, -1 in the window,
    -2 once removed."""

    __slots__ = ("key", "value", "h", "expires_at", "refresh_at", "slot", "refreshing")

    def __init__(self, key: Any, value: Any, h: int, expires_at: float,
                 refresh_at: float) -> None:
        self.key = key
        self.value = value
        self.h = h
        self.expires_at = expires_at
        self.refresh_at = refresh_at
        self.slot = -1
        self.refreshing = False


class CacheTable:
    """Sharded entry store with TinyLFU admission, sampled eviction and a hot-key sketch.

    ``maxsize`` entries at most in all, over ``min(shards, maxsize // MIN_SHARD)`` shards
    (at least one); shard ``s`` holds ``maxsize // n`` plus one for the first
    ``maxsize % n`` shards. ``absent`` is the stored value meaning
    "negatively cached": ``get`` returns its default for it. ``hot_rate`` (reads/s) is the
    estimated rate from which a key due for refresh is refreshed ahead of expiry.
    """

    def __init__(self, maxsize: int, shards: int, seed: int,
                 clock: Optional[Callable[[], float]] = None, *, hot_capacity: int = 64,
                 hot_width: int = 1024, hot_half_life: float = 2.0, hot_rate: float = 1.0,
                 window: float = 0.01, absent: Any = None) -> None:
        self.maxsize = int(maxsize)
        # shards is an upper bound: each shard holds >= MIN_SHARD entries, so a small cache
        # is not cut into slivers that evict while the cache as a whole has room
        self.nshards = max(1, min(int(shards), self.maxsize // MIN_SHARD))
        self.seed = int(seed) & MASK64
        self.clock = clock if clock is not None else time.monotonic
        self.hot_rate = float(hot_rate)
        self.absent = absent
        n = self.nshards
        base, extra = divmod(self.maxsize, n)
        self.cap = [base + (1 if s < extra else 0) for s in range(n)]
        self.wcap = [max(1, int(c * window)) for c in self.cap]
        self.mcap = [c - w for c, w in zip(self.cap, self.wcap)]
        self.dicts: List[Dict[Any, Entry]] = [{} for _ in range(n)]
        self.windows: List[Deque[Entry]] = [deque() for _ in range(n)]
        self.mains: List[List[Entry]] = [[] for _ in range(n)]
        self.sketch = FrequencySketch(self.maxsize)
        self.hh = HeavyHitters(hot_capacity, hot_width, hot_half_life,
                               (self.seed ^ 0x5DEECE66D) & MASK64)
        self.rng = SplitMix64((self.seed * 0x2545F4914F6CDD1D + 1) & MASK64)
        self.hits = 0
        self.misses = 0
        self.evictions = 0   # capacity evictions (the victim or the rejected candidate)
        self.rejected = 0    # of which: the candidate lost admission
        self.expirations = 0  # expired entries dropped to make room or by expire()
        # pure Python may switch threads between bytecodes: one lock for the sketches'
        # multi-step updates and the policy lists (the compiled twin needs none)
        self._lock = threading.Lock()
        self.sketch._lock = self.hh._lock = self._lock

    # -- hashing ------------------------------------------------------------------------
    def hash(self, key: Any) -> int:
        """The seeded 64-bit hash used for the shard and the sketches (TypeError if
        ``key`` is unhashable)."""
        return key_hash(key, self.seed)

    def shard_of(self, key: Any) -> int:
        return key_hash(key, self.seed) % self.nshards

    # -- the read path (no shard lock) --------------------------------------------------
    def get(self, key: Any, default: Any = None) -> Any:
        """The fresh value of ``key`` or ``default``; counts a hit or miss and the read."""
        return self.get_at(key, default, self.clock())

    def get_at(self, key: Any, default: Any, now: float) -> Any:
        h = key_hash(key, self.seed)
        e = self.dicts[h % self.nshards].get(key)
        with self._lock:
            self.sketch._increment(h)
            self.hh._add(h, key, now)
            if e is None or now >= e.expires_at:
                self.misses += 1
                return default
            self.hits += 1
        v = e.value
        return default if v is self.absent else v

    def lookup(self, key: Any) -> Any:
        """``probe`` at the kernel's clock."""
        return self.probe(key, self.clock())

    def probe(self, key: Any, now: float) -> Any:
        """Like ``get``, for loading callers: the stored value (``absent`` included),
        ``MISS``, or ``REFRESH`` when the entry is fresh but past its refresh point, its key
        is hot and nobody refreshes it yet (this caller now owns the refresh)."""
        h = key_hash(key, self.seed)
        e = self.dicts[h % self.nshards].get(key)
        with self._lock:
            self.sketch._increment(h)
            self.hh._add(h, key, now)
            if e is None or now >= e.expires_at:
                self.misses += 1
                return MISS
            self.hits += 1
            if now >= e.refresh_at and not e.refreshing and \
                    self.hh._is_hot(h, now, self.hot_rate):
                e.refreshing = True
                return REFRESH
        return e.value

    def peek(self, key: Any, now: float) -> Any:
        """The stored value if fresh, else ``MISS``; counts nothing."""
        e = self.dicts[key_hash(key, self.seed) % self.nshards].get(key)
        if e is None or now >= e.expires_at:
            return MISS
        return e.value

    def contains(self, key: Any, now: float) -> bool:
        """A fresh, positive entry is held for ``key``."""
        e = self.dicts[key_hash(key, self.seed) % self.nshards].get(key)
        return e is not None and now < e.expires_at and e.value is not self.absent

    def expires_at(self, key: Any) -> Optional[float]:
        """The entry's expiry time (None if none is held), for tests and introspection."""
        e = self.dicts[key_hash(key, self.seed) % self.nshards].get(key)
        return None if e is None else e.expires_at

    # -- writes (the public layer holds the shard's lock) -------------------------------
    def put(self, key: Any, value: Any, expires_at: float, refresh_at: float,
            now: float) -> bool:
        """Store ``value`` for ``key``. A present key is updated in place; a new one enters
        its shard's window, whose overflow goes through admission. Returns True (the new
        entry is always held until it leaves the window)."""
        h = key_hash(key, self.seed)
        s = h % self.nshards
        with self._lock:
            d = self.dicts[s]
            e = d.get(key)
            if e is not None:
                e.value = value
                e.expires_at = expires_at
                e.refresh_at = refresh_at
                e.refreshing = False
                return True
            e = Entry(key, value, h, expires_at, refresh_at)
            d[key] = e
            w = self.windows[s]
            w.append(e)
            while len(w) > self.wcap[s]:
                self._promote(s, w.popleft(), now)
            return True

    def _promote(self, s: int, cand: Entry, now: float) -> None:
        main = self.mains[s]
        if now >= cand.expires_at:
            self._drop(s, cand)
            self.expirations += 1
            return
        if len(main) < self.mcap[s]:
            cand.slot = len(main)
            main.append(cand)
            return
        if not main:  # a shard of one entry: no main region
            self._drop(s, cand)
            self.evictions += 1
            self.rejected += 1
            return
        victim = main[0]
        vf = 0
        expired = False
        for _ in range(SAMPLES):
            c = main[int(self.rng.next_float() * len(main))]
            if now >= c.expires_at:
                victim = c
                expired = True
                break
            f = self.sketch.frequency(c.h)
            if _ == 0 or f < vf:
                victim = c
                vf = f
        if not expired:
            cf = self.sketch.frequency(cand.h)
            if not (cf > vf or (cf >= ADMIT_HASHDOS_THRESHOLD
                                and self.rng.next_float() < 1.0 / 128.0)):
                self._drop(s, cand)
                self.evictions += 1
                self.rejected += 1
                return
            self.evictions += 1
        else:
            self.expirations += 1
        slot = victim.slot
        del self.dicts[s][victim.key]
        victim.slot = -2
        main[slot] = cand
        cand.slot = slot

    def _drop(self, s: int, e: Entry) -> None:
        del self.dicts[s][e.key]
        e.slot = -2

    def delete(self, key: Any) -> bool:
        """Remove ``key``; True if it was held (fresh or not)."""
        h = key_hash(key, self.seed)
        s = h % self.nshards
        with self._lock:
            e = self.dicts[s].pop(key, None)
            if e is None:
                return False
            self._unlink(s, e)
            return True

    def _unlink(self, s: int, e: Entry) -> None:
        if e.slot == -1:
            self.windows[s].remove(e)
        elif e.slot >= 0:
            main = self.mains[s]
            last = main.pop()
            if last is not e:
                main[e.slot] = last
                last.slot = e.slot
        e.slot = -2

    def end_refresh(self, key: Any, now: float) -> None:
        """A refresh failed or was abandoned: let the next hot read retry, halfway between
        ``now`` and the entry's expiry."""
        e = self.dicts[key_hash(key, self.seed) % self.nshards].get(key)
        if e is not None:
            with self._lock:
                e.refreshing = False
                e.refresh_at = now + 0.5 * (e.expires_at - now)

    def expire(self, now: float) -> int:
        """Drop every expired entry. O(n); returns how many."""
        dropped = 0
        with self._lock:
            for s in range(self.nshards):
                for e in [e for e in self.dicts[s].values() if now >= e.expires_at]:
                    del self.dicts[s][e.key]
                    self._unlink(s, e)
                    dropped += 1
            self.expirations += dropped
        return dropped

    def clear(self) -> None:
        with self._lock:
            for s in range(self.nshards):
                for e in self.dicts[s].values():
                    e.slot = -2
                self.dicts[s].clear()
                self.windows[s].clear()
                self.mains[s].clear()

    def __len__(self) -> int:
        return sum(len(d) for d in self.dicts)

    # -- hot keys -----------------------------------------------------------------------
    def hot_keys(self, n: int, now: float) -> List[Tuple[Any, float]]:
        """The ``n`` most read keys lately, with estimated reads per second."""
        return self.hh.top(n, now)

    def frequency(self, key: Any) -> int:
        """The admission sketch's count for ``key`` (0..15)."""
        return self.sketch.frequency(key_hash(key, self.seed))

    def counters(self) -> Tuple[int, int, int, int, int]:
        return self.hits, self.misses, self.evictions, self.rejected, self.expirations

    def state(self) -> tuple[Any, ...]:
        """Everything that decides future answers (for the twins' equivalence tests)."""
        shards = []
        for s in range(self.nshards):
            shards.append((
                sorted((repr(k), e.value, e.expires_at, e.refresh_at, e.slot, e.refreshing)
                       for k, e in self.dicts[s].items()),
                [e.key for e in self.windows[s]], [e.key for e in self.mains[s]]))
        return (shards, self.counters(), self.rng.state, self.sketch.state(),
                self.hh.state())


class CachedCall:
    """A memoised sync function: a hit returns straight from the table; a miss or a due
    refresh goes to ``slow(key, marker, args, kwargs)`` (the public layer's singleflight).
    ``keyfunc=None`` keys by the single str/int argument itself, else by the positional
    arguments as a tuple; keyword arguments go through ``make_key(args, kwargs)``."""

    def __init__(self, func: Callable[..., Any], table: CacheTable,
                 keyfunc: Optional[Callable[..., Any]],
                 make_key: Callable[[tuple[Any, ...], dict[str, Any]], Any],
                 slow: Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any],
                 absent_out: Any) -> None:
        self.func = func
        self.table = table
        self.keyfunc = keyfunc
        self.make_key = make_key
        self.slow = slow
        self.absent_out = absent_out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.keyfunc is not None:
            key = self.keyfunc(*args, **kwargs)
        elif kwargs:
            key = self.make_key(args, kwargs)
        elif len(args) == 1 and (type(args[0]) is str or type(args[0]) is int):
            key = args[0]
        else:
            key = args
        v = self.table.lookup(key)
        if v is MISS or v is REFRESH:
            return self.slow(key, v, args, kwargs)
        if v is self.table.absent:
            return self.absent_out
        return v

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self) -> str:
        return f"<cached {self.func!r}>"
