"""The scale-out demo: two real server processes share one budget through a real Redis that
it stops and restarts; without redis-server it says so and skips that part."""
from __future__ import annotations

from typing import List

import pytest

from gameguard.demos import scaleout
from redis_servers import binary


def test_two_processes_share_one_budget_across_an_outage() -> None:
    binary("redis-server")  # fails (never skips) without it: run `make redis`
    lines: List[str] = []
    result = scaleout.run(7, lines.append)
    assert "skipped" not in result
    span = scaleout.SLOTS * scaleout.SLOT
    budget = scaleout.CAPACITY + scaleout.RATE * span
    assert budget * 0.8 <= result["admitted"] <= budget + 2 * scaleout.CAPACITY
    down = [i for i in range(scaleout.SLOTS)
            if scaleout.STOP_AT <= i * scaleout.SLOT < scaleout.START_AT]
    for slots in result["slots"]:
        assert all(slots[i][0] == 0 for i in down[1:]), "Redis decided while stopped"
        assert sum(slots[i][1] for i in down) > 0, "the local fallback never decided"
        assert sum(s[0] for s in slots[down[-1] + 2:]) > 0, "Redis never decided again"
    assert any("starting its own redis-server" in line for line in lines)


def test_without_redis_server_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scaleout.shutil, "which", lambda name: None)
    lines: List[str] = []
    assert scaleout.run(7, lines.append) == {
        "skipped": "redis-server is not installed (make redis installs Debian's)"}
    assert "skipped: redis-server is not installed" in lines[-1]
