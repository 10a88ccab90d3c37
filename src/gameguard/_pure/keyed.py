"""The per-key limiter table (pure twin of ``_fast/keyed.pyx``).

**Layout.** Open addressing with linear probing over three parallel typed arrays
(fingerprint ``Q``, ``a`` and ``last`` as ``d``): 24 bytes per slot, the same in both twins,
and no Python object per key. ``a`` is the key's tokens (``kind=TOKEN``) or its bucket
level (``kind=LEAKY``); ``last`` is when the key was last touched (and counted).
The home slot of a fingerprint is ``floor(fp * slots / 2**64)`` (Lemire's range
reduction, so the table need not be a power of two). The table starts at 64 slots and
grows up to ``ceil(1.25 * max_keys)`` slots (load factor ≤ 0.8), so memory is bounded by
``max_keys``: 30 bytes per key when full.

**Keys.** A key is identified by a 64-bit fingerprint seeded with a per-process secret:
the cache's ``key_hash`` (``_pure/sketch.py``; compiled: ``key_fingerprint`` of
``_fast/sketch.pxd``), so the limiter and :class:`~gameguard.HotKeyCache` agree on key
identity: equal keys are one key (``1``, ``1.0``, ``True``), ``str``/``bytes`` by their
bytes, tuples element by element; other hashables through ``hash()`` mixed with the seed.
Python's own ``hash()`` alone would not do for ints: they hash to themselves modulo
2**61-1, so a client choosing ids could pile every key into one probe chain. With a secret
seed the attacker cannot predict slots; two distinct keys share a bucket with probability
2**-64 (for keys hashed through ``hash()``: when their ``hash()`` collides). Comparing
fingerprints only also means no user ``__eq__`` runs inside an update.

**Eviction**. A key is *reclaimable* when dropping it loses nothing (its
bucket has refilled: tokens back to capacity, or the leaky level drained) or it has been
idle ``idle_ttl`` seconds. Evictions are whole-table passes that mark dropped entries and
then compact (every survivor re-placed from its home in one O(slots) pass); deleting
entries one by one as keys arrive would thin the table unevenly and grow long probe
chains where it stays dense. A pass runs when a new key arrives and

* the table holds ``max_keys``: every reclaimable key goes; if that freed less than
  ``max_keys // 8``, the stalest keys (smallest ``last``, found with a 256-bin histogram;
  ties spread evenly over the slots) go until it has;
* the load would pass 0.8 below the size cap: reclaimable keys go, and the table grows
  unless that brought the load under 0.6;
* a table's worth of new keys arrived since the last pass: reclaimable keys go (so idle
  keys leave even when nothing presses).

Each pass is O(slots) and frees or follows Ω(slots) insertions: amortised O(1) per new key.
"""
from __future__ import annotations

import math
import struct
import threading
import time
from array import array
from typing import Any, Callable, List, Optional, Tuple

import xxhash

from ..errors import ConfigurationError
from .bucket import MAX_INDEX, as_double, lv_level, lv_wait, tb_level, tb_wait
from .sketch import key_hash as _key_hash
from .kernel import REJECT, GuardKernel

__all__ = ["TOKEN", "LEAKY", "ENTRY_BYTES", "MIN_SLOTS", "BINS", "KeyedTable", "KeyView",
           "xxh64_int", "xxh64_bytes", "slots_for"]

TOKEN = 0
LEAKY = 1
ENTRY_BYTES = 24
MIN_SLOTS = 64
BINS = 256

_MASK = (1 << 64) - 1

_xxh = xxhash.xxh64_intdigest
_pack_q = struct.Struct("<q").pack
_monotonic = time.monotonic
_INF = math.inf


def xxh64_int(v: int, seed: int) -> int:
    return _xxh(_pack_q(v), seed)


def xxh64_bytes(b: bytes, seed: int) -> int:
    return _xxh(b, seed)


def slots_for(max_keys: int) -> int:
    """Slots of a full table: load factor at most 0.8."""
    return (max_keys * 5 + 3) // 4


