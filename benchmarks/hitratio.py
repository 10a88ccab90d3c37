"""Hit ratio of HotKeyCache against a reference W-TinyLFU, LRU and the static optimum.

One seeded run, printed as a table (the same command prints the same table):

* four Zipf cases (``--keys`` keys, ``--requests`` requests, s = 0.8 and 0.99, caches of
  1,000 and 10,000 entries);
* a shifting hot set at both sizes (Zipf 0.99 whose ranks move to fresh keys every
  ``--phase`` x capacity requests: the recency-heavy case a fixed 1 % window handles
  badly, and the adaptive window is for).

The reference is a plain W-TinyLFU written here from the papers, independent of the cache's
own code: a 1 % window LRU, a segmented LRU main (80 % protected), a 4-bit Count-Min sketch
of depth 4 (16 counters per entry) halved every 10x capacity increments, and admission of
the window's LRU only if the sketch counts it more often than the probation LRU
(Einziger, Friedman & Manes, "TinyLFU", ACM ToS 2017).

    .venv/bin/python benchmarks/hitratio.py [--keys 1000000] [--requests 2000000]
"""
from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections import Counter, OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

MASK64 = (1 << 64) - 1
HALVE = bytes(i >> 1 for i in range(256))


def zipf_ranks(n_keys: int, s: float, length: int, rnd: random.Random) -> List[int]:
    cum = list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n_keys)))
    return rnd.choices(range(n_keys), cum_weights=cum, k=length)


def zipf_trace(n_keys: int, s: float, length: int, seed: int) -> List[int]:
    rnd = random.Random(seed)
    ranks = zipf_ranks(n_keys, s, length, rnd)
    perm = list(range(n_keys))  # hot keys are not the small ints
    rnd.shuffle(perm)
    return [perm[r] for r in ranks]


def shifting_trace(n_keys: int, s: float, length: int, phase: int, seed: int) -> List[int]:
    """Zipf(s) ranks; every ``phase`` requests the ranks map to a fresh random region of the
    key space, so the hot set changes at once and the old one goes cold."""
    rnd = random.Random(seed)
    ranks = zipf_ranks(n_keys, s, length, rnd)
    perm = list(range(n_keys))
    rnd.shuffle(perm)
    out: List[int] = []
    for start in range(0, length, phase):
        offset = rnd.randrange(n_keys)
        out.extend(perm[(r + offset) % n_keys] for r in ranks[start:start + phase])
    return out


# -- the reference W-TinyLFU ---------------------------------------------------------------
class CountMin4:
    """4-bit Count-Min sketch, depth 4, ``16 * ceil_pow2(capacity)`` counters in all, every
    counter halved after ``10 * capacity`` increments (TinyLFU's reset)."""

    def __init__(self, capacity: int) -> None:
        width = 1
        while width < 4 * capacity:
            width <<= 1
        self.bits = width.bit_length() - 1
        self.rows = [bytearray(width) for _ in range(4)]
        self.seeds = [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0x27D4EB2F165667C5]
        self.sample = 10 * capacity
        self.count = 0

    def _slots(self, key: int) -> List[int]:
        shift = 64 - self.bits
        out = []
        for seed in self.seeds:
            x = ((key ^ seed) * 0xBF58476D1CE4E5B9) & MASK64
            x = ((x ^ (x >> 31)) * 0x94D049BB133111EB) & MASK64
            out.append(x >> shift)
        return out

    def increment(self, key: int) -> None:
        for row, i in zip(self.rows, self._slots(key)):
            if row[i] < 15:
                row[i] += 1
        self.count += 1
        if self.count >= self.sample:
            self.count = 0
            self.rows = [row.translate(HALVE) for row in self.rows]

    def frequency(self, key: int) -> int:
        return min(row[i] for row, i in zip(self.rows, self._slots(key)))


