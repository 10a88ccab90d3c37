"""One server process of the Redis hammer test (tests/test_redis_hammer.py).

``python redis_hammer_worker.py PORT PREFIX RATE CAPACITY KIND:LEASE...`` prints ``ready``,
reads ``START END`` (wall-clock times) from stdin; then, for each ``KIND:LEASE``, two threads
call ``try_acquire("hot")`` on that setting's one shared key from START to END. It prints a
JSON object per setting: admitted calls, calls, when the first and last admitted call
happened (wall clock, one clock for every process of this machine), the backend's stats.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Dict, List

import redis

import gameguard as gg
from gameguard.redis import RedisBackend


def main(port: int, prefix: str, rate: float, capacity: float, settings: List[str]) -> None:
    runs: Dict[str, Dict[str, Any]] = {}
    for setting in settings:
        kind, lease = setting.split(":")
        backend = RedisBackend(redis.Redis(host="127.0.0.1", port=port),
                               prefix=f"{prefix}{setting}:", lease=int(lease), fallback="deny",
                               timeout=1.0)
        runs[setting] = {"limiter": gg.KeyedLimiter(rate, capacity, kind=kind, name="hammer",
                                                    backend=backend),
                         "admitted": 0, "calls": 0, "first": [], "last": []}
    print("ready", flush=True)
    start, end = map(float, sys.stdin.readline().split())

    def hammer(run: Dict[str, Any]) -> None:
        acquire = run["limiter"].try_acquire
        admitted = calls = 0
        first, last = end, start
        while time.time() < start:
            time.sleep(0.001)
        while True:
            now = time.time()
            if now >= end:
                break
            calls += 1
            if acquire("hot"):
                admitted += 1
                first = min(first, now)
                last = time.time()
        with lock:
            run["admitted"] += admitted
            run["calls"] += calls
            run["first"].append(first)
            run["last"].append(last)

    lock = threading.Lock()
    threads = [threading.Thread(target=hammer, args=(run,)) for run in runs.values()
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({s: {"admitted": r["admitted"], "calls": r["calls"],
                          "first": min(r["first"]), "last": max(r["last"]),
                          "stats": r["limiter"].backend.stats()} for s, r in runs.items()}))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), a[1], float(a[2]), float(a[3]), a[4:])
