"""Limits through Redis side by side with ``limits``' Redis storage, on one loopback server.

Every case decides for 1000 player keys in turn (admitted: a huge rate), against the same
``redis-server`` started for the run (a fresh one on a free loopback port):
* ``bare_ping``: one PING round trip, the floor any networked decision pays;
* ``gameguard_sync`` / ``gameguard_async``: ``try_acquire`` / ``await try_acquire_async``,
  one EVALSHA a decision; ``gameguard_many``: ``try_acquire_many`` of 100 keys, one pipelined
  round trip (per-decision figures); ``gameguard_lease8`` / ``gameguard_lease64``: ``lease=n``
  on 10 hot keys (leasing is for hot keys: a cold key's lease lapses unspent);
* ``limits_moving`` / ``limits_sliding``: limits' moving window and sliding window counter
  (``RedisStorage``), the Python peers with a Redis backend.

The report (decisions/s, p50/p99 latency per call, ratios; and the leasing trade-off:
admitted over the bound ``capacity + rate*W`` in the worst W-second window, 4 backends
standing for 4 processes on one hot key)::

    .venv/bin/python benchmarks/bench_redis.py [--seconds 1.0]

Under pytest-benchmark (``make bench``) the same cases run in group ``redis`` (``bare`` is
the PING), LOOP decisions a round, a few rounds.
"""
from __future__ import annotations

import asyncio
import itertools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import redis
import redis.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from redis_servers import RedisServer  # noqa: E402 - the tests' own server fixture code

from gameguard import KeyedLimiter  # noqa: E402
from gameguard.redis import RedisBackend  # noqa: E402

try:
    from conftest import LOOP
except ImportError:  # run as a script
    LOOP = 1000

KEYS = [f"player{i}" for i in range(1000)]
BIG = 1e12
BATCH = 100
ROUNDS = 10  # the report interleaves the sync cases in this many short rounds
#: name -> decisions per call; each builds a zero-argument call (sync) or coroutine function
SYNC_CASES = {"bare_ping": 1, "gameguard_sync": 1, "gameguard_many": BATCH,
              "gameguard_lease8": 1, "gameguard_lease64": 1, "limits_moving": 1,
              "limits_sliding": 1}
ASYNC_CASES = {"gameguard_async": 1}


def start_server() -> RedisServer:
    return RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-"))).start()


def keys() -> Iterator[str]:
    while True:
        yield from KEYS


def sync_case(name: str, port: int) -> Callable[[], Any]:
    client = redis.Redis(host="127.0.0.1", port=port)
    it = keys()
    if name == "bare_ping":
        return client.ping
    if name.startswith("gameguard"):
        lease = int(name[len("gameguard_lease"):]) if "lease" in name else 0
        lim = KeyedLimiter(BIG, BIG, name=name, backend=RedisBackend(
            client, prefix="bench:", lease=lease, timeout=1.0))
        if name == "gameguard_many":
            batch = [KEYS[i:i + BATCH] for i in range(0, len(KEYS), BATCH)]
            turn = iter(range(1 << 62))
            return lambda: lim.try_acquire_many(batch[next(turn) % len(batch)])
        acquire = lim.try_acquire
        if lease:  # leasing pays on hot keys: ten of them, each drawn again within its lease
            hot = itertools.cycle(KEYS[:10])
            return lambda: acquire(next(hot))
        return lambda: acquire(next(it))
    from limits import parse, storage, strategies
    cls = {"limits_moving": strategies.MovingWindowRateLimiter,
           "limits_sliding": strategies.SlidingWindowCounterRateLimiter}[name]
    lim_ = cls(storage.RedisStorage(f"redis://127.0.0.1:{port}"))
    item = parse("1000000/second")  # admitted; moving-window lists stay short over 1000 keys
    return lambda: lim_.hit(item, next(it))


def async_case(name: str, port: int) -> Tuple[Callable[[], Any], RedisBackend]:
    """(a coroutine function making one decision, its backend: ``aclose()`` it after)."""
    backend = RedisBackend(redis.asyncio.Redis(host="127.0.0.1", port=port), prefix="bench:",
                           timeout=1.0)
    lim = KeyedLimiter(BIG, BIG, name=name, backend=backend)
    it = keys()
    acquire = lim.try_acquire_async
    return lambda: acquire(next(it)), backend


def latencies_sync(call: Callable[[], Any], seconds: float) -> List[float]:
    out: List[float] = []
    clock = time.perf_counter
    end = clock() + seconds
    while clock() < end:
        t = clock()
        call()
        out.append(clock() - t)
    return out


def cpu_per_call(call: Callable[[], Any], port: int, n: int = 2000) -> float:
    """Client plus server CPU seconds per call (getrusage, INFO cpu): steadier than wall time
    on a loaded machine, where a round trip waits for the scheduler."""
    import resource

    info = redis.Redis(host="127.0.0.1", port=port)

    def used() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        srv = info.info("cpu")
        return float(me.ru_utime + me.ru_stime + srv["used_cpu_user"] + srv["used_cpu_sys"])

    before = used()
    for _ in range(n):
        call()
    return (used() - before) / n


def latencies_async(case: Tuple[Callable[[], Any], RedisBackend],
                    seconds: float) -> List[float]:
    make, backend = case

    async def run() -> List[float]:
        out: List[float] = []
        clock = time.perf_counter
        end = clock() + seconds
        while clock() < end:
            t = clock()
            await make()
            out.append(clock() - t)
        await backend.aclose()
        return out
    return asyncio.run(run())


