"""The grpc.aio matchmaking example runs in one command and shows each guard at work."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_matchmaking_example_runs_end_to_end() -> None:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "matchmaking", "run.py")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("1. eight players queued, 4 matches made")
    assert lines[1].count("RESOURCE_EXHAUSTED (retry in") == 3
    assert "the spammer is admitted" in lines[2]
    assert lines[3].endswith("the third: RESOURCE_EXHAUSTED")
    assert "the third is admitted" in lines[4]
    assert lines[5].startswith("4. server down: UNAVAILABLE; UNAVAILABLE; CircuitOpenError (local")
    assert lines[5].endswith("breaker open")
    assert lines[-1] == "done: every permit returned"
