"""The FastAPI lobby example runs in one command and shows every guard at work."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lobby_example_runs_and_every_check_passes() -> None:
    out = subprocess.run([sys.executable, "-W", "error", os.path.join(ROOT, "examples", "lobby",
                                                                       "run.py")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAILED" not in out.stdout
    assert out.stdout.count("[ok]") == 7
    assert "one more closed with 1013" in out.stdout
    assert "then 503 (Retry-After 1)" in out.stdout
