"""Hit ratio of HotKeyCache (TinyLFU admission) against plain LRU on synthetic traces.

Traces: Zipf(s) over ``--keys`` keys for s = 0.8, 1.0, 1.2, and a scan-polluted trace
(Zipf 0.8 with every third request a never-repeated scan key). Caches hold ``--size``
(default 1 %) of the key space. Peers: ``functools.lru_cache`` (its own ``cache_info``) and
cachetools ``LRUCache`` (skipped, and said so, when not installed). Seeded: the same
command prints the same table.

    .venv/bin/python benchmarks/hitratio.py [--keys 100000] [--requests 1000000]
"""
from __future__ import annotations

import argparse
import functools
import itertools
import random
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional


def zipf_trace(n_keys: int, s: float, length: int, seed: int) -> List[int]:
    rnd = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n_keys)))
    keys = rnd.choices(range(n_keys), cum_weights=cum, k=length)
    perm = list(range(n_keys))  # hot keys are not the small ints
    rnd.shuffle(perm)
    return [perm[k] for k in keys]


def scan_polluted(n_keys: int, length: int, seed: int) -> List[int]:
    base = zipf_trace(n_keys, 0.8, length, seed)
    scan = itertools.count(10 * n_keys)
    return [next(scan) if i % 3 == 2 else k for i, k in enumerate(base)]


def ratio_hotcache(trace: Iterable[int], size: int, shards: int, impl: str) -> float:
    from gameguard import ManualClock, _impl
    from gameguard.hotcache import HotKeyCache
    with _impl.use(impl):
        cache = HotKeyCache(maxsize=size, ttl=float("inf"), shards=shards, clock=ManualClock(),
                            seed=1)
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


def ratio_lru_cache(trace: Iterable[int], size: int) -> float:
    f = functools.lru_cache(maxsize=size)(lambda k: k)
    for k in trace:
        f(k)
    info = f.cache_info()
    return info.hits / (info.hits + info.misses)


def ratio_cachetools(trace: Iterable[int], size: int) -> Optional[float]:
    try:
        import cachetools
    except ImportError:
        return None
    c = cachetools.LRUCache(maxsize=size)
    hits = n = 0
    for k in trace:
        n += 1
        if k in c:
            c[k]  # touch (LRU order)
            hits += 1
        else:
            c[k] = k
    return hits / n


def optimum_static(trace: List[int], size: int) -> float:
    """Hit ratio of holding the ``size`` most frequent keys (the static-LFU bound)."""
    from collections import Counter
    counts = Counter(trace)
    return sum(c for _, c in counts.most_common(size)) / len(trace)


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, Optional[float]]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--size", type=float, default=0.01, help="cache size / key space")
    ap.add_argument("--impl", default="fast", choices=["fast", "pure"])
    args = ap.parse_args(argv)
    size = max(1, int(args.keys * args.size))
    traces: Dict[str, Callable[[], List[int]]] = {
        "zipf 0.8": lambda: zipf_trace(args.keys, 0.8, args.requests, 1),
        "zipf 1.0": lambda: zipf_trace(args.keys, 1.0, args.requests, 2),
        "zipf 1.2": lambda: zipf_trace(args.keys, 1.2, args.requests, 3),
        "scan-polluted (zipf 0.8 + 1/3 scan)": lambda: scan_polluted(args.keys, args.requests, 4),
    }
    print(f"keys={args.keys} requests={args.requests} cache size={size} "
          f"({args.size:.1%}), impl={args.impl}")
    head = ["trace", "lru_cache", "cachetools LRU", "HotKeyCache", "HotKeyCache 1 shard",
            "static optimum", "gain vs LRU"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    table: Dict[str, Dict[str, Optional[float]]] = {}
    skipped = False
    for name, make in traces.items():
        trace = make()
        t0 = time.perf_counter()
        row: Dict[str, Optional[float]] = {
            "lru_cache": ratio_lru_cache(trace, size),
            "cachetools": ratio_cachetools(trace, size),
            "hotcache": ratio_hotcache(trace, size, 64, args.impl),
            "hotcache_1": ratio_hotcache(trace, size, 1, args.impl),
            "optimum": optimum_static(trace, size),
        }
        skipped |= row["cachetools"] is None
        lru = row["lru_cache"] or 0.0
        row["gain"] = (row["hotcache"] or 0.0) - lru
        table[name] = row

        def pct(v: Optional[float]) -> str:
            return "n/a" if v is None else f"{100 * v:.1f} %"
        print(f"| {name} | {pct(row['lru_cache'])} | {pct(row['cachetools'])} | "
              f"{pct(row['hotcache'])} | {pct(row['hotcache_1'])} | {pct(row['optimum'])} | "
              f"{100 * row['gain']:+.1f} pts |", flush=True)
        print(f"  ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    if skipped:
        print("cachetools not installed: its column is n/a")
    return table


if __name__ == "__main__":
    main()
