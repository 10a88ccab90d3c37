"""The package type-checks under its own strict mypy configuration and passes ruff's error
rules: the public API's type hints (the package ships py.typed) are checked, not assumed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_mypy_strict_is_clean() -> None:
    result = run("mypy")  # configuration: [tool.mypy] in pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_no_errors() -> None:
    result = run("ruff", "check", "src/gameguard", "--select", "E,F,W")
    assert result.returncode == 0, result.stdout + result.stderr
