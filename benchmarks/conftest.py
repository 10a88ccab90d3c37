"""Benchmark support: every group is printed again as ratios to its baseline.

A benchmark whose name contains ``bare`` is its group's baseline (a plain call of the same
handler); the summary lists each benchmark's median as a multiple of it, so figures from
this noisy shared machine compare within one run. Run with ``make bench``.
"""
from __future__ import annotations

import statistics
from typing import Any

import pytest

LOOP = 1000  # calls per benchmark round: amortises the harness's own call overhead


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group or "", []).append(bench)
    tr = terminalreporter
    tr.section("ratios to each group's bare baseline (median per call)")
    for group, benches in sorted(groups.items()):
        base = [b for b in benches if "bare" in b.name]
        if not base:
            continue
        per_call = {b.name: statistics.median(b.stats.data) / LOOP for b in benches}
        ref = per_call[base[0].name]
        tr.write_line(f"[{group}]")
        for name, t in sorted(per_call.items(), key=lambda kv: kv[1]):
            tr.write_line(f"  {name:55s} {t * 1e9:10.1f} ns/call  {t / ref:7.2f}x")


@pytest.fixture
def loop_calls():
    """Wrap ``f`` into a function making LOOP calls ``f(1)``."""
    def make(f):
        def run() -> None:
            for _ in range(LOOP):
                f(1)
        return run
    return make