def summary(lat: List[float], per: int) -> Tuple[float, float, float]:
    """(decisions/s, p50 µs, p99 µs) of one call's latencies."""
    q = statistics.quantiles(lat, n=100)
    return len(lat) * per / sum(lat), q[49] * 1e6, q[98] * 1e6


def leasing(port: int, lease: int, cycles: int = 2, processes: int = 4
            ) -> Tuple[float, float]:
    """(decisions/s while hammering, worst admitted - (capacity + rate*0.2) over any 0.2 s):
    ``processes`` backends (each its own lease store, as a process has) on one hot key, in
    the pattern that shows the slack: one call each (a lease taken from a full bucket and
    barely spent), a pause while the bucket refills to full, a 0.2 s hammer, a pause."""
    rate, capacity, window = 200.0, 100.0, 0.2
    stamps: List[float] = []
    calls = [0] * processes
    prefix = f"lease{lease}-{time.monotonic_ns()}:"
    begin = time.perf_counter() + 0.05
    clock = time.perf_counter

    def until(t: float) -> None:
        time.sleep(max(0.0, t - clock()))

    def run(i: int) -> None:
        lim = KeyedLimiter(rate, capacity, name="hot", backend=RedisBackend(
            redis.Redis(host="127.0.0.1", port=port), prefix=prefix, lease=lease, timeout=1.0))
        for c in range(cycles):
            at = begin + 1.6 * c
            until(at)
            if lim.try_acquire("hot"):  # the touch: one call, the rest of its lease held
                stamps.append(clock())
            until(at + 0.8)  # the bucket refills to full (capacity/rate = 0.5 s)
            while clock() < at + 0.8 + window:
                calls[i] += 1
                if lim.try_acquire("hot"):
                    stamps.append(clock())
            until(at + 1.6)  # the held leases lapse (lease_ttl 1 s), the bucket refills

    threads = [threading.Thread(target=run, args=(i,)) for i in range(processes)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    admitted = sorted(stamps)
    worst, j = 0, 0
    for i, t in enumerate(admitted):  # most admissions in any window ending at one of them
        while admitted[j] < t - window:
            j += 1
        worst = max(worst, i - j + 1)
    return sum(calls) / (cycles * window), worst - (capacity + rate * window)


def report(seconds: float) -> None:
    server = start_server()
    try:
        rows: Dict[str, Tuple[float, float, float]] = {}
        cpu: Dict[str, float] = {}
        calls = {name: sync_case(name, server.port) for name in SYNC_CASES}
        lat: Dict[str, List[float]] = {name: [] for name in SYNC_CASES}
        for _ in range(ROUNDS):  # interleaved: the machine's load swings hit every case alike
            for name, call in calls.items():
                lat[name] += latencies_sync(call, seconds / ROUNDS)
        for name, per in SYNC_CASES.items():
            rows[name] = summary(lat[name], per)
            cpu[name] = cpu_per_call(calls[name], server.port) / per
        for name, per in ASYNC_CASES.items():
            rows[name] = summary(latencies_async(async_case(name, server.port), seconds), per)
        base = rows["limits_moving"][0]
        print(f"{'case':20s} {'decisions/s':>12s} {'p50 µs':>9s} {'p99 µs':>9s} "
              f"{'× limits_moving':>16s} {'CPU µs/dec':>11s}   (p50/p99 per call; many: "
              "per 100-key call; CPU: client + server)")
        for name, (dps, p50, p99) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
            c = f"{cpu[name] * 1e6:11.1f}" if name in cpu else f"{'':11s}"
            print(f"{name:20s} {dps:12.0f} {p50:9.1f} {p99:9.1f} {dps / base:16.2f} {c}")
        print(f"CPU per decision, limits_moving / gameguard_sync: "
              f"{cpu['limits_moving'] / cpu['gameguard_sync']:.2f}×")
        sync = rows["gameguard_sync"][0]
        for n in (8, 64):
            print(f"leased n={n}: {rows[f'gameguard_lease{n}'][0] / sync:.1f}× un-leased sync")
        print("leasing, 4 backends on one hot key (rate 200/s, capacity 100): one touch, "
              "refill, 0.2 s hammer; worst 0.2 s window:")
        for n in (0, 8, 64):
            dps, over = leasing(server.port, n)
            print(f"  lease={n:<3d} {dps:10.0f} decisions/s   admitted over bound {over:+6.0f}"
                  f"   (stated slack n*P = {n * 4})")
    finally:
        server.stop()


# -- pytest-benchmark form -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    s = start_server()
    yield s
    s.stop()


@pytest.mark.parametrize("name", list(SYNC_CASES) + list(ASYNC_CASES))
def test_redis(benchmark: Any, server: RedisServer, name: str) -> None:
    benchmark.group = "redis"
    if name in ASYNC_CASES:
        make, backend = async_case(name, server.port)
        loop = asyncio.new_event_loop()  # one loop: the client's connections belong to it

        async def calls() -> None:
            for _ in range(LOOP):
                await make()

        def run() -> None:
            loop.run_until_complete(calls())
    else:
        call = sync_case(name, server.port)
        per = SYNC_CASES[name]

        def run() -> None:
            for _ in range(LOOP // per):
                call()
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    if name in ASYNC_CASES:
        loop.run_until_complete(backend.aclose())
        loop.close()


if __name__ == "__main__":
    secs = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 1.0
    report(secs)