class ReferenceWTinyLFU:
    """Window LRU (1 %) -> admission by frequency -> SLRU main (probation, protected 80 %)."""

    def __init__(self, capacity: int) -> None:
        self.window_cap = max(1, capacity // 100)
        self.main_cap = capacity - self.window_cap
        self.protected_cap = int(0.8 * self.main_cap)
        self.window: OrderedDict[int, None] = OrderedDict()
        self.probation: OrderedDict[int, None] = OrderedDict()
        self.protected: OrderedDict[int, None] = OrderedDict()
        self.sketch = CountMin4(capacity)

    def access(self, key: int) -> bool:
        self.sketch.increment(key)
        if key in self.window:
            self.window.move_to_end(key)
            return True
        if key in self.protected:
            self.protected.move_to_end(key)
            return True
        if key in self.probation:
            del self.probation[key]
            self.protected[key] = None
            if len(self.protected) > self.protected_cap:
                demoted, _ = self.protected.popitem(last=False)
                self.probation[demoted] = None
            return True
        self.window[key] = None
        if len(self.window) > self.window_cap:
            cand, _ = self.window.popitem(last=False)
            if len(self.probation) + len(self.protected) < self.main_cap:
                self.probation[cand] = None
            else:
                region = self.probation if self.probation else self.protected
                victim = next(iter(region))
                if self.sketch.frequency(cand) > self.sketch.frequency(victim):
                    del region[victim]
                    self.probation[cand] = None
        return False


def ratio_reference(trace: Iterable[int], size: int) -> float:
    cache = ReferenceWTinyLFU(size)
    access = cache.access
    hits = n = 0
    for k in trace:
        n += 1
        hits += access(k)
    return hits / n


def ratio_lru(trace: Iterable[int], size: int) -> float:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = n = 0
    for k in trace:
        n += 1
        if k in cache:
            cache.move_to_end(k)
            hits += 1
        else:
            cache[k] = None
            if len(cache) > size:
                cache.popitem(last=False)
    return hits / n


def ratio_hotcache(trace: Iterable[int], size: int, impl: str) -> float:
    from gameguard import ManualClock, _impl
    from gameguard.hotcache import HotKeyCache
    with _impl.use(impl):
        cache = HotKeyCache(maxsize=size, ttl=float("inf"), clock=ManualClock(), seed=1)
    get, put = cache._core.lookup, cache.set
    miss = cache._MISS
    hits = n = 0
    for k in trace:
        n += 1
        if get(k) is miss:
            put(k, k)
        else:
            hits += 1
    return hits / n


def optimum_static(trace: Sequence[int], size: int) -> float:
    """Hit ratio of holding the ``size`` most frequent keys from the start (static LFU)."""
    return sum(c for _, c in Counter(trace).most_common(size)) / len(trace)


def optimum_static_phases(trace: Sequence[int], size: int, phase: int) -> float:
    """The static optimum of each phase on its own (it knows when the hot set moves)."""
    return sum(optimum_static(trace[i:i + phase], size) * len(trace[i:i + phase])
               for i in range(0, len(trace), phase)) / len(trace)


Case = Tuple[str, int, Callable[[], List[int]], Callable[[List[int], int], float]]


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=2_000_000)
    ap.add_argument("--phase", type=int, default=5,
                    help="requests per hot set in the shifting trace, in cache capacities")
    ap.add_argument("--impl", default="fast", choices=["fast", "pure"])
    ap.add_argument("--only", default="", help="run only cases whose name contains this")
    args = ap.parse_args(argv)
    K, R = args.keys, args.requests
    memo: Dict[Tuple[object, ...], List[int]] = {}

    def zipf(s: float, seed: int) -> Callable[[], List[int]]:
        return lambda: memo.setdefault(("z", s), zipf_trace(K, s, R, seed))

    def shifting(s: float, size: int, seed: int) -> Callable[[], List[int]]:
        return lambda: shifting_trace(K, s, R, args.phase * size, seed)

    def phases(trace: List[int], size: int) -> float:
        return optimum_static_phases(trace, size, args.phase * size)

    cases: List[Case] = [
        ("zipf 0.8", 1000, zipf(0.8, 1), optimum_static),
        ("zipf 0.8", 10_000, zipf(0.8, 1), optimum_static),
        ("zipf 0.99", 1000, zipf(0.99, 2), optimum_static),
        ("zipf 0.99", 10_000, zipf(0.99, 2), optimum_static),
        (f"shifting zipf 0.99, every {args.phase}x size", 1000, shifting(0.99, 1000, 3),
         phases),
        (f"shifting zipf 0.99, every {args.phase}x size", 10_000,
         shifting(0.99, 10_000, 3), phases),
    ]
    print(f"keys={K} requests={R} impl={args.impl} (static optimum of a shifting trace: "
          "per phase)")
    head = ["trace", "size", "LRU", "W-TinyLFU (ref)", "HotKeyCache", "vs ref",
            "static optimum"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    table: Dict[str, Dict[str, float]] = {}
    for name, size, make, best in cases:
        if args.only not in name:
            continue
        trace = make()
        t0 = time.perf_counter()
        row = {"lru": ratio_lru(trace, size), "ref": ratio_reference(trace, size),
               "hotcache": ratio_hotcache(trace, size, args.impl),
               "optimum": best(trace, size)}
        row["vs_ref"] = row["hotcache"] - row["ref"]
        table[f"{name} @ {size}"] = row
        print(f"| {name} | {size:,} | {100 * row['lru']:.2f} % | {100 * row['ref']:.2f} % | "
              f"{100 * row['hotcache']:.2f} % | {100 * row['vs_ref']:+.2f} pts | "
              f"{100 * row['optimum']:.2f} % |", flush=True)
        print(f"  ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
