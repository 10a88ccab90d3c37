# cython: language_level=3
"""The per-key limiter table (compiled twin of ``gameguard._pure.keyed``).

One C array of fixed-size entries ``{fingerprint, a, last}`` (24 bytes), open addressing
with linear probing, evictions by whole-table mark-and-compact passes; no Python object
per key. Keys are identified by the cache's seeded fingerprint (``key_fingerprint``,
cimported from ``gameguard._fast.sketch``: one rule for the limiter and the cache).
Lookups compare fingerprints only, so no
user ``__eq__`` runs inside an update: each call is atomic under the GIL. See the pure
twin for the eviction rules.
"""
from libc.math cimport INFINITY, fabs
from libc.stdlib cimport calloc, free
from libc.stdint cimport uint64_t
from cpython.exc cimport PyErr_NoMemory
from cpython.long cimport PyLong_Check
from cpython.unicode cimport PyUnicode_Check
from cpython.bytes cimport PyBytes_Check, PyBytes_AS_STRING, PyBytes_GET_SIZE

from gameguard._fast.arith cimport (_tb_level, _tb_wait, _lv_level, _lv_wait,
                                    cost_double as _as_double, MAX_INDEX)
from gameguard._fast.kernel cimport (GuardKernel, REJECT_, share_counts, tally,
                                     monotonic_precise as _monotonic)
from gameguard._fast.xxh cimport _xxh64, _xxh64_u64
from gameguard._fast.sketch cimport key_fingerprint

from gameguard.errors import ConfigurationError

__all__ = ["TOKEN", "LEAKY", "ENTRY_BYTES", "MIN_SLOTS", "BINS", "KeyedTable", "KeyView",
           "xxh64_int", "xxh64_bytes", "slots_for"]

cdef enum:
    TOKEN_ = 0
    LEAKY_ = 1
    MIN_SLOTS_ = 64
    BINS_ = 256

TOKEN, LEAKY, MIN_SLOTS, BINS = TOKEN_, LEAKY_, MIN_SLOTS_, BINS_

cdef struct Entry:
    uint64_t fp     # 0: empty slot
    double a        # token kind: tokens; leaky kind: level
    double last     # last touched (token kind: also when tokens were counted)

ENTRY_BYTES = sizeof(Entry)


cdef int _bad_reading(double now) except -1:
    raise ValueError(f"clock reading {now!r} is not a usable time")


def xxh64_int(long long v, uint64_t seed):
    """XXH64 of ``v`` as 8 little-endian bytes (tests compare it with the xxhash package)."""
    return _xxh64_u64(<uint64_t>v, seed)


def xxh64_bytes(bytes b, uint64_t seed):
    return _xxh64(<const unsigned char *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), seed)


def slots_for(long long max_keys):
    """Slots of a full table: load factor at most 0.8."""
    return (max_keys * 5 + 3) // 4


# -- per-key arithmetic: the same float operations as gameguard._pure.bucket ----------------
cdef inline Py_ssize_t _home(uint64_t fp, Py_ssize_t n) noexcept nogil:
    # Lemire's multiply-shift range reduction, floor(fp * n / 2**64), with 64-bit halves
    cdef uint64_t hi = fp >> 32
    cdef uint64_t lo = fp & 0xFFFFFFFFULL
    cdef uint64_t m = <uint64_t>n
    return <Py_ssize_t>((hi * m + ((lo * m) >> 32)) >> 32)


