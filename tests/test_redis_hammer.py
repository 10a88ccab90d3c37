"""4 server processes × 2 threads hammer one key through a real Redis for 3 s: the fleet
admits at most ``capacity + rate*T`` (+ ``lease*P`` when leasing) and close to it.

The three settings run at once (each on its own key, two threads each in every process), so
the processes start once."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from redis_servers import RedisServer

WORKER = str(Path(__file__).with_name("redis_hammer_worker.py"))
PROCESSES, SECONDS, RATE, CAPACITY = 4, 3.0, 50.0, 10.0  # a loaded CI box still saturates it
SETTINGS = ["token:0", "leaky:0", "token:8"]


@pytest.fixture(scope="module")
def hammered(redis_server: RedisServer) -> List[Dict[str, Any]]:
    args = [str(redis_server.port), f"hammer{time.monotonic_ns()}:", str(RATE), str(CAPACITY),
            *SETTINGS]
    procs = [subprocess.Popen([sys.executable, WORKER, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(PROCESSES)]
    for p in procs:  # every process imported and ready before the start
        assert p.stdout is not None and p.stdout.readline() == "ready\n", p.stderr
    start = time.time() + 0.2
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"{start!r} {start + SECONDS!r}\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=SECONDS + 30)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    return results


@pytest.mark.parametrize("setting", SETTINGS)
def test_fleet_bound(hammered: List[Dict[str, Any]], setting: str) -> None:
    runs = [r[setting] for r in hammered]
    lease = int(setting.split(":")[1])
    admitted = sum(r["admitted"] for r in runs)
    span = max(r["last"] for r in runs) - min(r["first"] for r in runs)
    assert span > SECONDS - 0.5
    bound = CAPACITY + RATE * span + lease * PROCESSES
    assert all(r["stats"]["fallback_decisions"] == 0 for r in runs)
    assert all(r["calls"] > 2 * r["admitted"] > 0 for r in runs), "every process contended"
    assert admitted <= bound
    assert admitted >= 0.9 * (CAPACITY + RATE * span) - lease * PROCESSES, (admitted, bound)
    if lease:
        assert sum(r["stats"]["leases"] for r in runs) > 0
