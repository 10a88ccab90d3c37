"""The hot-key cache's entry store and eviction policy (pure twin of ``_fast/cachetable.pyx``).

:class:`CacheTable` holds ``maxsize`` entries at most, in shards (a dict and three queues
each), and decides admission and eviction by W-TinyLFU (Einziger, Friedman & Manes, ACM ToS
2017; Caffeine's layout):

* A new key enters its shard's **window** (initially 1 % of the shard), so
  ``set(k, v); get(k)`` finds it and a burst of new keys gets a chance.
* The key leaving the window is the **candidate** for the **main** region, a segmented LRU:
  **probation** (new arrivals) and **protected** (80 % of main: keys read again while on
  probation). When the main region is full the candidate replaces the probation victim
  only if the frequency sketch counts it more often (plus Caffeine's 1/128 random
  admission of warm candidates against hash flooding); otherwise it is dropped. Scans
  and one-hit wonders therefore never push out hot keys.
* The order inside each queue is CLOCK's, not a linked list's: a read only sets the
  entry's ``ref`` bit, and the queues are reordered on the write path, when their heads
  are examined (a referenced window head goes back to the tail, a referenced probation
  head is promoted to protected, a referenced protected head gets a second round). A hit
  is thus a dict lookup, an expiry check, a bit and the sketch updates
  (:class:`~gameguard._pure.sketch.FrequencySketch` for admission,
  :class:`~gameguard._pure.sketch.HeavyHitters` for hot keys), and takes no shard lock.
* The window's share of the cache is **adaptive** (Caffeine's hill climber): every
  ``10 * maxsize`` reads the table compares the sample's hit ratio with the previous one,
  keeps moving the share the same way while it improves and turns back when it drops;
  the step starts at 6.25 % of the cache, decays by 0.98 per sample and restarts after a
  change of 5 points. Unlike Caffeine, a change within half a standard error of noise
  moves nothing. A recency-heavy workload (the hot set moving) gets a large window (up
  to 80 %), a frequency-heavy one stays near 1 %. It runs on the write path only.

Every operation first computes what needs user code (a key's ``__hash__``/``__eq__``),
then mutates: the entry that must leave is chosen without user code, its dict item is
deleted (user code: if that raises, nothing else has changed), then it is unlinked, then
the new key is inserted (user code again: if that raises, the table is consistent with one
free slot). Values and keys that leave are released last, after the structures are
consistent, so a ``__del__`` may re-enter the table.

An entry is fresh while ``now < expires_at`` (a NaN time is never fresh). Expired entries
are not removed by reads (that would be a write); they go when a queue head examined for
room is expired, are overwritten by the next ``put`` and dropped by ``expire``. The kernel
never reads the clock except in ``get``/``lookup`` (``clock=None`` means the monotonic
clock).
"""
from __future__ import annotations

import math
import threading
import time
import types
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .kernel import SplitMix64
from .sketch import FrequencySketch, HeavyHitters, key_hash

__all__ = ["CacheTable", "CachedCall", "Entry", "MISS", "REFRESH",
           "ADMIT_HASHDOS_THRESHOLD", "MIN_SHARD", "GONE", "WINDOW", "PROBATION",
           "PROTECTED"]

MIN_SHARD = 4096             #: fewest entries a shard is sized for (small ones miss more)
ADMIT_HASHDOS_THRESHOLD = 6  #: Caffeine: a candidate this warm is admitted 1 time in 128
PROTECTED_SHARE = 0.8        #: of the main region
CLIMB_STEP = 0.0625          #: the climber's first (and restart) step, share of the cache
CLIMB_DECAY = 0.98           #: the step's decay per sample
CLIMB_RESTART = 0.05         #: a hit-ratio change this large restarts the step
#: a change under this many standard errors of the difference of two samples' hit ratios
#: is noise: the share stays (without it the share random-walks away from 1 % on a
#: stationary Zipf trace, -0.7 points at 1,000 entries)
CLIMB_NOISE = 0.5
MAX_WINDOW = 0.8             #: the window never takes more of the cache than this
MASK64 = (1 << 64) - 1

