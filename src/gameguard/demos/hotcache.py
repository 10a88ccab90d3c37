"""Demo: an auction's hot key expiring under load, with and without gameguard.

A seeded, simulated second-by-second run (ManualClock, asyncio tasks, no real sleeping):
players read the current bid of one auction item ~``rate`` times a second; the cached
value lives ``ttl`` seconds and a database load takes ``latency`` seconds.

* **naive**: a dict with expiry. When the key expires, every read during the reload misses
  and sends its own query: the database sees a spike of ``rate * latency`` loads.
* **gameguard**: :class:`~gameguard.HotKeyCache` ``get_or_load_async``. The heavy-hitter
  sketch knows the key is hot, so one reader refreshes it at 80 % of its TTL while the
  others keep reading the valid value: the key never expires, one load per refresh.

Run it: ``python -m gameguard.demos.hotcache``.
"""
from __future__ import annotations

import asyncio
import random
from typing import Any, Callable, Dict, List

from ..clock import ManualClock
from ..hotcache import HotKeyCache
from . import header

__all__ = ["run"]

KEY = "auction:4711:bid"


class _Database:
    """Counts loads per simulated second; a load completes ``latency`` seconds later."""

    def __init__(self, clock: ManualClock, latency: float, seconds: int) -> None:
        self.clock = clock
        self.latency = latency
        self.per_second = [0] * (seconds + 1)
        self.pending: List[tuple[Any, ...]] = []  # (done_at, future)
        self.version = 0

    async def load(self, key: str) -> int:
        self.per_second[min(int(self.clock()), len(self.per_second) - 1)] += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((self.clock() + self.latency, fut))
        await fut
        self.version += 1
        return 1000 + self.version

    def complete_due(self) -> None:
        now = self.clock()
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)


async def _simulate(mode: str, seed: int, rate: float, ttl: float, latency: float,
                    seconds: int, tick: float) -> Dict[str, Any]:
    rnd = random.Random(seed)
    clock = ManualClock()
    db = _Database(clock, latency, seconds)
    misses = reads = 0
    tasks: List["asyncio.Task[Any]"] = []

    if mode == "gameguard":
        cache = HotKeyCache(maxsize=10_000, ttl=ttl, clock=clock, seed=seed, name="item-cache")

        async def read() -> Any:
            return await cache.get_or_load_async(KEY, db.load)
    else:
        store: Dict[str, tuple[Any, ...]] = {}

        async def read() -> Any:
            nonlocal misses
            hit = store.get(KEY)
            if hit is not None and clock() < hit[1]:
                return hit[0]
            misses += 1
            value = await db.load(KEY)
            store[KEY] = (value, clock() + ttl)
            return value

    loop = asyncio.get_running_loop()
    per_tick = rate * tick
    steps = int(round(seconds / tick))
    warm_misses = 0
    for step in range(steps):
        if step == int(round(1.0 / tick)):  # the cold start is over: count misses from here
            warm_misses = cache.stats()["misses"] if mode == "gameguard" else misses
        n = int(per_tick) + (1 if rnd.random() < per_tick - int(per_tick) else 0)
        for _ in range(n):
            reads += 1
            tasks.append(loop.create_task(read()))
        for _ in range(3):  # let the tasks run until they finish or wait on the database
            await asyncio.sleep(0)
        tasks = [t for t in tasks if not t.done()]
        clock.advance(tick)
        db.complete_due()
    clock.advance(latency)
    db.complete_due()
    await asyncio.gather(*tasks)
    if mode == "gameguard":
        misses = cache.stats()["misses"]
    loads = db.per_second[:seconds]
    return {"reads": reads, "misses": misses, "misses_after_warmup": misses - warm_misses,
            "loads": sum(loads),
            "peak_loads_per_s": max(loads), "loads_per_s": loads}


def run(seed: int = 7, out: Callable[[str], Any] = print, *, rate: float = 2000.0,
        ttl: float = 10.0, latency: float = 0.05, seconds: int = 25) -> Dict[str, Any]:
    """Run both simulations and print database loads per second side by side.

    Returns ``{"naive": {...}, "gameguard": {...}, "seconds", "rate", "ttl", "latency"}``
    where each side has ``reads``, ``misses``, ``misses_after_warmup`` (after the first
    second), ``loads``, ``peak_loads_per_s`` and ``loads_per_s``. Deterministic for a given
    ``seed``; takes about a second.
    """
    tick = 0.001
    naive = asyncio.run(_simulate("naive", seed, rate, ttl, latency, seconds, tick))
    guarded = asyncio.run(_simulate("gameguard", seed, rate, ttl, latency, seconds, tick))
    header(out, "Hot-key cache: an auction's hot key expires under load",
           f"~{rate:.0f} reads/s of one key, TTL {ttl:g} s, a database load takes "
           f"{latency * 1000:g} ms.",
           "naive: a dict with expiry; gameguard: HotKeyCache.get_or_load_async. Each row is",
           "a simulated second with a load in it and the database loads each made in it.")
    out(f"  {'second':>6} {'naive':>7} {'gameguard':>10}")
    for s in range(seconds):
        a, b = naive["loads_per_s"][s], guarded["loads_per_s"][s]
        if a or b:
            out(f"  {s:>6} {a:>7} {b:>10}")
    out(f"  {'total':>6} {naive['loads']:>7} {guarded['loads']:>10}")
    out(f"  reads that missed after the cold start: naive {naive['misses_after_warmup']}, "
        f"gameguard {guarded['misses_after_warmup']} (of {guarded['reads']} reads)")
    out(f"  peak database loads per second: naive {naive['peak_loads_per_s']}, "
        f"gameguard {guarded['peak_loads_per_s']}")
    return {"naive": naive, "gameguard": guarded, "seconds": seconds, "rate": rate,
            "ttl": ttl, "latency": latency}


if __name__ == "__main__":
    run()
