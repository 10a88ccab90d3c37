# cython: language_level=3
"""Frequency sketches for the hot-key cache (compiled twin of ``gameguard._pure.sketch``).

See the pure twin for the algorithms (Caffeine's 4-bit Count-Min ``FrequencySketch`` and
HeavyKeeper with a top-k table). Here the tables are C arrays and the per-read updates
(``increment_c``, ``add_c``) make no Python-level call, so they are atomic under the GIL.
"""
from libc.math cimport pow
from libc.stdlib cimport calloc, free
from libc.stdint cimport uint64_t, int64_t
from cpython.exc cimport PyErr_NoMemory
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF

from gameguard._fast.xxh cimport _xxh64, _xxh64_u64
from libc.math cimport floor, isfinite
from cpython.long cimport PyLong_Check
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE
from cpython.bytes cimport PyBytes_Check, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_Check
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE

cdef extern from "Python.h":
    PyObject *PyTuple_GET_ITEM(object, Py_ssize_t)
from gameguard._fast.kernel cimport SplitMix64

__all__ = ["mix64", "key_hash", "FrequencySketch", "HeavyHitters", "DECAY_BASE", "DECAY_LIMIT"]

cdef extern from *:
    int __builtin_popcountll(unsigned long long) nogil

cdef enum:
    DECAY_LIMIT_ = 256

DECAY_BASE = 1.08
DECAY_LIMIT = DECAY_LIMIT_
cdef double DECAY_BASE_ = 1.08
cdef uint64_t RESET_MASK = 0x7777777777777777ULL
cdef uint64_t ONE_MASK = 0x1111111111111111ULL
cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL
cdef int64_t COUNT_MAX = (1LL << 31) - 1


def py_mix64(x):
    """splitmix64's finaliser (see the pure twin)."""
    return mix64(<uint64_t>x)

globals()["mix64"] = py_mix64  # Python-visible under the pure twin's name


# -- the cache's key fingerprint (twin: gameguard._pure.sketch.key_hash) -----------------------
cdef extern from "Python.h":
    const char *_gg_utf8 "PyUnicode_AsUTF8AndSize" (object, Py_ssize_t *)  # NULL: error set
    long long _gg_as_ll "PyLong_AsLongLongAndOverflow" (object, int *) except? -1
    void PyErr_Clear()

cdef uint64_t SEED_STR = 0x9E3779B97F4A7C15ULL
cdef uint64_t SEED_BYTES = 0xC2B2AE3D27D4EB4FULL
cdef uint64_t SEED_BIGINT = 0x165667B19E3779F9ULL
cdef uint64_t SEED_FLOAT = 0x85EBCA77C2B2AE63ULL
cdef uint64_t SEED_TUPLE = 0x27D4EB2F165667C5ULL
cdef double TWO63 = 9223372036854775808.0


cdef uint64_t key_fingerprint(object key, uint64_t seed) except? 0:
    """Seeded 64-bit fingerprint of a cache key: equal keys get equal fingerprints, and a
    client who does not know the seed cannot make distinct keys share one (see the twin)."""
    cdef int overflow = 0
    cdef long long v
    cdef double d
    cdef Py_ssize_t n, i
    cdef const char *s
    cdef uint64_t h
    cdef bytes b
    if PyUnicode_Check(key):
        s = _gg_utf8(key, &n)  # ASCII strings: their own buffer, no copy
        if s == NULL:  # lone surrogates (UnicodeEncodeError): through hash(), as in the twin
            PyErr_Clear()
            return mix64(<uint64_t>hash(key) ^ seed)
        return _xxh64(<const unsigned char *>s, <size_t>n, seed ^ SEED_STR)
    if PyLong_Check(key):
        v = _gg_as_ll(key, &overflow)
        if overflow == 0:
            return _xxh64_u64(<uint64_t>v, seed)
        return _bigint_fingerprint(int(key), seed)
    if PyFloat_CheckExact(key):
        d = PyFloat_AS_DOUBLE(key)
        if isfinite(d) and d == floor(d):  # equal to an int: fingerprint that int
            if -TWO63 <= d < TWO63:
                return _xxh64_u64(<uint64_t><long long>d, seed)
            return _bigint_fingerprint(int(d), seed)
        return _xxh64_u64((<uint64_t *>&d)[0], seed ^ SEED_FLOAT)
    if PyBytes_Check(key):
        return _xxh64(<const unsigned char *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                      seed ^ SEED_BYTES)
    if PyTuple_CheckExact(key):
        n = PyTuple_GET_SIZE(key)
        h = _xxh64_u64(<uint64_t>n, seed ^ SEED_TUPLE)
        for i in range(n):
            h = _xxh64_u64(key_fingerprint(<object>PyTuple_GET_ITEM(key, i), seed), h)
        return h
    return mix64(<uint64_t>hash(key) ^ seed)