GONE, WINDOW, PROBATION, PROTECTED = -1, 0, 1, 2   #: ``Entry.region``
EVICTED, REJECTED, EXPIRED = 0, 1, 2               #: why an entry leaves


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
    """One cached value. ``region`` is WINDOW, PROBATION, PROTECTED or GONE (removed: a
    tombstone left in its queue until the queue's head reaches it); ``ref``: read since
    its queue last looked at it. ``refresh_at`` is when the next load is due: for a fresh
    entry the refresh-ahead point; an expired one is past it (``refresh_at <=
    expires_at``) unless ``keep_stale`` set it later, which makes ``probe`` serve it."""

    __slots__ = ("key", "value", "h", "expires_at", "refresh_at", "region", "ref",
                 "refreshing")

    def __init__(self, key: Any, value: Any, h: int, expires_at: float,
                 refresh_at: float) -> None:
        self.key = key
        self.value = value
        self.h = h
        self.expires_at = expires_at
        self.refresh_at = refresh_at
        self.region = GONE
        self.ref = False
        self.refreshing = False


class Shard:
    """One shard: its dict, its three queues and their live sizes and bounds."""

    __slots__ = ("d", "queues", "live", "_cap", "_wcap", "_pcap")

    def __init__(self, cap: int) -> None:
        self.d: Dict[Any, Entry] = {}
        self.queues: Tuple[Deque[Entry], Deque[Entry], Deque[Entry]] = \
            (deque(), deque(), deque())
        self.live = [0, 0, 0]   # live entries per region (the queues also hold tombstones)
        self._cap = cap
        self._wcap = 1
        self._pcap = 0

    # read-only, as in the compiled twin (where they bound C indexing)
    cap = property(lambda self: self._cap)
    wcap = property(lambda self: self._wcap)
    pcap = property(lambda self: self._pcap)

    def resize(self, share: float) -> None:
        w = int(self._cap * share)
        self._wcap = w if w >= 1 else 1
        self._pcap = int(PROTECTED_SHARE * (self._cap - self._wcap))

    def size(self) -> int:
        return self.live[0] + self.live[1] + self.live[2]

    def head(self, region: int) -> Entry:
        """The first live entry of a non-empty region's queue (tombstones dropped)."""
        q = self.queues[region]
        while q[0].region != region:
            q.popleft()
        return q[0]

    def move(self, e: Entry, region: int) -> None:
        """Move ``e`` from its region's queue (normally its head) to ``region``'s tail."""
        q = self.queues[e.region]
        if q[0] is e:
            q.popleft()
        else:  # only if user code re-entered between the choice and the move
            q.remove(e)
        self.live[e.region] -= 1
        e.region = region
        e.ref = False
        self.queues[region].append(e)
        self.live[region] += 1

    def clock_head(self, region: int) -> Entry:
        """CLOCK: the region's head after giving referenced heads a second round."""
        for _ in range(self.live[region]):
            e = self.head(region)
            if not e.ref:
                return e
            self.move(e, region)
        return self.head(region)

    def demote(self) -> None:
        """Protected beyond its share: its CLOCK head goes back to probation."""
        while self.live[PROTECTED] > self._pcap:
            self.move(self.clock_head(PROTECTED), PROBATION)

    def victim(self) -> Entry:
        """The main region's victim: the first unreferenced probation head, promoting the
        referenced ones on the way (the main region is not empty)."""
        self.demote()
        for _ in range(self.live[PROBATION]):
            e = self.head(PROBATION)
            if not e.ref:
                return e
            self.move(e, PROTECTED)
            self.demote()
        if self.live[PROBATION]:
            return self.head(PROBATION)
        return self.head(PROTECTED)

    def requeue(self, e: Entry) -> None:
        """``e`` was chosen to leave but its key could not be deleted: send it to its
        queue's tail so the next choice falls elsewhere."""
        if e.region != GONE:
            self.move(e, e.region)

    def unlink(self, e: Entry) -> None:
        """``e``'s dict item is gone: make it a tombstone (its queue drops it later, and is
        compacted when tombstones outnumber live entries)."""
        region = e.region
        if region == GONE:
            return
        self.live[region] -= 1
        e.region = GONE
        q = self.queues[region]
        if len(q) > 2 * self.live[region] + 16:
            live = [x for x in q if x.region == region]
            q.clear()
            q.extend(live)


