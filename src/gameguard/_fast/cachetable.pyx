# cython: language_level=3
"""The hot-key cache's entry store and eviction policy (compiled twin of
``gameguard._pure.cachetable``; see it for the design).

``get`` is the whole hit path in C: read CLOCK_MONOTONIC (default clock), hash the key,
look it up in its shard's dict, check expiry, bump the admission sketch and the heavy-hitter
sketch. No Python-level call happens after the key's own ``__hash__``/``__eq__``, so a read
is atomic under the GIL and needs no lock.
"""
import time
from collections import deque

from libc.stdint cimport uint64_t
import functools
import types

from posix.time cimport clock_gettime, clock_getres, timespec, CLOCK_MONOTONIC
from cpython.object cimport PyObject_Hash
from cpython.dict cimport PyDict_GetItemWithError
from cpython.ref cimport PyObject

from gameguard._fast.kernel cimport SplitMix64
from gameguard._fast.sketch cimport FrequencySketch, HeavyHitters, mix64, key_fingerprint

__all__ = ["CacheTable", "CachedCall", "Entry", "MISS", "REFRESH", "SAMPLES", "ADMIT_HASHDOS_THRESHOLD",
           "MIN_SHARD"]

cdef enum:
    MIN_SHARD_ = 32
    SAMPLES_ = 5
    ADMIT_HASHDOS_THRESHOLD_ = 6

SAMPLES = SAMPLES_
MIN_SHARD = MIN_SHARD_
ADMIT_HASHDOS_THRESHOLD = ADMIT_HASHDOS_THRESHOLD_


cdef extern from "<time.h>":
    enum: CLOCK_MONOTONIC_COARSE


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline double _coarse() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef double _coarse_margin():
    """How far CLOCK_MONOTONIC may run ahead of CLOCK_MONOTONIC_COARSE: four ticks of the
    coarse clock (it lags by at most one). -1 when the coarse clock is unusable."""
    cdef timespec ts
    if clock_getres(CLOCK_MONOTONIC_COARSE, &ts) != 0:
        return -1.0
    res = <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
    if not 0.0 < res <= 0.01:
        return -1.0
    return 4.0 * res


cdef double COARSE_MARGIN = _coarse_margin()


cdef class _Marker:
    cdef str name

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


MISS = _Marker("MISS")
REFRESH = _Marker("REFRESH")
cdef object MISS_ = MISS
cdef object REFRESH_ = REFRESH


cdef class Entry:
    """One cached value. ``slot`` is its index in the shard's main region, -1 in the window,
    -2 once removed."""
    cdef public object key, value
    cdef public uint64_t h
    cdef public double expires_at, refresh_at
    cdef public long long slot
    cdef public bint refreshing

    def __init__(self, key, value, uint64_t h, double expires_at, double refresh_at):
        self.key = key
        self.value = value
        self.h = h
        self.expires_at = expires_at
        self.refresh_at = refresh_at
        self.slot = -1
        self.refreshing = False


