# cython: language_level=3
"""The hot-key cache's entry store and eviction policy (compiled twin of
``gameguard._pure.cachetable``; see it for the design: W-TinyLFU over CLOCK queues with an
adaptive window, and the order in which user code runs).

``get`` is the whole hit path in C: read CLOCK_MONOTONIC (default clock), hash the key,
look it up in its shard's dict, check expiry, set the entry's reference bit, bump the
admission sketch and the heavy-hitter sketch. No Python-level call happens after the key's
own ``__hash__``/``__eq__``, so a read is atomic under the GIL and needs no lock. The queues
are lists with a head index (C-speed pops); every field is read-only from Python, since
sizes and regions index C arrays with bounds checks off.
"""
import time

from libc.stdint cimport uint64_t
from libc.math cimport sqrt
import types

from posix.time cimport clock_gettime, clock_getres, timespec, CLOCK_MONOTONIC
from cpython.dict cimport PyDict_GetItemWithError
from cpython.ref cimport PyObject

from gameguard._fast.kernel cimport SplitMix64
from gameguard._fast.sketch cimport FrequencySketch, HeavyHitters

from gameguard._fast.sketch cimport key_fingerprint

__all__ = ["CacheTable", "CachedCall", "Entry", "MISS", "REFRESH",
           "ADMIT_HASHDOS_THRESHOLD", "MIN_SHARD", "GONE", "WINDOW", "PROBATION",
           "PROTECTED"]

cdef enum:
    MIN_SHARD_ = 4096
    ADMIT_HASHDOS_THRESHOLD_ = 6
    GONE_ = -1
    WINDOW_ = 0
    PROBATION_ = 1
    PROTECTED_ = 2
    EVICTED_ = 0
    REJECTED_ = 1
    EXPIRED_ = 2

MIN_SHARD = MIN_SHARD_
ADMIT_HASHDOS_THRESHOLD = ADMIT_HASHDOS_THRESHOLD_
GONE, WINDOW, PROBATION, PROTECTED = GONE_, WINDOW_, PROBATION_, PROTECTED_
cdef double PROTECTED_SHARE = 0.8
cdef double CLIMB_STEP = 0.0625
cdef double CLIMB_DECAY = 0.98
cdef double CLIMB_RESTART = 0.05
cdef double MAX_WINDOW = 0.8
cdef double CLIMB_NOISE = 0.5


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
    """One cached value (see the pure twin). Read-only from Python: ``region`` indexes the
    shard's C counters."""
    cdef readonly object key, value
    cdef readonly uint64_t h
    cdef readonly double expires_at, refresh_at
    cdef readonly int region
    cdef readonly bint ref, refreshing

    def __init__(self, key, value, uint64_t h, double expires_at, double refresh_at):
        self.key = key
        self.value = value
        self.h = h
        self.expires_at = expires_at
        self.refresh_at = refresh_at
        self.region = GONE_
        self.ref = False
        self.refreshing = False


cdef inline object _update(Entry e, object value, double expires_at, double refresh_at):
    """Overwrite a held entry (it counts as read); returns the old value to release."""
    old = e.value
    e.expires_at = expires_at
    e.refresh_at = refresh_at
    e.refreshing = False
    e.ref = True
    e.value = value
    return old


cdef int _release(list gone) except -1:
    """Let go of removed entries' keys and values, last (a ``__del__`` may re-enter)."""
    cdef Entry e
    for e in gone:
        e.key = None
        e.value = None
    return 0


