"""Frequency sketches for the hot-key cache (pure twin of ``_fast/sketch.pyx``).

Two structures, both fed the same seeded 64-bit key hash (:func:`key_hash`):

* :class:`FrequencySketch` -- Caffeine's TinyLFU sketch: a 4-bit Count-Min sketch of depth 4
  whose four counters for a key sit in one 64-byte block, halved ("aged") after
  ``10 * maxsize`` increments. It answers "how often was this key seen lately?" (0..15)
  for admission. ~8 bytes per cache entry.
* :class:`HeavyHitters` -- HeavyKeeper (Gong et al., USENIX ATC 2018) with a top-k table:
  two rows of (fingerprint, count) buckets, a colliding key decays the resident count with
  probability ``1.08 ** -count`` ("count-with-exponential-decay"), so elephants keep their
  buckets and mice wash out. Keys whose estimate beats the smallest top-k count enter the
  table. Every ``half_life`` seconds all counts are halved, so counts measure *recent*
  reads and ``count / (half_life + time since last halving)`` estimates the read rate.

Both are pure functions of their state, the hash and ``now``; random decisions draw from a
:class:`SplitMix64`, so the compiled twin decides bit for bit the same.
"""
from __future__ import annotations

import math
import struct
import threading
from array import array
from typing import Any, ContextManager, List, Tuple

import xxhash

from .kernel import SplitMix64

__all__ = ["mix64", "key_hash", "FrequencySketch", "HeavyHitters", "DECAY_BASE", "DECAY_LIMIT"]

MASK64 = (1 << 64) - 1
RESET_MASK = 0x7777777777777777
ONE_MASK = 0x1111111111111111
GOLDEN = 0x9E3779B97F4A7C15
DECAY_BASE = 1.08   #: HeavyKeeper's b: a count c is decremented with probability b**-c
DECAY_LIMIT = 256   #: counts at or above this never decay (1.08**-256 < 3e-9)
COUNT_MAX = (1 << 31) - 1


def mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit ints with full avalanche."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


_SEED_STR = 0x9E3779B97F4A7C15
_SEED_BYTES = 0xC2B2AE3D27D4EB4F
_SEED_BIGINT = 0x165667B19E3779F9
_SEED_FLOAT = 0x85EBCA77C2B2AE63
_SEED_TUPLE = 0x27D4EB2F165667C5
_I64 = 1 << 63
_xxh = xxhash.xxh64_intdigest


def _u64(value: int, seed: int) -> int:
    """XXH64 of a 64-bit value's 8 little-endian bytes (two's complement)."""
    return _xxh((value & MASK64).to_bytes(8, "little"), seed & MASK64)


def _bigint(value: int, seed: int) -> int:
    return _xxh(value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True),
                seed ^ _SEED_BIGINT)


def key_hash(key: Any, seed: int) -> int:
    """Seeded 64-bit fingerprint of a cache key, for its shard and sketch counters.

    Equal keys get equal fingerprints, as dict lookups need; and none comes from
    ``hash()`` where a client could line keys up on one value (``hash(k)`` is ``k`` modulo
    2**61 - 1 for ints): integers by value (XXH64 of their bytes; ``bool``, ``int``
    subclasses and integral floats are the integers they equal), other floats by their
    bits, ``str`` (UTF-8) and ``bytes`` by their bytes, tuples element by element. Other
    keys fall back to ``mix64(hash(key) ^ seed)``; an exotic number equal to an int
    (``Decimal(2)``, ``Fraction(2)``) is then a different key than that int.
    Raises TypeError for unhashable keys.
    """
    if isinstance(key, str):
        try:
            data = key.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: through hash()
            return mix64((hash(key) & MASK64) ^ seed)
        return _xxh(data, seed ^ _SEED_STR)
    if isinstance(key, int):
        value = int(key)
        return _u64(value, seed) if -_I64 <= value < _I64 else _bigint(value, seed)
    if type(key) is float:
        if math.isfinite(key) and key == math.floor(key):
            value = int(key)
            return _u64(value, seed) if -_I64 <= value < _I64 else _bigint(value, seed)
        return _xxh(struct.pack("<d", key), seed ^ _SEED_FLOAT)
    if isinstance(key, bytes):
        return _xxh(key, seed ^ _SEED_BYTES)
    if type(key) is tuple:
        h = _u64(len(key), seed ^ _SEED_TUPLE)
        for item in key:
            h = _u64(key_hash(item, seed), h)
        return h
    return mix64((hash(key) & MASK64) ^ seed)


