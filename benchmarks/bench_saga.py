"""Durable 3-step sagas per second on SQLite: the cost of a commit per transition, and what
group commit buys.

A committed 3-step saga makes 4 durable writes (insert, then one per completed step, the
last one ``committed``); each must be committed before the next action starts, so a lone
saga pays 4 commits in sequence. Concurrent sagas (threads or asyncio tasks) share commits:
the store commits every write queued while the previous commit was in flight, in one
SQLite transaction (one fsync). Steps are no-ops, so the figures are the saga machinery and
the store.

Two ways to run it:

    # the throughput table for docs/performance.md (about a minute)
    .venv/bin/python benchmarks/bench_saga.py
    # pytest-benchmark timings (time per round; the group name says how many sagas a round runs)
    .venv/bin/python -m pytest benchmarks/bench_saga.py --benchmark-only -p no:randomly \
        --benchmark-group-by=group --benchmark-columns=median,ops -q
"""
from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from gameguard.saga import Saga, SQLiteStore


def _steps_sync(saga: Saga) -> Saga:
    for name in ("reserve", "debit", "credit"):
        saga.step(lambda ctx, name=name: name, name=name, compensate=lambda ctx: None)
    return saga


def _steps_async(saga: Saga) -> Saga:
    for name in ("reserve", "debit", "credit"):
        async def step(ctx: Any, name: str = name) -> str:
            return name

        async def undo(ctx: Any) -> None:
            return None
        saga.step(step, name=name, compensate=undo)
    return saga