cdef uint64_t _bigint_fingerprint(object value, uint64_t seed) except? 0:
    cdef bytes b = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return _xxh64(<const unsigned char *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b),
                  seed ^ SEED_BIGINT)


def key_hash(key, seed):
    """Seeded 64-bit fingerprint of a cache key (see the pure twin)."""
    return key_fingerprint(key, <uint64_t>seed)


cdef long long ceil_pow2(long long n) noexcept:
    cdef long long p = 1
    while p < n:
        p <<= 1
    return p


cdef class FrequencySketch:
    """4-bit Count-Min sketch, depth 4, with periodic halving (Caffeine's FrequencySketch)."""

    def __cinit__(self, long long maxsize):
        if maxsize < 1:
            maxsize = 1
        self.length = max(ceil_pow2(maxsize), 8)
        self.table = <uint64_t *>calloc(self.length, sizeof(uint64_t))
        if self.table == NULL:
            PyErr_NoMemory()
        self.block_mask = (self.length >> 3) - 1
        self.sample_size = 10 * maxsize
        self.size = 0

    def __dealloc__(self):
        free(self.table)

    cdef void increment_c(self, uint64_t h) noexcept:
        cdef long long block = <long long>((h & 0xFFFFFFFFULL) & <uint64_t>self.block_mask) << 3
        cdef uint64_t counter_hash = h >> 32
        cdef uint64_t c, word
        cdef long long slot
        cdef int i, shift
        cdef bint added = False
        for i in range(4):
            c = counter_hash >> (i << 3)
            slot = block + <long long>(c & 1) + (i << 1)
            shift = <int>((c >> 1) & 15) << 2
            word = self.table[slot]
            if (word >> shift) & 15 != 15:
                self.table[slot] = word + (1ULL << shift)
                added = True
        if added:
            self.size += 1
            if self.size == self.sample_size:
                self.reset_c()

    cdef int frequency_c(self, uint64_t h) noexcept:
        cdef long long block = <long long>((h & 0xFFFFFFFFULL) & <uint64_t>self.block_mask) << 3
        cdef uint64_t counter_hash = h >> 32
        cdef uint64_t c
        cdef int i, v, best = 15
        for i in range(4):
            c = counter_hash >> (i << 3)
            v = <int>((self.table[block + <long long>(c & 1) + (i << 1)]
                       >> (((c >> 1) & 15) << 2)) & 15)
            if v < best:
                best = v
        return best

    cdef void reset_c(self) noexcept:
        cdef long long i, odd = 0
        cdef uint64_t w
        for i in range(self.length):
            w = self.table[i]
            odd += __builtin_popcountll(w & ONE_MASK)
            self.table[i] = (w >> 1) & RESET_MASK
        self.size = (self.size - (odd >> 2)) >> 1

    def increment(self, uint64_t h):
        """Count one occurrence of the key with hash ``h`` (saturating at 15)."""
        self.increment_c(h)

    def frequency(self, uint64_t h):
        """Estimated occurrences of ``h`` since the sketch last aged (0..15)."""
        return self.frequency_c(h)

    def reset(self):
        """Halve every counter now (normally done every ``sample_size`` increments)."""
        self.reset_c()

    def state(self):
        return self.size, [self.table[i] for i in range(self.length)]