class KeyedTable(GuardKernel):
    """Bounded table of per-key buckets (``kind`` TOKEN or LEAKY)."""

    def __init__(self, kind: int, rate: float, capacity: float, max_keys: int,
                 idle_ttl: float, seed: int, clock: Optional[Callable[[], float]] = None) -> None:
        super().__init__()
        if kind != TOKEN and kind != LEAKY:
            raise ValueError(f"kind must be TOKEN or LEAKY, got {kind}")
        if max_keys < 1 or max_keys > (1 << 31):
            raise ValueError(f"max_keys out of range: {max_keys}")
        self.kind = kind
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.idle_ttl = float(idle_ttl)
        self.max_keys = int(max_keys)
        self.max_slots = slots_for(self.max_keys)
        self.seed = seed & _MASK
        self.clock = clock
        self.slots = MIN_SLOTS if self.max_slots > MIN_SLOTS else self.max_slots
        self.count = 0
        self.since_sweep = 0
        self.evicted_full = self.evicted_idle = self.evicted_stale = self.sweeps = 0
        self._alloc(self.slots)
        self._lock = threading.RLock()  # type: ignore[assignment]

    def _alloc(self, n: int) -> None:
        self._fp = array("Q", bytes(8 * n))
        self._a = array("d", bytes(8 * n))
        self._last = array("d", bytes(8 * n))

    # -- keys -------------------------------------------------------------------------------
    def fingerprint(self, key: Any) -> int:
        """The key's seeded 64-bit fingerprint (never 0): the cache's ``key_hash``, so the
        limiter and the cache agree on key identity (equal keys are one key)."""
        return _key_hash(key, self.seed) or 1

    # -- table ------------------------------------------------------------------------------
    @staticmethod
    def _home(fp: int, n: int) -> int:
        return (fp * n) >> 64

    def _find(self, fp: int) -> int:
        """Slot of ``fp``, or ``-(empty slot) - 1`` where it would go."""
        n = self.slots
        fps = self._fp
        i = (fp * n) >> 64
        while True:
            f = fps[i]
            if f == 0:
                return -i - 1
            if f == fp:
                return i
            i += 1
            if i == n:
                i = 0

    def _grow(self) -> None:
        old_n = self.slots
        new_n = old_n * 2
        if new_n > self.max_slots:
            new_n = self.max_slots
        ofp, oa, olast = self._fp, self._a, self._last
        self._alloc(new_n)
        fps, a, last = self._fp, self._a, self._last
        for i in range(old_n):
            f = ofp[i]
            if f != 0:
                j = (f * new_n) >> 64
                while fps[j] != 0:
                    j += 1
                    if j == new_n:
                        j = 0
                fps[j], a[j], last[j] = f, oa[i], olast[i]
        self.slots = new_n

    def _reclaimable(self, i: int, now: float) -> bool:
        """Dropping it loses nothing (bucket back to full) or it has been idle too long."""
        last = self._last[i]
        if now - last >= self.idle_ttl:
            return True
        if self.kind == TOKEN:
            return tb_level(self._a[i], last, now, self.rate, self.capacity) >= self.capacity
        return lv_level(self._a[i], last, now, self.rate) <= 0.0

    def _count_eviction(self, i: int, now: float) -> None:
        if now - self._last[i] >= self.idle_ttl:
            self.evicted_idle += 1
        else:
            self.evicted_full += 1

    def _mark_reclaimable(self, now: float) -> Tuple[int, float, float]:
        # marks dead entries with last = -inf; _compact() removes them
        marked = 0
        lo, hi = _INF, -_INF
        fps, lasts = self._fp, self._last
        for i in range(self.slots):
            if fps[i] == 0:
                continue
            if self._reclaimable(i, now):
                self._count_eviction(i, now)
                lasts[i] = -_INF
                marked += 1
            else:
                last = lasts[i]
                if last < lo:
                    lo = last
                if last > hi:
                    hi = last
        return marked, lo, hi

    def _compact(self, marked: int) -> None:
        """Drop the marked entries and re-place the rest, in one O(slots) pass.

        Starting just after an empty slot s, each live entry is taken out and re-inserted
        from its home: it lands between its home and where it was (both after s), so every
        entry already placed stays reachable. Bulk backward-shift deletions would cost
        O(cluster) each instead.
        """
        n = self.slots
        fps, a, lasts = self._fp, self._a, self._last
        s = 0
        while fps[s] != 0:
            s += 1
        p = s
        for _ in range(1, n):
            p += 1
            if p == n:
                p = 0
            f = fps[p]
            if f == 0:
                continue
            ea, elast = a[p], lasts[p]
            fps[p] = 0
            a[p] = 0.0
            lasts[p] = 0.0
            if elast == -_INF:
                continue
            j = (f * n) >> 64
            while fps[j] != 0:
                j += 1
                if j == n:
                    j = 0
            fps[j], a[j], lasts[j] = f, ea, elast
        self.count -= marked
        self.since_sweep = 0

    def _reclaim(self, now: float) -> None:
        self.sweeps += 1
        self._compact(self._mark_reclaimable(now)[0])

    @staticmethod
    def _bin(last: float, lo: float, hi: float) -> int:
        if not hi > lo:
            return 0
        b = int((last - lo) / (hi - lo) * BINS)
        return BINS - 1 if b >= BINS else b

    def _make_room(self, now: float) -> None:
        """Table full: drop every reclaimable key; if that frees less than an eighth of the
        table, drop the stalest keys (smallest ``last``) until it does."""
        target = self.max_keys // 8
        if target < 1:
            target = 1
        self.sweeps += 1
        marked, lo, hi = self._mark_reclaimable(now)
        if marked < target and marked < self.count:
            need = target - marked
            hist = [0] * BINS
            fps, lasts = self._fp, self._last
            ninf = -_INF
            for i in range(self.slots):
                if fps[i] != 0 and lasts[i] != ninf:
                    hist[self._bin(lasts[i], lo, hi)] += 1
            below = 0
            cut = 0
            while cut < BINS - 1 and below + hist[cut] < need:
                below += hist[cut]
                cut += 1
            need -= below  # to take from bin `cut`
            # spread those evenly over the table (Bresenham): evicting the first ones in
            # slot order would leave one dense region with long probe chains
            acc = 0
            for i in range(self.slots):
                if fps[i] != 0 and lasts[i] != ninf:
                    b = self._bin(lasts[i], lo, hi)
                    if b == cut:
                        acc += need
                        if acc < hist[cut]:
                            continue
                        acc -= hist[cut]
                    elif b > cut:
                        continue
                    self.evicted_stale += 1
                    lasts[i] = ninf
                    marked += 1
        self._compact(marked)

    def _slot_for_new(self, fp: int, now: float) -> int:
        # every eviction is a whole-table pass (mark, then compact): deleting here and there
        # as keys arrive would thin the table behind a cursor and pile up long probe chains
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
        self._fp[i] = fp
        self._last[i] = now
        self._a[i] = self.capacity if self.kind == TOKEN else 0.0
        self.count += 1
        return i

    def _take(self, now: float, fp: int, cost: float) -> bool:
        if not abs(now) < MAX_INDEX:  # NaN too: the compiled eviction bins times into ints
            raise ValueError(f"clock reading {now!r} is not a usable time")
        with self._lock:
            i = self._find(fp)
            if i < 0:
                i = self._slot_for_new(fp, now)
            a, lasts = self._a, self._last
            if self.kind == TOKEN:
                last = lasts[i]
                if now > last:
                    t = a[i] + (now - last) * self.rate
                    a[i] = self.capacity if t > self.capacity else t
                    lasts[i] = now
                if a[i] >= cost:
                    a[i] -= cost
                    return True
                return False
            last = lasts[i]
            if now > last:
                t = a[i] - (now - last) * self.rate
                a[i] = 0.0 if t < 0.0 else t
                lasts[i] = now
            if a[i] + cost <= self.capacity:
                a[i] += cost
                return True
            return False

    def _check_cost(self, cost: float) -> None:
        if not (cost > 0.0 and cost <= self.capacity):
            raise ConfigurationError(
                f"cost must be a number in (0, capacity={self.capacity!r}], got {cost!r}")

    # -- public kernel API ----------------------------------------------------------------
    def try_acquire(self, key: Any, cost: float = 1.0) -> bool:
        """Admit ``cost`` for ``key`` now, reading the kernel's clock."""
        cost = as_double("cost", cost)
        if not (cost > 0.0 and cost <= self.capacity):
            self._check_cost(cost)
        fp = self.fingerprint(key)
        clock = self.clock
        admitted = self._take(_monotonic() if clock is None else float(clock()), fp, cost)
        # the tally written out (GuardKernel._tally's line): a method call per decision is a
        # few per cent of this path
        self._counts[0 if admitted else 3] += 1
        return admitted

    def acquire_at(self, now: float, key: Any, cost: float) -> bool:
        return self._take(float(now), self.fingerprint(key), float(cost))

    def acquire_fp(self, now: float, fp: int, cost: float) -> bool:
        return self._take(float(now), fp, float(cost))

    def _delay(self, now: float, fp: int, cost: float) -> float:
        with self._lock:
            i = self._find(fp)
            if i < 0:
                return 0.0
            if self.kind == TOKEN:
                return tb_wait(self._a[i], self._last[i], now, self.rate, self.capacity, cost)
            return lv_wait(self._a[i], self._last[i], now, self.rate, self.capacity, cost)

    def delay_at(self, now: float, key: Any, cost: float) -> float:
        """Seconds until ``key`` could take ``cost`` (0.0 for an unknown key)."""
        return self._delay(float(now), self.fingerprint(key), float(cost))

    def delay_fp(self, now: float, fp: int, cost: float) -> float:
        return self._delay(float(now), fp, float(cost))

    def level_at(self, now: float, key: Any) -> float:
        """Tokens left (token kind) or bucket level (leaky kind) of ``key``."""
        now = float(now)
        with self._lock:
            i = self._find(self.fingerprint(key))
            if i < 0:
                return self.capacity if self.kind == TOKEN else 0.0
            if self.kind == TOKEN:
                return tb_level(self._a[i], self._last[i], now, self.rate, self.capacity)
            return lv_level(self._a[i], self._last[i], now, self.rate)

    def __len__(self) -> int:
        return self.count

    def __contains__(self, key: Any) -> bool:
        with self._lock:
            return self._find(self.fingerprint(key)) >= 0

    def purge(self, now: float) -> int:
        """Drop every reclaimable key now (O(slots)); how many were dropped."""
        with self._lock:
            marked = self._mark_reclaimable(float(now))[0]
            self.sweeps += 1
            self._compact(marked)
            return marked

    def configure(self, now: float, rate: float, capacity: float, idle_ttl: float) -> None:
        """Settle every key at the old rate up to ``now`` (O(slots)), then switch. Tokens
        are clipped to the new capacity (never raised); a leaky level is kept (lowering it
        would free room)."""
        now = float(now)
        if not abs(now) < MAX_INDEX:
            raise ValueError(f"clock reading {now!r} is not a usable time")
        with self._lock:
            a, lasts, cap = self._a, self._last, float(capacity)
            for i in range(self.slots):
                if self._fp[i] == 0:
                    continue
                if self.kind == TOKEN:
                    v = tb_level(a[i], lasts[i], now, self.rate, self.capacity)
                    a[i] = cap if v > cap else v
                else:
                    a[i] = lv_level(a[i], lasts[i], now, self.rate)
                if now > lasts[i]:
                    lasts[i] = now
            self.rate, self.capacity, self.idle_ttl = float(rate), cap, float(idle_ttl)

    def clear(self) -> None:
        with self._lock:
            self._alloc(self.slots)
            self.count = 0
            self.since_sweep = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the entry arrays (the table's whole per-key memory)."""
        return self.slots * ENTRY_BYTES

    def dump(self) -> List[Tuple[int, int, float, float]]:
        """``[(slot, fingerprint, a, last)]`` of occupied slots (for tests)."""
        return [(i, self._fp[i], self._a[i], self._last[i])
                for i in range(self.slots) if self._fp[i] != 0]

    def view(self, key: Any) -> "KeyView":
        view = KeyView(self, self.fingerprint(key))
        view.share_counts(self)  # every key counts into the table
        return view

    def enter(self, now: float) -> int:
        raise TypeError("a KeyedTable needs a key: use view(key)")


class KeyView(GuardKernel):
    """One key of a :class:`KeyedTable`, as a guard kernel (cost 1 per call)."""

    def __init__(self, table: KeyedTable, fp: int) -> None:
        super().__init__()
        self.table = table
        self.fp = fp

    def enter(self, now: float) -> int:
        return 0 if self.table._take(now, self.fp, 1.0) else REJECT

    def retry_after(self, now: float) -> float:
        return self.table._delay(now, self.fp, 1.0)