class Bench:
    """A fresh store in a fresh temporary directory per configuration."""

    def __init__(self, synchronous: str = "full", max_batch: int = 256,
                 memory: bool = False) -> None:
        self.dir = tempfile.mkdtemp(prefix="gameguard-bench-saga-")
        self.store = SQLiteStore(":memory:" if memory else os.path.join(self.dir, "s.db"),
                                 synchronous=synchronous, max_batch=max_batch)
        self.sync = _steps_sync(Saga("bench-sync", store=self.store))
        self.asy = _steps_async(Saga("bench-async", store=self.store))

    def run_sync(self, n: int) -> None:
        run = self.sync.run
        for i in range(n):
            run({"i": i})

    def run_threads(self, threads: int, per_thread: int) -> None:
        ts = [threading.Thread(target=self.run_sync, args=(per_thread,)) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def run_async(self, concurrency: int, per_task: int) -> None:
        async def worker() -> None:
            run = self.asy.run_async
            for i in range(per_task):
                await run({"i": i})

        async def main() -> None:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        asyncio.run(main())

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def plain_calls(n: int) -> None:
    """The same three no-op steps without a saga: the floor."""
    steps = [lambda ctx, name=name: name for name in ("reserve", "debit", "credit")]
    for _ in range(n):
        for s in steps:
            s(None)


def raw_commit_us(synchronous: str, n: int = 400) -> float:
    """One small UPDATE per transaction, as a saga transition is: microseconds per commit."""
    d = tempfile.mkdtemp(prefix="gameguard-bench-commit-")
    try:
        c = sqlite3.connect(os.path.join(d, "c.db"), isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={synchronous.upper()}")
        c.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID")
        c.execute("INSERT INTO t VALUES ('x', 0)")
        t0 = time.perf_counter()
        for i in range(n):
            c.execute("BEGIN IMMEDIATE")
            c.execute("UPDATE t SET v = ? WHERE k = 'x'", (i,))
            c.execute("COMMIT")
        dt = time.perf_counter() - t0
        c.close()
        return dt / n * 1e6
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- pytest-benchmark -------------------------------------------------------------------------
# Each round runs a fixed number of sagas (in the test id); sagas/s = that number / time.
SEQ = 32


@pytest.fixture
def bench_factory():
    made: List[Bench] = []

    def make(**kw: Any) -> Bench:
        b = Bench(**kw)
        b.run_sync(2)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


@pytest.mark.benchmark(group="saga-sequential-32-sagas")
def test_plain_calls_no_saga(benchmark) -> None:
    benchmark(plain_calls, SEQ)


@pytest.mark.benchmark(group="saga-sequential-32-sagas")
@pytest.mark.parametrize("where", ["memory", "normal", "full"])
def test_sequential_sync(benchmark, bench_factory, where: str) -> None:
    b = bench_factory(memory=where == "memory",
                      synchronous="full" if where == "full" else "normal")
    benchmark.pedantic(b.run_sync, args=(SEQ,), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="saga-16-threads-x2-32-sagas")
@pytest.mark.parametrize("max_batch", [1, 256], ids=["full-no-group-commit", "full-group-commit"])
def test_threads_16(benchmark, bench_factory, max_batch: int) -> None:
    b = bench_factory(max_batch=max_batch)
    benchmark.pedantic(b.run_threads, args=(16, 2), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="saga-256-tasks-256-sagas")
@pytest.mark.parametrize("sync", ["normal", "full"])
def test_async_256_tasks(benchmark, bench_factory, sync: str) -> None:
    b = bench_factory(synchronous=sync)
    benchmark.pedantic(b.run_async, args=(256, 1), rounds=5, warmup_rounds=1)


# -- the table ------------------------------------------------------------------------------
def measure(label: str, make: Callable[[], Bench], work: Callable[[Bench], int],
            repeat: int = 3) -> Dict[str, Any]:
    rates, per_commit, commit_ms = [], [], []
    for _ in range(repeat):
        b = make()
        try:
            b.run_sync(2)  # warm-up: opens connections
            b.run_async(2, 1)  # and starts the writer thread
            c0, w0 = b.store.commits, b.store.writes
            t0 = time.perf_counter()
            n = work(b)
            dt = time.perf_counter() - t0
            rates.append(n / dt)
            commits = b.store.commits - c0
            per_commit.append((b.store.writes - w0) / commits if commits else 0.0)
            commit_ms.append(dt / commits * 1e3 if commits else 0.0)
        finally:
            b.close()
    return {"label": label, "rate": statistics.median(rates), "min": min(rates),
            "max": max(rates), "batch": statistics.median(per_commit),
            "commit_ms": statistics.median(commit_ms)}


def table(quick: bool = False) -> Iterator[Dict[str, Any]]:
    """The rows of the table, each yielded as soon as it is measured."""
    k = 1 if quick else 4

    def seq(n: int) -> Callable[[Bench], int]:
        return lambda b: (b.run_sync(n), n)[1]

    def thr(t: int, n: int) -> Callable[[Bench], int]:
        return lambda b: (b.run_threads(t, n), t * n)[1]

    def asy(c: int, n: int) -> Callable[[Bench], int]:
        return lambda b: (b.run_async(c, n), c * n)[1]

    t0 = time.perf_counter()
    plain_calls(20000)
    yield ({"label": "3 plain function calls, no saga", "batch": 0.0, "commit_ms": 0.0,
                 "rate": 20000 / (time.perf_counter() - t0), "min": 0.0, "max": 0.0})
    yield (measure("sync, sequential, :memory: (no durability)",
                        lambda: Bench(memory=True), seq(1000 * k)))
    yield (measure("sync, sequential, WAL synchronous=NORMAL",
                        lambda: Bench(synchronous="normal"), seq(500 * k)))
    yield (measure("sync, sequential, WAL synchronous=FULL",
                        lambda: Bench(), seq(50 * k)))
    for threads in (4, 16, 64):
        yield (measure(f"sync, {threads} threads, FULL, group commit off (max_batch=1)",
                            lambda: Bench(max_batch=1), thr(threads, max(2, 200 * k // threads))))
        yield (measure(f"sync, {threads} threads, FULL, group commit",
                            lambda: Bench(), thr(threads, max(4, 1200 * k // threads))))
    yield (measure("async, 1 task, FULL", lambda: Bench(), asy(1, 50 * k)))
    for conc in (16, 64, 256):
        yield (measure(f"async, {conc} tasks, FULL, group commit off (max_batch=1)",
                            lambda: Bench(max_batch=1), asy(conc, max(1, 200 * k // conc))))
        yield (measure(f"async, {conc} tasks, FULL, group commit",
                            lambda: Bench(), asy(conc, max(2, 2500 * k // conc))))
        yield (measure(f"async, {conc} tasks, NORMAL, group commit",
                            lambda: Bench(synchronous="normal"),
                            asy(conc, max(2, 2500 * k // conc))))


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    full_us = statistics.median(raw_commit_us("full") for _ in range(3))
    normal_us = statistics.median(raw_commit_us("normal") for _ in range(3))
    print(f"raw SQLite commit of one small UPDATE (WAL): synchronous=FULL {full_us:.0f} us, "
          f"NORMAL {normal_us:.0f} us  (a lone 3-step saga makes 4 commits in sequence)")
    print()
    print("| configuration | committed 3-step sagas/s (median of 3) | min..max "
          "| writes per commit | wall ms per commit |")
    print("|---|---:|---:|---:|---:|")
    for r in table(quick):
        span = f"{r['min']:,.0f}..{r['max']:,.0f}" if r["max"] else ""
        batch = f"{r['batch']:.1f}" if r["batch"] else ""
        ms = f"{r['commit_ms']:.2f}" if r["commit_ms"] else ""
        print(f"| {r['label']} | {r['rate']:,.0f} | {span} | {batch} | {ms} |", flush=True)


if __name__ == "__main__":
    main()