cdef class Shard:
    """One shard: its dict and three queues (lists read from ``heads[r]`` on), with their
    live sizes and bounds (see the pure twin)."""
    cdef readonly dict d
    cdef list qs                # the three queues' lists
    cdef Py_ssize_t heads[3]
    cdef long long live_[3]
    cdef readonly long long cap, wcap, pcap

    def __init__(self, long long cap):
        cdef int r
        self.d = {}
        self.qs = [[], [], []]
        for r in range(3):
            self.heads[r] = 0
            self.live_[r] = 0
        self.cap = cap
        self.wcap = 1
        self.pcap = 0

    @property
    def live(self):
        return [self.live_[0], self.live_[1], self.live_[2]]

    @property
    def queues(self):
        cdef int r
        return tuple((<list>self.qs[r])[self.heads[r]:] for r in range(3))

    cdef void resize(self, double share) noexcept:
        cdef long long w = <long long>(<double>self.cap * share)
        self.wcap = w if w >= 1 else 1
        self.pcap = <long long>(PROTECTED_SHARE * <double>(self.cap - self.wcap))

    cdef inline long long size(self) noexcept:
        return self.live_[0] + self.live_[1] + self.live_[2]

    cdef Entry head(self, int r):
        cdef list q = <list>self.qs[r]
        cdef Entry e
        while True:
            e = <Entry>q[self.heads[r]]
            if e.region == r:
                return e
            self._pop(r)

    cdef int _pop(self, int r) except -1:
        cdef list q = <list>self.qs[r]
        q[self.heads[r]] = None
        self.heads[r] += 1
        if self.heads[r] >= 32 and 2 * self.heads[r] >= len(q):
            del q[:self.heads[r]]
            self.heads[r] = 0
        return 0

    cdef int move(self, Entry e, int r) except -1:
        cdef list q = <list>self.qs[e.region]
        cdef Py_ssize_t i
        if q[self.heads[e.region]] is e:
            self._pop(e.region)
        else:  # only if user code re-entered between the choice and the move
            for i in range(self.heads[e.region], len(q)):
                if q[i] is e:
                    del q[i]
                    break
        self.live_[e.region] -= 1
        e.region = r
        e.ref = False
        (<list>self.qs[r]).append(e)
        self.live_[r] += 1
        return 0

    cdef Entry clock_head(self, int r):
        cdef long long i, n = self.live_[r]
        cdef Entry e
        for i in range(n):
            e = self.head(r)
            if not e.ref:
                return e
            self.move(e, r)
        return self.head(r)

    cdef int demote(self) except -1:
        while self.live_[PROTECTED_] > self.pcap:
            self.move(self.clock_head(PROTECTED_), PROBATION_)
        return 0

    cdef Entry victim(self):
        cdef long long i, n
        cdef Entry e
        self.demote()
        n = self.live_[PROBATION_]
        for i in range(n):
            e = self.head(PROBATION_)
            if not e.ref:
                return e
            self.move(e, PROTECTED_)
            self.demote()
        if self.live_[PROBATION_]:
            return self.head(PROBATION_)
        return self.head(PROTECTED_)

    cdef int requeue(self, Entry e) except -1:
        if e.region != GONE_:
            self.move(e, e.region)
        return 0

    cdef int link(self, Entry e) except -1:
        e.region = WINDOW_
        (<list>self.qs[WINDOW_]).append(e)
        self.live_[WINDOW_] += 1
        return 0

    cdef int unlink(self, Entry e) except -1:
        cdef int r = e.region
        cdef list q
        if r == GONE_:
            return 0
        self.live_[r] -= 1
        e.region = GONE_
        q = <list>self.qs[r]
        if len(q) - self.heads[r] > 2 * self.live_[r] + 16:
            self.qs[r] = [x for x in q[self.heads[r]:] if (<Entry>x).region == r]
            self.heads[r] = 0
        return 0