def release(gone: List[Entry]) -> None:
    """Let go of removed entries' keys and values (their tombstones stay in the queues for
    a while). Called last, when the structures are consistent: a ``__del__`` may call back
    into the table."""
    for e in gone:
        e.key = e.value = None


class CacheTable:
    """Sharded entry store with W-TinyLFU admission, an adaptive window and a hot-key
    sketch.

    ``maxsize`` entries at most in all, over ``min(shards, maxsize // MIN_SHARD)`` shards
    (at least one); shard ``s`` holds ``maxsize // n`` plus one for the first
    ``maxsize % n`` shards. ``absent`` is the stored value meaning "negatively cached":
    ``get`` returns its default for it. ``hot_rate`` (reads/s) is the estimated rate from
    which a key due for refresh is refreshed ahead of expiry. ``window`` is the window's
    initial share; ``adaptive=False`` keeps it fixed.
    """

    def __init__(self, maxsize: int, shards: int, seed: int,
                 clock: Optional[Callable[[], float]] = None, *, hot_capacity: int = 64,
                 hot_width: int = 1024, hot_half_life: float = 2.0, hot_rate: float = 1.0,
                 window: float = 0.01, adaptive: bool = True, absent: Any = None) -> None:
        self._maxsize = int(maxsize)
        if self._maxsize < 1:  # a shard with no room has nothing to evict
            raise ValueError(f"maxsize must be >= 1, got {maxsize!r}")
        # shards is an upper bound: each shard holds >= MIN_SHARD entries, so its policy
        # sees enough keys to rank them (per-shard queues of a few dozen miss more)
        self._nshards = max(1, min(int(shards), self._maxsize // MIN_SHARD))
        self._seed = int(seed) & MASK64
        self.clock = clock if clock is not None else time.monotonic
        self.hot_rate = float(hot_rate)
        self.absent = absent
        n = self._nshards
        base, extra = divmod(self._maxsize, n)
        self.shards = [Shard(base + (1 if s < extra else 0)) for s in range(n)]
        self.window = min(max(float(window), 0.0), MAX_WINDOW)
        self.adaptive = bool(adaptive)
        self.step = -CLIMB_STEP     # Caffeine starts by trying a smaller window
        self.last_ratio = 0.0
        self.sample_size = 10 * self._maxsize
        self.sample_hits = self.sample_requests = 0   # hits and reads when it started
        for sh in self.shards:
            sh.resize(self.window)
        self.sketch = FrequencySketch(self._maxsize)
        self.hh = HeavyHitters(hot_capacity, hot_width, hot_half_life,
                               (self._seed ^ 0x5DEECE66D) & MASK64)
        self.rng = SplitMix64((self._seed * 0x2545F4914F6CDD1D + 1) & MASK64)
        self.hits = 0
        self.misses = 0
        self.evictions = 0   # capacity evictions (the victim or the rejected candidate)
        self.rejected = 0    # of which: the candidate lost admission
        self.expirations = 0  # expired entries dropped to make room or by expire()
        self.stale = 0       # probes answered with a kept stale value (keep_stale)
        # pure Python may switch threads between bytecodes: one lock for the sketches and
        # the policy (the compiled twin needs none). Re-entrant, and never held across a
        # key's __hash__/__eq__, so user code that calls back into the table cannot
        # deadlock it.
        self._lock = threading.RLock()
        self.sketch._lock = self.hh._lock = self._lock

    # read-only, as in the compiled twin (where they bound C indexing)
    nshards = property(lambda self: self._nshards)
    maxsize = property(lambda self: self._maxsize)
    seed = property(lambda self: self._seed)

    # -- hashing ------------------------------------------------------------------------
    def hash(self, key: Any) -> int:
        """The seeded 64-bit hash used for the shard and the sketches (TypeError if
        ``key`` is unhashable)."""
        return key_hash(key, self._seed)

    def shard_of(self, key: Any) -> int:
        return key_hash(key, self._seed) % self._nshards

    # -- the read path (no shard lock) --------------------------------------------------
    def get(self, key: Any, default: Any = None) -> Any:
        """The fresh value of ``key`` or ``default``; counts a hit or miss and the read."""
        return self.get_at(key, default, self.clock())

    def get_at(self, key: Any, default: Any, now: float) -> Any:
        h = key_hash(key, self._seed)
        e = self.shards[h % self._nshards].d.get(key)
        with self._lock:
            self.sketch._increment(h)
            self.hh._add(h, key, now)
            if e is None or e.region == GONE or not now < e.expires_at:
                self.misses += 1
                return default
            self.hits += 1
            e.ref = True
            v = e.value
        return default if v is self.absent else v

    def lookup(self, key: Any) -> Any:
        """``probe`` at the kernel's clock."""
        return self.probe(key, self.clock())

    def probe(self, key: Any, now: float) -> Any:
        """Like ``get``, for loading callers: the stored value (``absent`` included),
        ``MISS``, or ``REFRESH`` when the entry is fresh but past its refresh point, its key
        is hot and nobody refreshes it yet (this caller now owns the refresh). An expired
        entry kept by ``keep_stale`` answers with its value (counted ``stale``)."""
        h = key_hash(key, self._seed)
        e = self.shards[h % self._nshards].d.get(key)
        with self._lock:
            self.sketch._increment(h)
            self.hh._add(h, key, now)
            if e is None or e.region == GONE or not now < e.expires_at:
                if e is not None and e.region != GONE and now < e.refresh_at:
                    self.stale += 1   # expired, kept by keep_stale after a failed load
                    return e.value
                self.misses += 1
                return MISS
            self.hits += 1
            e.ref = True
            if now >= e.refresh_at and not e.refreshing and \
                    self.hh._is_hot(h, now, self.hot_rate):
                e.refreshing = True
                return REFRESH
            return e.value

    def _entry(self, key: Any) -> Optional[Entry]:
        return self.shards[key_hash(key, self._seed) % self._nshards].d.get(key)

    def peek(self, key: Any, now: float) -> Any:
        """The stored value if fresh, else ``MISS``; counts nothing."""
        e = self._entry(key)
        if e is None or not now < e.expires_at:
            return MISS
        return e.value

    def contains(self, key: Any, now: float) -> bool:
        """A fresh, positive entry is held for ``key``."""
        e = self._entry(key)
        return e is not None and now < e.expires_at and e.value is not self.absent

    def expires_at(self, key: Any) -> Optional[float]:
        """The entry's expiry time (None if none is held), for tests and introspection."""
        e = self._entry(key)
        return None if e is None else e.expires_at

    # -- writes (the public layer holds the shard's lock) -------------------------------
    def put(self, key: Any, value: Any, expires_at: float, refresh_at: float,
            now: float) -> bool:
        """Store ``value`` for ``key``. A present key is updated in place (and counts as
        read); a new one enters its shard's window, whose overflow goes through admission.
        Returns True (the new entry is always held until it leaves the window)."""
        h = key_hash(key, self._seed)
        sh = self.shards[h % self._nshards]
        e = sh.d.get(key)   # user code, before anything changes
        if e is not None:
            with self._lock:
                old = self._update(e, value, expires_at, refresh_at)
            del old   # the old value goes once the entry is consistent (its __del__ may
            return True  # call back into the table)
        gone: List[Entry] = []
        try:
            with self._lock:
                self._climb()
            while True:
                with self._lock:
                    if sh.size() < sh._cap:
                        break
                    loser, cand, why = self._plan(sh, now)
                try:
                    del sh.d[loser.key]   # user code: if it raises, nothing has changed
                except BaseException:
                    with self._lock:  # a key that cannot be deleted must not block the shard
                        sh.requeue(loser)
                    raise
                with self._lock:
                    self._leave(sh, loser, why)
                    if cand is not None:
                        sh.move(cand, PROBATION)
                gone.append(loser)
            e = Entry(key, value, h, expires_at, refresh_at)
            held = sh.d.setdefault(key, e)   # user code: if it raises, a slot stays free
            with self._lock:
                if held is e:
                    sh.queues[WINDOW].append(e)
                    e.region = WINDOW
                    sh.live[WINDOW] += 1
                    return True
                old = self._update(held, value, expires_at, refresh_at)  # stored meanwhile
            del old
            return True
        finally:
            release(gone)

    @staticmethod
    def _update(e: Entry, value: Any, expires_at: float, refresh_at: float) -> Any:
        """Overwrite a held entry (it counts as read); returns the old value for the caller
        to release."""
        old = e.value
        e.expires_at = expires_at
        e.refresh_at = refresh_at
        e.refreshing = False
        e.ref = True
        e.value = value
        return old

    def _plan(self, sh: Shard, now: float) -> Tuple[Entry, Optional[Entry], int]:
        """Room for one more entry in a full shard, decided without user code: the entry
        that must leave (still linked), the window candidate that then moves to probation
        (or None), and why the first leaves."""
        while sh.live[WINDOW] > sh._wcap:  # the window shrank: the main region has room
            sh.move(sh.clock_head(WINDOW), PROBATION)
        if sh.live[WINDOW] < sh._wcap or sh.live[WINDOW] == sh._cap:
            # the window grew (the main region gives an entry up) or is all there is
            loser = sh.victim() if sh.live[WINDOW] < sh._wcap else sh.clock_head(WINDOW)
            return loser, None, EXPIRED if not now < loser.expires_at else EVICTED
        cand = sh.clock_head(WINDOW)
        if not now < cand.expires_at:
            return cand, None, EXPIRED
        victim = sh.victim()
        if not now < victim.expires_at:
            return victim, cand, EXPIRED
        cf = self.sketch.frequency(cand.h)
        if cf > self.sketch.frequency(victim.h) or \
                (cf >= ADMIT_HASHDOS_THRESHOLD and self.rng.next_float() < 1.0 / 128.0):
            return victim, cand, EVICTED
        return cand, None, REJECTED

    def _leave(self, sh: Shard, e: Entry, why: int) -> None:
        """``e``'s dict item is deleted: unlink it and count why."""
        sh.unlink(e)
        if why == EXPIRED:
            self.expirations += 1
        else:
            self.evictions += 1
            if why == REJECTED:
                self.rejected += 1

    def _climb(self) -> None:
        """Hill climbing on the window's share, once per sample of ``10 * maxsize`` reads
        (Caffeine's ``BoundedLocalCache.climb``)."""
        requests = self.hits + self.misses - self.sample_requests
        if not self.adaptive or requests < self.sample_size:
            return
        ratio = (self.hits - self.sample_hits) / requests
        change = ratio - self.last_ratio
        self.last_ratio = ratio
        self.sample_hits, self.sample_requests = self.hits, self.hits + self.misses
        if abs(change) < CLIMB_NOISE * math.sqrt(2.0 * ratio * (1.0 - ratio) / requests):
            self.step *= CLIMB_DECAY   # within sampling noise: no evidence, stay
            return
        amount = self.step if change >= 0.0 else -self.step
        if abs(change) >= CLIMB_RESTART:
            self.step = CLIMB_STEP if amount >= 0.0 else -CLIMB_STEP
        else:
            self.step = CLIMB_DECAY * amount
        window = min(max(self.window + amount, 0.0), MAX_WINDOW)
        if window != self.window:
            self.window = window
            for sh in self.shards:
                sh.resize(window)

    def delete(self, key: Any) -> bool:
        """Remove ``key``; True if it was held (fresh or not)."""
        h = key_hash(key, self._seed)
        sh = self.shards[h % self._nshards]
        e = sh.d.pop(key, None)   # user code: if it raises, nothing has changed
        if e is None:
            return False
        with self._lock:
            sh.unlink(e)
        release([e])
        return True

    def end_refresh(self, key: Any, now: float) -> None:
        """A refresh failed or was abandoned: let the next hot read retry, halfway between
        ``now`` and the entry's expiry."""
        e = self._entry(key)
        if e is not None:
            with self._lock:
                e.refreshing = False
                e.refresh_at = now + 0.5 * (e.expires_at - now)

    def stale_value(self, key: Any, now: float) -> Any:
        """The value of an expired entry kept by ``keep_stale`` while its retry is not due
        (``now < refresh_at``), else ``MISS``; counts nothing."""
        e = self._entry(key)
        if e is None or now < e.expires_at or not now < e.refresh_at:
            return MISS
        return e.value

    def keep_stale(self, key: Any, now: float, window: float, retry: float) -> Any:
        """A load of ``key`` failed: if its entry expired less than ``window`` ago, keep
        serving it (``probe`` returns its value) until ``now + retry``, at most until
        ``window`` past its expiry, and return its value; else ``MISS``. Expired, it is
        still the first to go when its shard needs room."""
        e = self._entry(key)
        if e is None or now < e.expires_at or not now - window < e.expires_at:
            return MISS
        until = e.expires_at + window
        with self._lock:
            e.refresh_at = now + retry if now + retry < until else until
        return e.value

    def expire(self, now: float) -> int:
        """Drop every expired entry. O(n); returns how many."""
        gone: List[Entry] = []
        try:
            for sh in self.shards:
                for e in [e for e in sh.d.values() if not now < e.expires_at]:
                    del sh.d[e.key]   # user code: if it raises, the others stay counted
                    with self._lock:
                        sh.unlink(e)
                    gone.append(e)
        finally:
            with self._lock:
                self.expirations += len(gone)
            release(gone)
        return len(gone)

    def clear(self) -> None:
        old = []   # released on return, once every shard is empty
        with self._lock:
            for sh in self.shards:
                old.append((sh.d, sh.queues))
                for e in sh.d.values():
                    e.region = GONE
                sh.d = {}
                sh.queues = (deque(), deque(), deque())
                sh.live = [0, 0, 0]

    def __len__(self) -> int:
        return sum(len(sh.d) for sh in self.shards)

    # -- hot keys -----------------------------------------------------------------------
    def hot_keys(self, n: int, now: float) -> List[Tuple[Any, float]]:
        """The ``n`` most read keys lately, with estimated reads per second."""
        return self.hh.top(n, now)

    def frequency(self, key: Any) -> int:
        """The admission sketch's count for ``key`` (0..15)."""
        return self.sketch.frequency(key_hash(key, self._seed))

    def counters(self) -> Tuple[int, int, int, int, int, int]:
        return (self.hits, self.misses, self.evictions, self.rejected, self.expirations,
                self.stale)

    def check(self) -> None:
        """Assert the structures agree (for tests): every dict entry is live in exactly one
        queue of its region, the live counts are right and the shard is within bounds."""
        for sh in self.shards:   # no user code: identities only
            linked = set()
            for region, q in enumerate(sh.queues):
                live = [id(e) for e in q if e.region == region]
                assert len(live) == sh.live[region] == len(set(live))
                linked.update(live)
            assert all(e.key is k for k, e in sh.d.items())
            assert linked == {id(e) for e in sh.d.values()} and len(sh.d) <= sh._cap

    def state(self) -> tuple[Any, ...]:
        """Everything that decides future answers (for the twins' equivalence tests)."""
        shards = []
        for sh in self.shards:
            shards.append((
                sorted((repr(k), e.value, e.expires_at, e.refresh_at, e.region, e.ref,
                        e.refreshing) for k, e in sh.d.items()),
                [[e.key for e in q if e.region == r] for r, q in enumerate(sh.queues)],
                sh._wcap, sh._pcap))
        return (shards, self.counters(), self.window, self.step, self.last_ratio,
                self.rng.state, self.sketch.state(), self.hh.state())


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
        self._table = table
        self._keyfunc = keyfunc
        self._make_key = make_key
        self._slow = slow
        self._absent_out = absent_out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._keyfunc is not None:
            key = self._keyfunc(*args, **kwargs)
        elif kwargs:
            key = self._make_key(args, kwargs)
        elif len(args) == 1 and (type(args[0]) is str or type(args[0]) is int):
            key = args[0]
        else:
            key = args
        v = self._table.lookup(key)
        if v is MISS or v is REFRESH:
            return self._slow(key, v, args, kwargs)
        if v is self._table.absent:
            return self._absent_out
        return v

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self) -> str:
        return f"<cached {self.func!r}>"