cdef class HeavyHitters:
    """HeavyKeeper with a top-``k`` table and time-decayed counts (see the pure twin)."""

    def __cinit__(self, long long k, long long width, double half_life, seed):
        cdef long long i, n
        self.k = k
        self.width = ceil_pow2(max(width, 2))
        self.half_life = half_life
        n = 2 * self.width
        self.fp = <uint64_t *>calloc(n, sizeof(uint64_t))
        self.cnt = <int64_t *>calloc(n, sizeof(int64_t))
        self.ptr = <int64_t *>calloc(n, sizeof(int64_t))
        self.hashes = <uint64_t *>calloc(k, sizeof(uint64_t))
        self.counts = <int64_t *>calloc(k, sizeof(int64_t))
        self.keys = <PyObject **>calloc(k, sizeof(PyObject *))
        self.decay = <double *>calloc(DECAY_LIMIT_, sizeof(double))
        if not (self.fp and self.cnt and self.ptr and self.hashes and self.counts and self.keys
                and self.decay):
            PyErr_NoMemory()
        for i in range(n):
            self.ptr[i] = -1
        for i in range(DECAY_LIMIT_):
            self.decay[i] = pow(DECAY_BASE_, -<double>i)
        self.used = 0
        self.min_bound = 0
        self.decay_at = 0.0
        self.started = False
        self.rng = SplitMix64(seed)

    def __dealloc__(self):
        cdef long long s
        if self.keys != NULL:
            for s in range(self.k):
                Py_XDECREF(self.keys[s])
        free(self.fp)
        free(self.cnt)
        free(self.ptr)
        free(self.hashes)
        free(self.counts)
        free(self.keys)
        free(self.decay)

    # -- time ---------------------------------------------------------------------------
    cdef void tick_c(self, double now) noexcept:
        cdef double periods
        cdef long long i
        cdef int shift
        if not isfinite(now):  # a broken clock reading: no halving (and no undefined cast)
            return
        if not self.started:
            self.started = True
            self.decay_at = now
            return
        periods = (now - self.decay_at) / self.half_life
        if periods >= 1.0:
            # cast only below 63: beyond it every count is 0 and the next period starts now
            shift = <int>periods if periods < 63.0 else 63
            for i in range(2 * self.width):
                self.cnt[i] >>= shift
            for i in range(self.used):
                self.counts[i] >>= shift
            self.min_bound >>= shift
            if shift < 63:
                self.decay_at += <double>shift * self.half_life
            else:
                self.decay_at = now

    # -- the stream ---------------------------------------------------------------------
    cdef long long add_c(self, uint64_t h, object key, double now) noexcept:
        cdef uint64_t g, mask
        cdef long long i, j, c, s, est = 0, hint = -1, found = -1, mslot = -1, mval = 0, v
        cdef PyObject *old
        self.tick_c(now)
        g = mix64(h + GOLDEN)
        mask = <uint64_t>(self.width - 1)
        for j in range(2):
            i = j * self.width + <long long>((g >> (32 * j)) & mask)
            c = self.cnt[i]
            if c == 0:
                self.fp[i] = h
                self.cnt[i] = 1
                self.ptr[i] = -1
                if est < 1:
                    est = 1
            elif self.fp[i] == h:
                if c < COUNT_MAX:
                    c += 1
                    self.cnt[i] = c
                if c > est:
                    est = c
                if self.ptr[i] >= 0:
                    hint = self.ptr[i]
            elif c < DECAY_LIMIT_ and self.rng.next_c() < self.decay[c]:
                c -= 1
                if c == 0:
                    self.fp[i] = h
                    self.cnt[i] = 1
                    self.ptr[i] = -1
                    if est < 1:
                        est = 1
                else:
                    self.cnt[i] = c
        if hint >= 0 and self.hashes[hint] == h:
            if est > self.counts[hint]:
                self.counts[hint] = est
            return est
        if self.used == self.k and est <= self.min_bound:
            return est
        for s in range(self.used):
            if self.hashes[s] == h:
                found = s
            v = self.counts[s]
            if mslot < 0 or v < mval:
                mslot = s
                mval = v
        if found >= 0:
            if est > self.counts[found]:
                self.counts[found] = est
            self._point(h, g, found)
            self.min_bound = self._table_min()
            return est
        if self.used < self.k:
            s = self.used
            self.used += 1
        elif est > mval:
            s = mslot
        else:
            self.min_bound = mval
            return est
        self.hashes[s] = h
        self.counts[s] = est
        old = self.keys[s]
        Py_INCREF(key)
        self.keys[s] = <PyObject *>key
        self._point(h, g, s)
        self.min_bound = self._table_min()
        Py_XDECREF(old)  # last: freeing a key may run arbitrary code
        return est

    cdef long long _table_min(self) noexcept:
        cdef long long s, m
        if self.used < self.k:
            return 0
        m = self.counts[0]
        for s in range(1, self.k):
            if self.counts[s] < m:
                m = self.counts[s]
        return m

    cdef void _point(self, uint64_t h, uint64_t g, long long slot) noexcept:
        cdef uint64_t mask = <uint64_t>(self.width - 1)
        cdef long long i, j
        for j in range(2):
            i = j * self.width + <long long>((g >> (32 * j)) & mask)
            if self.cnt[i] > 0 and self.fp[i] == h:
                self.ptr[i] = slot

    cdef long long slot_of_c(self, uint64_t h) noexcept:
        cdef uint64_t g = mix64(h + GOLDEN)
        cdef uint64_t mask = <uint64_t>(self.width - 1)
        cdef long long i, j, p, s
        for j in range(2):
            i = j * self.width + <long long>((g >> (32 * j)) & mask)
            p = self.ptr[i]
            if self.cnt[i] > 0 and self.fp[i] == h and p >= 0 and self.hashes[p] == h:
                return p
        for s in range(self.used):
            if self.hashes[s] == h:
                return s
        return -1

    cdef bint is_hot_c(self, uint64_t h, double now, double min_rate) noexcept:
        cdef long long s
        self.tick_c(now)
        s = self.slot_of_c(h)
        return s >= 0 and self.counts[s] > 0 and \
            <double>self.counts[s] / self._window(now) >= min_rate

    cdef inline double _window(self, double now) noexcept:
        cdef double w = self.half_life
        if now > self.decay_at:
            w += now - self.decay_at
        return w

    # -- Python-visible API (same names as the pure twin) -------------------------------
    def add(self, uint64_t h, key, double now):
        """Count one read of ``key`` (hash ``h``) at ``now``; returns its estimated count."""
        return self.add_c(h, key, now)

    def estimate(self, uint64_t h):
        """HeavyKeeper's count estimate for ``h`` (no update)."""
        cdef uint64_t g = mix64(h + GOLDEN)
        cdef uint64_t mask = <uint64_t>(self.width - 1)
        cdef long long i, j, est = 0
        for j in range(2):
            i = j * self.width + <long long>((g >> (32 * j)) & mask)
            if self.cnt[i] > 0 and self.fp[i] == h and self.cnt[i] > est:
                est = self.cnt[i]
        return est

    def rate(self, uint64_t h, double now):
        """Estimated reads per second of ``h`` if it is in the top-k table, else 0.0."""
        cdef long long s
        self.tick_c(now)
        s = self.slot_of_c(h)
        if s < 0:
            return 0.0
        return <double>self.counts[s] / self._window(now)

    def is_hot(self, uint64_t h, double now, double min_rate):
        """``h`` is in the top-k table with an estimated rate of at least ``min_rate``."""
        return self.is_hot_c(h, now, min_rate)

    def top(self, long long n, double now):
        """Up to ``n`` (key, reads per second) pairs, hottest first. O(k log k)."""
        cdef double window
        cdef long long s
        self.tick_c(now)
        window = self._window(now)
        order = sorted([s for s in range(self.used) if self.counts[s] > 0],
                       key=lambda s: (-self.counts[s], s))
        return [(<object>self.keys[s], <double>self.counts[s] / window)
                for s in order[:max(n, 0)]]

    def clear(self):
        cdef long long i, s
        cdef PyObject *old
        for i in range(2 * self.width):
            self.fp[i] = 0
            self.cnt[i] = 0
            self.ptr[i] = -1
        for s in range(self.k):
            self.hashes[s] = 0
            self.counts[s] = 0
            old = self.keys[s]
            self.keys[s] = NULL
            Py_XDECREF(old)
        self.used = 0
        self.min_bound = 0
        self.started = False
        self.decay_at = 0.0

    def state(self):
        """Everything that decides future answers (for the twins' equivalence tests)."""
        cdef long long i, n = 2 * self.width
        return ([self.fp[i] for i in range(n)], [self.cnt[i] for i in range(n)],
                [self.ptr[i] for i in range(n)], [self.hashes[i] for i in range(self.used)],
                [self.counts[i] for i in range(self.used)],
                [<object>self.keys[i] for i in range(self.used)], self.used,
                self.min_bound, self.decay_at, self.started, self.rng.state)