cdef class CacheTable:
    """Sharded entry store with TinyLFU admission, sampled eviction and a hot-key sketch."""

    cdef public long long maxsize
    cdef public uint64_t nshards, seed
    cdef public object clock          # None: CLOCK_MONOTONIC read in C
    cdef public double hot_rate
    cdef public object absent
    cdef public list cap, wcap, mcap, dicts, windows, mains
    cdef public FrequencySketch sketch
    cdef public HeavyHitters hh
    cdef public SplitMix64 rng
    cdef public long long hits, misses, evictions, rejected, expirations

    def __init__(self, maxsize, shards, seed, clock=None, *, hot_capacity=64,
                 hot_width=1024, hot_half_life=2.0, hot_rate=1.0, window=0.01, absent=None):
        cdef long long n, base, extra, s
        self.maxsize = int(maxsize)
        n = max(1, min(int(shards), self.maxsize // MIN_SHARD_))  # see the pure twin
        self.nshards = n
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.clock = None if clock is None or clock is time.monotonic else clock
        self.hot_rate = float(hot_rate)
        self.absent = absent
        base, extra = divmod(self.maxsize, n)
        self.cap = [base + (1 if s < extra else 0) for s in range(n)]
        self.wcap = [max(1, int(c * window)) for c in self.cap]
        self.mcap = [c - w for c, w in zip(self.cap, self.wcap)]
        self.dicts = [{} for s in range(n)]
        self.windows = [deque() for s in range(n)]
        self.mains = [[] for s in range(n)]
        self.sketch = FrequencySketch(self.maxsize)
        self.hh = HeavyHitters(hot_capacity, hot_width, hot_half_life,
                               (self.seed ^ 0x5DEECE66D) & 0xFFFFFFFFFFFFFFFF)
        self.rng = SplitMix64((int(self.seed) * 0x2545F4914F6CDD1D + 1) & 0xFFFFFFFFFFFFFFFF)

    # -- hashing ------------------------------------------------------------------------
    cdef inline uint64_t _hash(self, object key) except? 0:
        return key_fingerprint(key, self.seed)

    def hash(self, key):
        """The seeded 64-bit hash used for the shard and the sketches."""
        return self._hash(key)

    def shard_of(self, key):
        return self._hash(key) % self.nshards

    cdef inline Entry _find(self, object key, uint64_t h):
        cdef dict d = <dict>self.dicts[h % self.nshards]
        cdef PyObject *p = PyDict_GetItemWithError(d, key)
        if p == NULL:
            return None
        return <Entry>p

    # -- the read path (no lock) --------------------------------------------------------
    def get(self, key, default=None):
        """The fresh value of ``key`` or ``default``; counts a hit or miss and the read."""
        if self.clock is not None:
            return self._get(key, default, <double>self.clock())
        cdef uint64_t h = self._hash(key)
        cdef Entry e = self._find(key, h)
        cdef double now = self._now_for(e)
        self.sketch.increment_c(h)
        self.hh.add_c(h, key, now)
        if e is None or now >= e.expires_at:
            self.misses += 1
            return default
        self.hits += 1
        v = e.value
        return default if v is self.absent else v

    cdef inline double _now_for(self, Entry e) noexcept:
        """The default clock, as cheaply as exactness allows: CLOCK_MONOTONIC_COARSE (5 ns,
        lags by at most a tick) decides when the entry is far from its refresh point and
        expiry; near them, CLOCK_MONOTONIC (25 ns) does. Rates see the coarse time."""
        cdef double now
        if COARSE_MARGIN < 0.0:
            return _monotonic()
        now = _coarse()
        if e is not None and (now + COARSE_MARGIN >= e.refresh_at
                              or now + COARSE_MARGIN >= e.expires_at):
            return _monotonic()
        return now

    def get_at(self, key, default, double now):
        return self._get(key, default, now)

    cdef inline object _get(self, object key, object default, double now):
        cdef uint64_t h = self._hash(key)
        cdef Entry e = self._find(key, h)
        self.sketch.increment_c(h)
        self.hh.add_c(h, key, now)
        if e is None or now >= e.expires_at:
            self.misses += 1
            return default
        self.hits += 1
        v = e.value
        return default if v is self.absent else v

    def lookup(self, key):
        """``probe`` at the kernel's clock."""
        return self._lookup(key)

    cdef inline object _lookup(self, object key):
        if self.clock is not None:
            return self._probe(key, <double>self.clock())
        cdef uint64_t h = self._hash(key)
        cdef Entry e = self._find(key, h)
        return self._probe_entry(key, h, e, self._now_for(e))

    def probe(self, key, double now):
        """The stored value, ``MISS``, or ``REFRESH`` (see the pure twin)."""
        return self._probe(key, now)

    cdef object _probe(self, object key, double now):
        cdef uint64_t h = self._hash(key)
        return self._probe_entry(key, h, self._find(key, h), now)

    cdef inline object _probe_entry(self, object key, uint64_t h, Entry e, double now):
        self.sketch.increment_c(h)
        self.hh.add_c(h, key, now)
        if e is None or now >= e.expires_at:
            self.misses += 1
            return MISS_
        self.hits += 1
        if now >= e.refresh_at and not e.refreshing and self.hh.is_hot_c(h, now, self.hot_rate):
            e.refreshing = True
            return REFRESH_
        return e.value

    def peek(self, key, double now):
        """The stored value if fresh, else ``MISS``; counts nothing."""
        cdef Entry e = self._find(key, self._hash(key))
        if e is None or now >= e.expires_at:
            return MISS_
        return e.value

    def contains(self, key, double now):
        """A fresh, positive entry is held for ``key``."""
        cdef Entry e = self._find(key, self._hash(key))
        return e is not None and now < e.expires_at and e.value is not self.absent

    def expires_at(self, key):
        """The entry's expiry time (None if none is held), for tests and introspection."""
        cdef Entry e = self._find(key, self._hash(key))
        return None if e is None else e.expires_at

    # -- writes (the public layer holds the shard's lock) -------------------------------
    def put(self, key, value, double expires_at, double refresh_at, double now):
        """Store ``value`` for ``key`` (see the pure twin). Returns True."""
        cdef uint64_t h = self._hash(key)
        cdef long long s = <long long>(h % self.nshards)
        cdef dict d = <dict>self.dicts[s]
        cdef Entry e = self._find(key, h)
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
        while len(w) > <long long>self.wcap[s]:
            self._promote(s, <Entry>w.popleft(), now)
        return True

    cdef int _promote(self, long long s, Entry cand, double now) except -1:
        cdef list main = <list>self.mains[s]
        cdef long long n = len(main), i, vf = 0, f, cf, slot
        cdef Entry victim, c
        cdef bint expired = False
        if now >= cand.expires_at:
            self._drop(s, cand)
            self.expirations += 1
            return 0
        if n < <long long>self.mcap[s]:
            cand.slot = n
            main.append(cand)
            return 0
        if n == 0:
            self._drop(s, cand)
            self.evictions += 1
            self.rejected += 1
            return 0
        victim = <Entry>main[0]
        for i in range(SAMPLES_):
            c = <Entry>main[<long long>(self.rng.next_c() * <double>n)]
            if now >= c.expires_at:
                victim = c
                expired = True
                break
            f = self.sketch.frequency_c(c.h)
            if i == 0 or f < vf:
                victim = c
                vf = f
        if not expired:
            cf = self.sketch.frequency_c(cand.h)
            if not (cf > vf or (cf >= ADMIT_HASHDOS_THRESHOLD_
                                and self.rng.next_c() < 1.0 / 128.0)):
                self._drop(s, cand)
                self.evictions += 1
                self.rejected += 1
                return 0
            self.evictions += 1
        else:
            self.expirations += 1
        slot = victim.slot
        del (<dict>self.dicts[s])[victim.key]
        victim.slot = -2
        main[slot] = cand
        cand.slot = slot
        return 0

    cdef int _drop(self, long long s, Entry e) except -1:
        del (<dict>self.dicts[s])[e.key]
        e.slot = -2
        return 0

    def delete(self, key):
        """Remove ``key``; True if it was held (fresh or not)."""
        cdef uint64_t h = self._hash(key)
        cdef long long s = <long long>(h % self.nshards)
        cdef Entry e = self._find(key, h)
        if e is None:
            return False
        del (<dict>self.dicts[s])[key]
        self._unlink(s, e)
        return True

    cdef int _unlink(self, long long s, Entry e) except -1:
        cdef list main
        cdef Entry last
        if e.slot == -1:
            self.windows[s].remove(e)
        elif e.slot >= 0:
            main = <list>self.mains[s]
            last = <Entry>main.pop()
            if last is not e:
                main[e.slot] = last
                last.slot = e.slot
        e.slot = -2
        return 0

    def end_refresh(self, key, double now):
        """A refresh failed or was abandoned: retry halfway between ``now`` and expiry."""
        cdef Entry e = self._find(key, self._hash(key))
        if e is not None:
            e.refreshing = False
            e.refresh_at = now + 0.5 * (e.expires_at - now)

    def expire(self, double now):
        """Drop every expired entry. O(n); returns how many."""
        cdef long long s, dropped = 0
        cdef Entry e
        for s in range(<long long>self.nshards):
            for e in [e for e in (<dict>self.dicts[s]).values() if now >= e.expires_at]:
                del (<dict>self.dicts[s])[e.key]
                self._unlink(s, e)
                dropped += 1
        self.expirations += dropped
        return dropped

    def clear(self):
        cdef long long s
        cdef Entry e
        for s in range(<long long>self.nshards):
            for e in (<dict>self.dicts[s]).values():
                e.slot = -2
            (<dict>self.dicts[s]).clear()
            self.windows[s].clear()
            (<list>self.mains[s]).clear()

    def __len__(self):
        cdef long long s, n = 0
        for s in range(<long long>self.nshards):
            n += len(<dict>self.dicts[s])
        return n

    # -- hot keys -----------------------------------------------------------------------
    def hot_keys(self, n, double now):
        """The ``n`` most read keys lately, with estimated reads per second."""
        return self.hh.top(n, now)

    def frequency(self, key):
        """The admission sketch's count for ``key`` (0..15)."""
        return self.sketch.frequency_c(self._hash(key))

    def counters(self):
        return self.hits, self.misses, self.evictions, self.rejected, self.expirations

    def state(self):
        """Everything that decides future answers (for the twins' equivalence tests)."""
        cdef long long s
        shards = []
        for s in range(<long long>self.nshards):
            shards.append((
                sorted((repr(k), e.value, e.expires_at, e.refresh_at, e.slot, e.refreshing)
                       for k, e in (<dict>self.dicts[s]).items()),
                [e.key for e in self.windows[s]], [e.key for e in self.mains[s]]))
        return (shards, self.counters(), self.rng.state, self.sketch.state(),
                self.hh.state())


cdef class CachedCall:
    """A memoised sync function: on a hit (key made, looked up, fresh) it returns in C with
    no Python-level call; a miss or a due refresh goes to ``slow(key, marker, args, kwargs)``
    (the public layer's singleflight). ``keyfunc=None`` keys by the single str/int argument
    itself, else by the positional arguments as a tuple; keyword arguments go through
    ``make_key(args, kwargs)``."""

    cdef readonly object func
    cdef CacheTable table
    cdef object keyfunc, make_key, slow, absent_out
    cdef dict __dict__

    def __init__(self, func, CacheTable table, keyfunc, make_key, slow, absent_out):
        self.func = func
        self.table = table
        self.keyfunc = keyfunc
        self.make_key = make_key
        self.slow = slow
        self.absent_out = absent_out

    def __call__(self, *args, **kwargs):
        cdef object key
        if self.keyfunc is not None:
            key = self.keyfunc(*args, **kwargs)
        elif kwargs:
            key = self.make_key(args, kwargs)
        elif len(args) == 1 and (type(args[0]) is str or type(args[0]) is int):
            key = args[0]
        else:
            key = args
        v = self.table._lookup(key)
        if v is MISS_ or v is REFRESH_:
            return self.slow(key, v, args, kwargs)
        if v is self.table.absent:
            return self.absent_out
        return v

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self):
        return f"<cached {self.func!r}>"