def ceil_pow2(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


class FrequencySketch:
    """4-bit Count-Min sketch, depth 4, with periodic halving (Caffeine's FrequencySketch).

    ``increment`` and ``frequency`` are O(1) and touch one 64-byte block. After
    ``sample_size = 10 * maxsize`` successful increments every counter is halved, which
    keeps the sketch about the recent past (TinyLFU's "reset" operation).
    """

    def __init__(self, maxsize: int) -> None:
        maxsize = max(int(maxsize), 1)
        self._length = max(ceil_pow2(maxsize), 8)
        self._table = array("Q", bytes(8 * self._length))
        self._block_mask = (self._length >> 3) - 1
        self._sample_size = 10 * maxsize
        self.size = 0
        self._lock: ContextManager[Any] = threading.Lock()

    # read-only, as in the compiled twin (where they bound C indexing)
    length = property(lambda self: self._length)
    block_mask = property(lambda self: self._block_mask)
    sample_size = property(lambda self: self._sample_size)

    def increment(self, h: int) -> None:
        """Count one occurrence of the key with hash ``h`` (saturating at 15)."""
        with self._lock:
            self._increment(h)

    def _increment(self, h: int) -> None:
        table = self._table
        block = ((h & 0xFFFFFFFF) & self._block_mask) << 3
        counter_hash = h >> 32
        added = False
        for i in range(4):
            c = counter_hash >> (i << 3)
            slot = block + (c & 1) + (i << 1)
            shift = ((c >> 1) & 15) << 2
            word = table[slot]
            if (word >> shift) & 15 != 15:
                table[slot] = word + (1 << shift)
                added = True
        if added:
            self.size += 1
            if self.size == self._sample_size:
                self._reset()

    def frequency(self, h: int) -> int:
        """Estimated occurrences of ``h`` since the sketch last aged (0..15)."""
        table = self._table
        block = ((h & 0xFFFFFFFF) & self._block_mask) << 3
        counter_hash = h >> 32
        best = 15
        for i in range(4):
            c = counter_hash >> (i << 3)
            v = (table[block + (c & 1) + (i << 1)] >> (((c >> 1) & 15) << 2)) & 15
            if v < best:
                best = v
        return best

    def _reset(self) -> None:
        table = self._table
        odd = 0
        for i in range(self._length):
            w = table[i]
            odd += bin(w & ONE_MASK).count("1")
            table[i] = (w >> 1) & RESET_MASK
        self.size = (self.size - (odd >> 2)) >> 1

    def reset(self) -> None:
        """Halve every counter now (normally done every ``sample_size`` increments)."""
        with self._lock:
            self._reset()

    def state(self) -> Tuple[int, List[int]]:
        return self.size, list(self._table)


class HeavyHitters:
    """HeavyKeeper with a top-``k`` table and time-decayed counts: which keys are hot, and
    how many reads per second each gets.

    ``add`` is O(1) for a key already in the table or whose estimate cannot enter it; a key
    that may enter scans the k slots (rare once the table has settled: the smallest count
    is cached as a lower bound and only rises between halvings).
    """

    def __init__(self, k: int, width: int, half_life: float, seed: int) -> None:
        self._k = int(k)
        self._width = ceil_pow2(max(int(width), 2))
        self.half_life = float(half_life)
        n = 2 * self._width
        self._fp = array("Q", bytes(8 * n))
        self._cnt = array("q", bytes(8 * n))
        self._ptr = array("q", [-1]) * n
        self._hashes = array("Q", bytes(8 * self._k))
        self._counts = array("q", bytes(8 * self._k))
        self._keys: List[Any] = [None] * self._k
        self.used = 0
        self.min_bound = 0
        self.decay_at = 0.0
        self.started = False
        self.rng = SplitMix64(seed)
        self._decay = [math.pow(DECAY_BASE, -float(c)) for c in range(DECAY_LIMIT)]
        self._lock: ContextManager[Any] = threading.Lock()

    k = property(lambda self: self._k)          # read-only, as in the compiled twin
    width = property(lambda self: self._width)

    # -- time ---------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        if not math.isfinite(now):  # a broken clock reading: no halving (and no overflow)
            return
        if not self.started:
            self.started = True
            self.decay_at = now
            return
        periods = (now - self.decay_at) / self.half_life
        if periods >= 1.0:
            # halve once per elapsed half-life; from 63 on every count is 0 and the float
            # may not even fit a 64-bit int, so the next period starts now
            shift = int(periods) if periods < 63.0 else 63
            cnt = self._cnt
            for i in range(2 * self._width):
                cnt[i] >>= shift
            counts = self._counts
            for s in range(self.used):
                counts[s] >>= shift
            self.min_bound >>= shift
            if shift < 63:
                self.decay_at += shift * self.half_life
            else:
                self.decay_at = now

    # -- the stream ---------------------------------------------------------------------
    def add(self, h: int, key: Any, now: float) -> int:
        """Count one read of ``key`` (hash ``h``) at ``now``; returns its estimated count."""
        with self._lock:
            return self._add(h, key, now)

    def _add(self, h: int, key: Any, now: float) -> int:
        self._tick(now)
        g = mix64((h + GOLDEN) & MASK64)
        mask = self._width - 1
        fp, cnt, ptr = self._fp, self._cnt, self._ptr
        est = 0
        hint = -1
        for j in range(2):
            i = j * self._width + ((g >> (32 * j)) & mask)
            c = cnt[i]
            if c == 0:
                fp[i] = h
                cnt[i] = 1
                ptr[i] = -1
                if est < 1:
                    est = 1
            elif fp[i] == h:
                if c < COUNT_MAX:
                    c += 1
                    cnt[i] = c
                if c > est:
                    est = c
                if ptr[i] >= 0:
                    hint = ptr[i]
            elif c < DECAY_LIMIT and self.rng.next_float() < self._decay[c]:
                c -= 1
                if c == 0:
                    fp[i] = h
                    cnt[i] = 1
                    ptr[i] = -1
                    if est < 1:
                        est = 1
                else:
                    cnt[i] = c
        counts = self._counts
        if hint >= 0 and self._hashes[hint] == h:
            if est > counts[hint]:
                counts[hint] = est
            return est
        if self.used == self._k and est <= self.min_bound:
            return est
        # may enter: find it (a lost pointer) or the smallest slot
        hashes = self._hashes
        found = -1
        mslot = -1
        mval = 0
        for s in range(self.used):
            if hashes[s] == h:
                found = s
            v = counts[s]
            if mslot < 0 or v < mval:
                mslot = s
                mval = v
        if found >= 0:
            if est > counts[found]:
                counts[found] = est
            self._point(h, g, found)
            self.min_bound = self._table_min()
            return est
        if self.used < self._k:
            s = self.used
            self.used += 1
        elif est > mval:
            s = mslot
        else:
            self.min_bound = mval
            return est
        hashes[s] = h
        counts[s] = est
        self._point(h, g, s)
        self.min_bound = self._table_min()
        old = self._keys[s]
        self._keys[s] = key
        del old  # last: freeing a key may run arbitrary code
        return est

    def _table_min(self) -> int:
        if self.used < self._k:
            return 0
        return min(self._counts)

    def _point(self, h: int, g: int, slot: int) -> None:
        mask = self._width - 1
        for j in range(2):
            i = j * self._width + ((g >> (32 * j)) & mask)
            if self._cnt[i] > 0 and self._fp[i] == h:
                self._ptr[i] = slot

    def _slot_of(self, h: int) -> int:
        g = mix64((h + GOLDEN) & MASK64)
        mask = self._width - 1
        for j in range(2):
            i = j * self._width + ((g >> (32 * j)) & mask)
            p = self._ptr[i]
            if self._cnt[i] > 0 and self._fp[i] == h and p >= 0 and self._hashes[p] == h:
                return p
        for s in range(self.used):
            if self._hashes[s] == h:
                return s
        return -1

    # -- queries ------------------------------------------------------------------------
    def _window(self, now: float) -> float:
        # a clock read a hair behind the last halving (coarse vs fine) must not shrink it
        w = self.half_life
        if now > self.decay_at:
            w += now - self.decay_at
        return w

    def estimate(self, h: int) -> int:
        """HeavyKeeper's count estimate for ``h`` (no update)."""
        g = mix64((h + GOLDEN) & MASK64)
        mask = self._width - 1
        est = 0
        for j in range(2):
            i = j * self._width + ((g >> (32 * j)) & mask)
            if self._cnt[i] > 0 and self._fp[i] == h and self._cnt[i] > est:
                est = self._cnt[i]
        return est

    def rate(self, h: int, now: float) -> float:
        """Estimated reads per second of ``h`` if it is in the top-k table, else 0.0."""
        with self._lock:
            self._tick(now)
            s = self._slot_of(h)
            if s < 0:
                return 0.0
            return self._counts[s] / self._window(now)

    def is_hot(self, h: int, now: float, min_rate: float) -> bool:
        """``h`` is in the top-k table with an estimated rate of at least ``min_rate``."""
        with self._lock:
            return self._is_hot(h, now, min_rate)

    def _is_hot(self, h: int, now: float, min_rate: float) -> bool:
        self._tick(now)
        s = self._slot_of(h)
        return s >= 0 and self._counts[s] > 0 and \
            self._counts[s] / self._window(now) >= min_rate

    def top(self, n: int, now: float) -> List[Tuple[Any, float]]:
        """Up to ``n`` (key, reads per second) pairs, hottest first. O(k log k)."""
        with self._lock:
            self._tick(now)
            window = self._window(now)
            order = sorted((s for s in range(self.used) if self._counts[s] > 0),
                           key=lambda s: (-self._counts[s], s))
            return [(self._keys[s], self._counts[s] / window) for s in order[:max(n, 0)]]

    def clear(self) -> None:
        with self._lock:
            n = 2 * self._width
            for i in range(n):
                self._fp[i] = 0
                self._cnt[i] = 0
                self._ptr[i] = -1
            for s in range(self._k):
                self._hashes[s] = 0
                self._counts[s] = 0
                self._keys[s] = None
            self.used = 0
            self.min_bound = 0
            self.started = False
            self.decay_at = 0.0

    def state(self) -> tuple[Any, ...]:
        """Everything that decides future answers (for the twins' equivalence tests)."""
        return (list(self._fp), list(self._cnt), list(self._ptr), list(self._hashes[:self.used]),
                list(self._counts[:self.used]), list(self._keys[:self.used]), self.used,
                self.min_bound, self.decay_at, self.started, self.rng.state)