cdef class KeyedTable(GuardKernel):
    """Bounded table of per-key buckets; see the pure twin for the semantics."""

    cdef readonly int kind
    cdef readonly double rate, capacity, idle_ttl
    cdef readonly long long max_keys, max_slots, slots, count, since_sweep
    cdef readonly long long evicted_full, evicted_idle, evicted_stale, sweeps
    cdef readonly uint64_t seed
    cdef readonly object clock
    cdef Entry *_t

    def __cinit__(self, *args, **kwargs):
        self._t = NULL

    def __init__(self, int kind, double rate, double capacity, long long max_keys,
                 double idle_ttl, uint64_t seed, clock=None):
        if kind != TOKEN_ and kind != LEAKY_:
            raise ValueError(f"kind must be TOKEN or LEAKY, got {kind}")
        if max_keys < 1 or max_keys > (1LL << 31):
            raise ValueError(f"max_keys out of range: {max_keys}")
        self.kind = kind
        self.rate = rate
        self.capacity = capacity
        self.idle_ttl = idle_ttl
        self.max_keys = max_keys
        self.max_slots = slots_for(max_keys)
        self.seed = seed
        self.clock = clock
        self.slots = MIN_SLOTS_ if self.max_slots > MIN_SLOTS_ else self.max_slots
        self._t = <Entry *>calloc(self.slots, sizeof(Entry))
        if self._t == NULL:
            PyErr_NoMemory()

    def __dealloc__(self):
        free(self._t)

    # -- keys -------------------------------------------------------------------------------
    cdef inline uint64_t _fingerprint(self, object key) except? 0:
        # the cache's key identity (one rule for both: equal keys are one key); 0 marks an
        # empty slot, so a key fingerprinted 0 shares 1's
        cdef uint64_t h = key_fingerprint(key, self.seed)
        return h if h != 0 else 1

    def fingerprint(self, key):
        """The key's seeded 64-bit fingerprint (never 0)."""
        return self._fingerprint(key)

    # -- table ------------------------------------------------------------------------------
    cdef inline Py_ssize_t _find(self, uint64_t fp) noexcept:
        """Slot of ``fp``, or ``-(empty slot) - 1`` where it would go."""
        cdef Py_ssize_t n = self.slots
        cdef Py_ssize_t i = _home(fp, n)
        cdef Entry *t = self._t
        while t[i].fp != 0:
            if t[i].fp == fp:
                return i
            i += 1
            if i == n:
                i = 0
        return -i - 1

    cdef int _grow(self) except -1:
        cdef Py_ssize_t old_n = self.slots
        cdef Py_ssize_t new_n = old_n * 2
        cdef Py_ssize_t i, j
        cdef Entry *old = self._t
        cdef Entry *t
        if new_n > self.max_slots:
            new_n = self.max_slots
        t = <Entry *>calloc(new_n, sizeof(Entry))
        if t == NULL:
            PyErr_NoMemory()
        for i in range(old_n):
            if old[i].fp != 0:
                j = _home(old[i].fp, new_n)
                while t[j].fp != 0:
                    j += 1
                    if j == new_n:
                        j = 0
                t[j] = old[i]
        self._t = t
        self.slots = new_n
        free(old)
        return 0

    cdef inline bint _reclaimable(self, Entry *e, double now) noexcept:
        """Dropping it loses nothing (bucket back to full) or it has been idle too long."""
        if now - e.last >= self.idle_ttl:
            return True
        if self.kind == TOKEN_:
            return _tb_level(e.a, e.last, now, self.rate, self.capacity) >= self.capacity
        return _lv_level(e.a, e.last, now, self.rate) <= 0.0

    cdef Py_ssize_t _mark_reclaimable(self, double now, double *lo, double *hi) noexcept:
        # marks dead entries with last = -inf; _compact() removes them
        cdef Py_ssize_t i
        cdef Py_ssize_t marked = 0
        cdef Entry *e
        lo[0] = INFINITY
        hi[0] = -INFINITY
        for i in range(self.slots):
            e = &self._t[i]
            if e.fp == 0:
                continue
            if self._reclaimable(e, now):
                if now - e.last >= self.idle_ttl:
                    self.evicted_idle += 1
                else:
                    self.evicted_full += 1
                e.last = -INFINITY
                marked += 1
            else:
                if e.last < lo[0]:
                    lo[0] = e.last
                if e.last > hi[0]:
                    hi[0] = e.last
        return marked

    cdef void _compact(self, Py_ssize_t marked) noexcept:
        """Drop the marked entries and re-place the rest, in one O(slots) pass.

        Starting just after an empty slot s, each live entry is taken out and re-inserted
        from its home: it lands between its home and where it was (both after s), so every
        entry already placed stays reachable. Bulk backward-shift deletions would cost
        O(cluster) each instead.
        """
        cdef Py_ssize_t n = self.slots
        cdef Py_ssize_t s = 0
        cdef Py_ssize_t k, p, j
        cdef Entry e
        cdef Entry *t = self._t
        while t[s].fp != 0:
            s += 1
        p = s
        for k in range(1, n):
            p += 1
            if p == n:
                p = 0
            if t[p].fp == 0:
                continue
            e = t[p]
            t[p].fp = 0
            t[p].a = 0.0
            t[p].last = 0.0
            if e.last == -INFINITY:
                continue
            j = _home(e.fp, n)
            while t[j].fp != 0:
                j += 1
                if j == n:
                    j = 0
            t[j] = e
        self.count -= marked
        self.since_sweep = 0

    cdef void _reclaim(self, double now) noexcept:
        cdef double lo, hi
        self.sweeps += 1
        self._compact(self._mark_reclaimable(now, &lo, &hi))

    cdef inline int _bin(self, double last, double lo, double hi) noexcept:
        cdef int b
        if not hi > lo:
            return 0
        b = <int>((last - lo) / (hi - lo) * BINS_)
        return BINS_ - 1 if b >= BINS_ else b

    cdef void _make_room(self, double now) noexcept:
        """Table full: drop every reclaimable key; if that frees less than an eighth of the
        table, drop the stalest keys (smallest ``last``) until it does."""
        cdef double lo, hi
        cdef Py_ssize_t target = self.max_keys // 8
        cdef Py_ssize_t marked, need, below, i
        cdef long long acc
        cdef long long hist[BINS_]
        cdef int b, cut
        cdef Entry *e
        if target < 1:
            target = 1
        self.sweeps += 1
        marked = self._mark_reclaimable(now, &lo, &hi)
        if marked < target and marked < self.count:
            need = target - marked
            for b in range(BINS_):
                hist[b] = 0
            for i in range(self.slots):
                e = &self._t[i]
                if e.fp != 0 and e.last != -INFINITY:
                    hist[self._bin(e.last, lo, hi)] += 1
            below = 0
            cut = 0
            while cut < BINS_ - 1 and below + hist[cut] < need:
                below += hist[cut]
                cut += 1
            need -= below  # to take from bin `cut`
            # spread those evenly over the table (Bresenham): evicting the first ones in
            # slot order would leave one dense region with long probe chains
            acc = 0
            for i in range(self.slots):
                e = &self._t[i]
                if e.fp != 0 and e.last != -INFINITY:
                    b = self._bin(e.last, lo, hi)
                    if b == cut:
                        acc += need
                        if acc < hist[cut]:
                            continue
                        acc -= hist[cut]
                    elif b > cut:
                        continue
                    self.evicted_stale += 1
                    e.last = -INFINITY
                    marked += 1
        self._compact(marked)

    cdef Py_ssize_t _slot_for_new(self, uint64_t fp, double now) except -1:
        # every eviction is a whole-table pass (mark, then compact): deleting here and there
        # as keys arrive would thin the table behind a cursor and pile up long probe chains
        cdef Py_ssize_t i
        self.since_sweep += 1
        if self.count >= self.max_keys:
            self._make_room(now)
        elif (self.count + 1) * 5 > self.slots * 4:  # past load 0.8: reclaim, else grow
            self._reclaim(now)
            if (self.count + 1) * 10 > self.slots * 6:
                self._grow()
        elif self.since_sweep >= self.slots:  # idle keys leave even when nothing presses
            self._reclaim(now)
        i = -self._find(fp) - 1
        self._t[i].fp = fp
        self._t[i].last = now
        self._t[i].a = self.capacity if self.kind == TOKEN_ else 0.0
        self.count += 1
        return i

    cdef bint _take(self, double now, uint64_t fp, double cost) except -1:
        cdef Py_ssize_t i
        cdef Entry *e
        cdef double t
        if not fabs(now) < MAX_INDEX:  # NaN too: eviction bins times into C ints
            _bad_reading(now)
        i = self._find(fp)
        if i < 0:
            i = self._slot_for_new(fp, now)
        e = &self._t[i]
        if self.kind == TOKEN_:
            if now > e.last:
                t = e.a + (now - e.last) * self.rate
                e.a = self.capacity if t > self.capacity else t
                e.last = now
            if e.a >= cost:
                e.a -= cost
                return True
            return False
        if now > e.last:
            t = e.a - (now - e.last) * self.rate
            e.a = 0.0 if t < 0.0 else t
            e.last = now
        if e.a + cost <= self.capacity:
            e.a += cost
            return True
        return False

    cdef int _check_cost(self, double cost) except -1:
        if not (cost > 0.0 and cost <= self.capacity):
            raise ConfigurationError(
                f"cost must be a number in (0, capacity={self.capacity!r}], got {cost!r}")
        return 0

    # -- public kernel API ----------------------------------------------------------------
    def try_acquire(self, key, object cost=1.0):
        """Admit ``cost`` for ``key`` now (clock read in C for the default clock)."""
        cdef double now
        cdef uint64_t fp
        cdef double c = _as_double(cost)
        if not (c > 0.0 and c <= self.capacity):
            self._check_cost(c)
        fp = self._fingerprint(key)
        if self.clock is None:
            now = _monotonic()
        else:
            now = self.clock()
        return tally(self, self._take(now, fp, c))

    def acquire_at(self, double now, key, double cost):
        return self._take(now, self._fingerprint(key), cost)

    def acquire_fp(self, double now, uint64_t fp, double cost):
        return self._take(now, fp, cost)

    cdef double _delay(self, double now, uint64_t fp, double cost) noexcept:
        cdef Py_ssize_t i = self._find(fp)
        cdef Entry *e
        if i < 0:
            return 0.0
        e = &self._t[i]
        if self.kind == TOKEN_:
            return _tb_wait(e.a, e.last, now, self.rate, self.capacity, cost)
        return _lv_wait(e.a, e.last, now, self.rate, self.capacity, cost)

    def delay_at(self, double now, key, double cost):
        """Seconds until ``key`` could take ``cost`` (0.0 for an unknown key)."""
        return self._delay(now, self._fingerprint(key), cost)

    def delay_fp(self, double now, uint64_t fp, double cost):
        return self._delay(now, fp, cost)

    def level_at(self, double now, key):
        """Tokens left (token kind) or bucket level (leaky kind) of ``key``."""
        cdef Py_ssize_t i = self._find(self._fingerprint(key))
        cdef Entry *e
        if i < 0:
            return self.capacity if self.kind == TOKEN_ else 0.0
        e = &self._t[i]
        if self.kind == TOKEN_:
            return _tb_level(e.a, e.last, now, self.rate, self.capacity)
        return _lv_level(e.a, e.last, now, self.rate)

    def __len__(self):
        return self.count

    def __contains__(self, key):
        return self._find(self._fingerprint(key)) >= 0

    def purge(self, double now):
        """Drop every reclaimable key now (O(slots)); how many were dropped."""
        cdef double lo, hi
        cdef Py_ssize_t marked = self._mark_reclaimable(now, &lo, &hi)
        self.sweeps += 1
        self._compact(marked)
        return marked

    def configure(self, double now, double rate, double capacity, double idle_ttl):
        """Settle every key at the old rate up to ``now`` (O(slots)), then switch; tokens
        are clipped to the new capacity, leaky levels kept (see the pure twin)."""
        cdef Py_ssize_t i
        cdef Entry *e
        if not fabs(now) < MAX_INDEX:
            _bad_reading(now)
        for i in range(self.slots):
            e = &self._t[i]
            if e.fp == 0:
                continue
            if self.kind == TOKEN_:
                e.a = _tb_level(e.a, e.last, now, self.rate, self.capacity)
                if e.a > capacity:
                    e.a = capacity
            else:
                e.a = _lv_level(e.a, e.last, now, self.rate)
            if now > e.last:
                e.last = now
        self.rate = rate
        self.capacity = capacity
        self.idle_ttl = idle_ttl

    def clear(self):
        cdef Py_ssize_t i
        for i in range(self.slots):
            self._t[i].fp = 0
            self._t[i].a = 0.0
            self._t[i].last = 0.0
        self.count = 0
        self.since_sweep = 0

    @property
    def nbytes(self):
        """Bytes of the entry array (the table's whole per-key memory)."""
        return self.slots * sizeof(Entry)

    def dump(self):
        """``[(slot, fingerprint, a, last)]`` of occupied slots (for tests)."""
        cdef Py_ssize_t i
        return [(i, self._t[i].fp, self._t[i].a, self._t[i].last)
                for i in range(self.slots) if self._t[i].fp != 0]

    def view(self, key):
        cdef KeyView v = KeyView(self, self._fingerprint(key))
        share_counts(v, self)  # every key counts into the table
        return v

    cpdef long long enter(self, double now):
        raise TypeError("a KeyedTable needs a key: use view(key)")


cdef class KeyView(GuardKernel):
    """One key of a :class:`KeyedTable`, as a guard kernel (cost 1 per call)."""

    cdef readonly KeyedTable table
    cdef readonly uint64_t fp

    def __init__(self, KeyedTable table, uint64_t fp):
        self.table = table
        self.fp = fp

    cpdef long long enter(self, double now):
        return 0 if self.table._take(now, self.fp, 1.0) else REJECT_

    cpdef double retry_after(self, double now):
        return self.table._delay(now, self.fp, 1.0)