cdef class CacheTable:
    """Sharded entry store with W-TinyLFU admission, an adaptive window and a hot-key
    sketch (see the pure twin). Every field is read-only from Python."""

    cdef readonly long long maxsize
    cdef readonly uint64_t nshards, seed
    cdef readonly object clock          # None: CLOCK_MONOTONIC read in C
    cdef readonly double hot_rate
    cdef readonly object absent
    cdef readonly list shards
    cdef readonly double window, step, last_ratio
    cdef readonly bint adaptive
    cdef readonly long long sample_size, sample_hits, sample_requests
    cdef readonly FrequencySketch sketch
    cdef readonly HeavyHitters hh
    cdef readonly SplitMix64 rng
    cdef readonly long long hits, misses, evictions, rejected, expirations, stale

    def __init__(self, maxsize, shards, seed, clock=None, *, hot_capacity=64,
                 hot_width=1024, hot_half_life=2.0, hot_rate=1.0, window=0.01,
                 adaptive=True, absent=None):
        cdef long long n, base, extra, s
        cdef Shard sh
        self.maxsize = int(maxsize)
        if self.maxsize < 1:  # a shard with no room has nothing to evict
            raise ValueError(f"maxsize must be >= 1, got {maxsize!r}")
        n = max(1, min(int(shards), self.maxsize // MIN_SHARD_))  # see the pure twin
        self.nshards = n
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.clock = None if clock is None or clock is time.monotonic else clock
        self.hot_rate = float(hot_rate)
        self.absent = absent
        base, extra = divmod(self.maxsize, n)
        self.shards = [Shard(base + (1 if s < extra else 0)) for s in range(n)]
        self.window = min(max(float(window), 0.0), MAX_WINDOW)
        self.adaptive = bool(adaptive)
        self.step = -CLIMB_STEP
        self.last_ratio = 0.0
        self.sample_size = 10 * self.maxsize
        for sh in self.shards:
            sh.resize(self.window)
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

    cdef inline Shard _shard(self, uint64_t h):
        return <Shard>self.shards[h % self.nshards]

    cdef inline Entry _find(self, object key, uint64_t h):
        cdef PyObject *p = PyDict_GetItemWithError(self._shard(h).d, key)
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
        if e is None or not now < e.expires_at:
            self.misses += 1
            return default
        self.hits += 1
        e.ref = True
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
        if e is None or not now < e.expires_at:
            self.misses += 1
            return default
        self.hits += 1
        e.ref = True
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
        if e is None or not now < e.expires_at:
            return self._no_fresh(e, now)
        self.hits += 1
        e.ref = True
        if now >= e.refresh_at and not e.refreshing and self.hh.is_hot_c(h, now, self.hot_rate):
            e.refreshing = True
            return REFRESH_
        return e.value

    cdef object _no_fresh(self, Entry e, double now):
        """``probe`` without a fresh entry: the value ``keep_stale`` kept, else ``MISS``
        (out of line: the hit path's inlined code stays as it was)."""
        if e is not None and now < e.refresh_at:
            self.stale += 1
            return e.value
        self.misses += 1
        return MISS_

    def peek(self, key, double now):
        """The stored value if fresh, else ``MISS``; counts nothing."""
        cdef Entry e = self._find(key, self._hash(key))
        if e is None or not now < e.expires_at:
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
        """Store ``value`` for ``key`` (see the pure twin for the order of steps)."""
        cdef uint64_t h = self._hash(key)
        cdef Shard sh = self._shard(h)
        cdef Entry e = self._find(key, h), loser, cand, held
        cdef int why
        cdef list gone
        if e is not None:
            old = _update(e, value, expires_at, refresh_at)
            old = None   # the old value goes once the entry is consistent
            return True
        gone = []
        try:
            self._climb()
            while sh.size() >= sh.cap:
                loser, cand, why = self._plan(sh, now)
                try:
                    del sh.d[loser.key]   # user code: if it raises, nothing has changed
                except BaseException:
                    sh.requeue(loser)
                    raise
                self._leave(sh, loser, why)
                if cand is not None:
                    sh.move(cand, PROBATION_)
                gone.append(loser)
            e = Entry(key, value, h, expires_at, refresh_at)
            held = <Entry>sh.d.setdefault(key, e)   # user code: if it raises, a slot stays free
            if held is e:
                sh.link(e)
                return True
            old = _update(held, value, expires_at, refresh_at)  # stored meanwhile
            old = None
            return True
        finally:
            _release(gone)

    cdef tuple _plan(self, Shard sh, double now):
        """Room for one more entry in a full shard, decided without user code: (the entry
        that must leave, still linked; the window candidate that then moves to probation
        or None; why the first leaves)."""
        cdef Entry cand, victim, loser
        cdef int cf
        while sh.live_[WINDOW_] > sh.wcap:
            sh.move(sh.clock_head(WINDOW_), PROBATION_)
        if sh.live_[WINDOW_] < sh.wcap or sh.live_[WINDOW_] == sh.cap:
            loser = sh.victim() if sh.live_[WINDOW_] < sh.wcap else sh.clock_head(WINDOW_)
            return loser, None, EXPIRED_ if not now < loser.expires_at else EVICTED_
        cand = sh.clock_head(WINDOW_)
        if not now < cand.expires_at:
            return cand, None, EXPIRED_
        victim = sh.victim()
        if not now < victim.expires_at:
            return victim, cand, EXPIRED_
        cf = self.sketch.frequency_c(cand.h)
        if cf > self.sketch.frequency_c(victim.h) or (
                cf >= ADMIT_HASHDOS_THRESHOLD_ and self.rng.next_c() < 1.0 / 128.0):
            return victim, cand, EVICTED_
        return cand, None, REJECTED_

    cdef int _leave(self, Shard sh, Entry e, int why) except -1:
        sh.unlink(e)
        if why == EXPIRED_:
            self.expirations += 1
        else:
            self.evictions += 1
            if why == REJECTED_:
                self.rejected += 1
        return 0

    cdef int _climb(self) except -1:
        """Hill climbing on the window's share (see the pure twin)."""
        cdef long long requests = self.hits + self.misses - self.sample_requests
        cdef double ratio, change, amount, window
        cdef Shard sh
        if not self.adaptive or requests < self.sample_size:
            return 0
        ratio = <double>(self.hits - self.sample_hits) / <double>requests
        change = ratio - self.last_ratio
        self.last_ratio = ratio
        self.sample_hits = self.hits
        self.sample_requests = self.hits + self.misses
        if abs(change) < CLIMB_NOISE * sqrt(2.0 * ratio * (1.0 - ratio) / <double>requests):
            self.step *= CLIMB_DECAY   # within sampling noise: no evidence, stay
            return 0
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
        return 0

    def delete(self, key):
        """Remove ``key``; True if it was held (fresh or not)."""
        cdef uint64_t h = self._hash(key)
        cdef Shard sh = self._shard(h)
        cdef Entry e = sh.d.pop(key, None)   # user code: if it raises, nothing has changed
        if e is None:
            return False
        sh.unlink(e)
        _release([e])
        return True

    def end_refresh(self, key, double now):
        """A refresh failed or was abandoned: retry halfway between ``now`` and expiry."""
        cdef Entry e = self._find(key, self._hash(key))
        if e is not None:
            e.refreshing = False
            e.refresh_at = now + 0.5 * (e.expires_at - now)

    def stale_value(self, key, double now):
        """The value of an expired entry kept by ``keep_stale`` (see the pure twin)."""
        cdef Entry e = self._find(key, self._hash(key))
        if e is None or now < e.expires_at or not now < e.refresh_at:
            return MISS_
        return e.value

    def keep_stale(self, key, double now, double window, double retry):
        """A load failed: keep an entry expired less than ``window`` ago (see the pure
        twin)."""
        cdef Entry e = self._find(key, self._hash(key))
        cdef double until
        if e is None or now < e.expires_at or not now - window < e.expires_at:
            return MISS_
        until = e.expires_at + window
        e.refresh_at = now + retry if now + retry < until else until
        return e.value

    def expire(self, double now):
        """Drop every expired entry. O(n); returns how many."""
        cdef Shard sh
        cdef Entry e
        cdef list gone = []
        try:
            for sh in self.shards:
                for e in [e for e in sh.d.values() if not now < (<Entry>e).expires_at]:
                    del sh.d[e.key]   # user code: if it raises, the others stay counted
                    sh.unlink(e)
                    gone.append(e)
        finally:
            self.expirations += len(gone)
            _release(gone)
        return len(gone)

    def clear(self):
        cdef Shard sh
        cdef Entry e
        cdef int r
        old = []   # released on return, once every shard is empty
        for sh in self.shards:
            old.append((sh.d, sh.qs))
            for e in sh.d.values():
                e.region = GONE_
            sh.d = {}
            sh.qs = [[], [], []]
            for r in range(3):
                sh.heads[r] = 0
                sh.live_[r] = 0

    def __len__(self):
        cdef long long n = 0
        cdef Shard sh
        for sh in self.shards:
            n += len(sh.d)
        return n

    # -- hot keys -----------------------------------------------------------------------
    def hot_keys(self, n, double now):
        """The ``n`` most read keys lately, with estimated reads per second."""
        return self.hh.top(n, now)

    def frequency(self, key):
        """The admission sketch's count for ``key`` (0..15)."""
        return self.sketch.frequency_c(self._hash(key))

    def counters(self):
        return (self.hits, self.misses, self.evictions, self.rejected, self.expirations,
                self.stale)

    def check(self):
        """Assert the structures agree (see the pure twin)."""
        cdef Shard sh
        cdef int r
        for sh in self.shards:   # no user code: identities only
            linked = set()
            for r, q in enumerate(sh.queues):
                live = [id(e) for e in q if (<Entry>e).region == r]
                assert len(live) == sh.live_[r] == len(set(live))
                linked.update(live)
            assert all((<Entry>e).key is k for k, e in sh.d.items())
            assert linked == {id(e) for e in sh.d.values()} and len(sh.d) <= sh.cap

    def state(self):
        """Everything that decides future answers (for the twins' equivalence tests)."""
        cdef Shard sh
        shards = []
        for sh in self.shards:
            shards.append((
                sorted((repr(k), e.value, e.expires_at, e.refresh_at, e.region, e.ref,
                        e.refreshing) for k, e in sh.d.items()),
                [[e.key for e in q if (<Entry>e).region == r]
                 for r, q in enumerate(sh.queues)],
                sh.wcap, sh.pcap))
        return (shards, self.counters(), self.window, self.step, self.last_ratio,
                self.rng.state, self.sketch.state(), self.hh.state())


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

