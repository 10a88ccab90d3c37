"""Scale-out: two server processes sharing one player budget through Redis, with Redis
stopped half-way.

A player's casts (budget: 10/s, bursts of 10) reach two server processes, as a load balancer
spreads them; each process asks ``KeyedLimiter(10, 10, backend=RedisBackend(...))``. With
per-process limiters the player would get 20/s. Through Redis the two spend one budget.
At 1.5 s the demo stops Redis: each process decides locally at ``fallback_share=1/2`` of
the budget (no error reaches the handler, and the pair still keeps to ~10/s), and once
Redis is back (at 3 s) they share it again.

This section runs on real time (about five seconds) against a real ``redis-server`` it
starts on a free loopback port: the figures vary a little from run to run. Without
``redis-server`` (``make redis`` installs it) or redis-py (``pip install gameguard[redis]``)
it says so and skips.
"""
from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, Optional

from . import header

RATE, CAPACITY, SLOT, SLOTS = 10.0, 10.0, 0.5, 9  # 4.5 s in half-second slots
STOP_AT, START_AT = 1.5, 3.0
OFFERED = 25.0  # casts per second the player sends to each process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Redis:
    """A throwaway redis-server on 127.0.0.1 (no persistence), stoppable and restartable."""

    def __init__(self, binary: str) -> None:
        self.binary, self.port = binary, _free_port()
        self.dir = tempfile.mkdtemp(prefix="gameguard-demo-redis-")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def server_process(port: int, seed: int, barrier: Any, results: Any) -> None:
    """One game-server process: the player's casts at ~OFFERED/s for SLOTS*SLOT seconds;
    per slot, casts admitted by Redis, admitted by the local fallback, refused."""
    import redis

    from ..ratelimit import KeyedLimiter
    from ..redis import RedisBackend

    backend = RedisBackend(redis.Redis(host="127.0.0.1", port=port), prefix="demo:",
                           fallback_share=0.5, timeout=0.05, probe_interval=0.2)
    casts = KeyedLimiter(RATE, CAPACITY, backend=backend, name="casts")
    rng = random.Random(seed)
    slots = [[0, 0, 0] for _ in range(SLOTS)]
    barrier.wait()
    begin = time.monotonic()
    t = 0.0
    while True:
        t += rng.expovariate(OFFERED)
        if t >= SLOTS * SLOT:
            break
        time.sleep(max(0.0, begin + t - time.monotonic()))
        local = backend.stats()["fallback_decisions"]
        ok = casts.try_acquire("player-17")  # never raises: fallback="local"
        by_fallback = backend.stats()["fallback_decisions"] > local
        slots[min(SLOTS - 1, int((time.monotonic() - begin) / SLOT))][
            (1 if by_fallback else 0) if ok else 2] += 1
    results.put((seed, slots, backend.stats()))


def _run_servers(binary: str, seed: int) -> Dict[str, Any]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    server = _Redis(binary)
    server.start()
    try:
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=server_process, args=(server.port, seed + i, barrier,
                                                          results)) for i in range(2)]
        for p in procs:
            p.start()
        barrier.wait(60)
        begin = time.monotonic()
        time.sleep(max(0.0, begin + STOP_AT - time.monotonic()))
        server.stop()
        time.sleep(max(0.0, begin + START_AT - time.monotonic()))
        server.start()
        got = sorted(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(30)
    finally:
        server.stop()
    return {"slots": [g[1] for g in got], "stats": [g[2] for g in got]}


def run(seed: int = 7, out: Callable[[str], Any] = print) -> Dict[str, Any]:
    """Run the two-process demo; print a timeline through ``out``; return the numbers."""
    header(out, "Scale-out: two server processes, one player budget in Redis",
           f"a player's casts (budget {RATE:.0f}/s, bursts of {CAPACITY:.0f}) reach two server "
           f"processes at ~{OFFERED:.0f}/s each;",
           "A, B: casts each process admitted (r: decided in Redis, f: by its local "
           "fallback at 1/2 the budget);",
           f"Redis is stopped at {STOP_AT} s and restarted at {START_AT} s.")
    binary = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        binary, why = None, "redis-py is not installed (pip install gameguard[redis])"
    else:
        why = "redis-server is not installed (make redis installs Debian's)"
    if binary is None:
        out(f"   skipped: {why}")
        return {"skipped": why}
    out(f"   (starting its own redis-server on a loopback port: {binary})")
    result = _run_servers(binary, seed)
    a, b = result["slots"]
    out(f"   {'time':>9s}  {'Redis':5s}  {'A r/f':>7s}  {'B r/f':>7s}  {'total':>5s}  "
        f"{'refused':>7s}")
    for i in range(SLOTS):
        lo, hi = i * SLOT, (i + 1) * SLOT
        state = "down" if STOP_AT <= lo < START_AT else "up"
        total = sum(a[i][:2]) + sum(b[i][:2])
        out(f"   {lo:3.1f}-{hi:3.1f} s  {state:5s}  {a[i][0]:3d}/{a[i][1]:<3d}  "
            f"{b[i][0]:3d}/{b[i][1]:<3d}  {total:5d}  {a[i][2] + b[i][2]:7d}")
    admitted = sum(sum(s[:2]) for p in result["slots"] for s in p)
    span = SLOTS * SLOT
    out(f"   admitted {admitted} in {span:.1f} s; the budget allows {CAPACITY:.0f} + "
        f"{RATE:.0f}/s × {span:.1f} s = {CAPACITY + RATE * span:.0f}, + {CAPACITY:.0f} per "
        f"switch (local buckets and the restarted Redis start full);")
    out(f"   per-process limiters would have let through up to "
        f"{2 * (CAPACITY + RATE * span):.0f}. No error reached a handler; each process logged "
        "the outage once, at its start and its end (logger 'gameguard').")
    result["admitted"] = admitted
    return result


if __name__ == "__main__":
    run()
