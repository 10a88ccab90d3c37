"""Durable 3-step sagas per second on SQLite and on PostgreSQL: the cost of a commit per
transition, and what group commit buys.

A committed 3-step saga makes 4 durable writes (insert, then one per completed step, the
last one ``committed``); each must be committed before the next action starts, so a lone
saga pays 4 commits in sequence. Concurrent sagas (threads or asyncio tasks) share commits:
the store commits every write queued while the previous commit was in flight, in one
SQLite transaction (one fsync). Steps are no-ops, so the figures are the saga machinery and
the store.

Two ways to run it:

    # the throughput table for docs/performance.md (about a minute)
    .venv/bin/python benchmarks/bench_saga.py
    # PostgreSQL beside SQLite and beside raw single-row commits, same run: starts its own
    # throwaway PostgreSQL 15 on loopback (or give --dsn DSN)
    .venv/bin/python benchmarks/bench_saga.py --postgres [--quick]
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
    """A fresh store in a fresh temporary directory per configuration (or on a fresh
    PostgreSQL schema, given ``dsn``)."""

    def __init__(self, synchronous: str = "full", max_batch: int = 256,
                 memory: bool = False, dsn: Optional[str] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="gameguard-bench-saga-")
        self.store: Any
        if dsn is not None:
            from gameguard.saga import PostgresStore
            self.store = PostgresStore(dsn, schema=f"bench_{os.urandom(4).hex()}",
                                       max_batch=max_batch)
        else:
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


class RawCommits:
    """One small UPDATE per transaction (autocommit), as a saga transition is, on
    ``connections`` connections at once (each its own row): the floor for PostgreSQL."""

    def __init__(self, dsn: str, connections: int = 1) -> None:
        import psycopg
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS bench_raw (k int PRIMARY KEY, v int)")
            c.execute("INSERT INTO bench_raw SELECT g, 0 FROM generate_series(0, 255) g "
                      "ON CONFLICT DO NOTHING")
        self.conns = [psycopg.connect(dsn, autocommit=True) for _ in range(connections)]

    def run(self, per_connection: int) -> int:
        """Make the commits; how many."""
        def work(k: int) -> None:
            c = self.conns[k]
            for i in range(per_connection):
                c.execute("UPDATE bench_raw SET v = %s WHERE k = %s", (i, k))
        ts = [threading.Thread(target=work, args=(k,)) for k in range(len(self.conns))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return per_connection * len(self.conns)

    def close(self) -> None:
        for c in self.conns:
            c.close()


def raw_pg_commits_per_s(dsn: str, connections: int = 1, n: int = 300) -> float:
    raw = RawCommits(dsn, connections)
    try:
        t0 = time.perf_counter()
        done = raw.run(max(20, n // connections))
        return done / (time.perf_counter() - t0)
    finally:
        raw.close()


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


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL 15 on loopback for this module (the tests' own fixture code)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from pg_server import PgServer
    server = PgServer().start()
    try:
        yield server.dsn()
    finally:
        server.stop()


@pytest.mark.benchmark(group="saga-postgres-16-threads-x2-32-sagas")
@pytest.mark.parametrize("store", ["postgres-no-group-commit", "postgres-group-commit",
                                   "sqlite-full-group-commit"])
def test_postgres_threads_16(benchmark, bench_factory, pg_dsn: str, store: str) -> None:
    b = bench_factory(dsn=None if store.startswith("sqlite") else pg_dsn,
                      max_batch=1 if "no-group" in store else 256)
    benchmark.pedantic(b.run_threads, args=(16, 2), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="saga-postgres-16-threads-x2-32-sagas")
def test_postgres_raw_commits_128(benchmark, pg_dsn: str) -> None:
    """128 raw single-row commits on 16 connections: what 32 sagas' 128 writes would cost
    committed one by one, each caller on its own connection."""
    raw = RawCommits(pg_dsn, 16)
    try:
        benchmark.pedantic(raw.run, args=(8,), rounds=5, warmup_rounds=1)
    finally:
        raw.close()


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


# workloads for measure(): run n sagas one way, return how many ran
def seq(n: int) -> Callable[[Bench], int]:
    return lambda b: (b.run_sync(n), n)[1]


def thr(t: int, n: int) -> Callable[[Bench], int]:
    return lambda b: (b.run_threads(t, n), t * n)[1]


def asy(c: int, n: int) -> Callable[[Bench], int]:
    return lambda b: (b.run_async(c, n), c * n)[1]


def table(quick: bool = False) -> Iterator[Dict[str, Any]]:
    """The rows of the table, each yielded as soon as it is measured."""
    k = 1 if quick else 4

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


def pg_table(dsn: str, quick: bool = False) -> Iterator[Dict[str, Any]]:
    """PostgreSQL beside SQLite (FULL: both fsync every commit) in the same configurations."""
    k = 1 if quick else 3
    for label, work in (("sync, sequential", seq(40 * k)),
                        ("sync, 16 threads", thr(16, 8 * k)),
                        ("async, 64 tasks", asy(64, 6 * k))):
        for batch, grouped in ((1, "group commit off"), (256, "group commit")):
            if label == "sync, sequential" and batch == 1:
                continue  # a lone caller never groups: the same as with it on
            yield measure(f"PostgreSQL, {label}, {grouped}",
                          lambda: Bench(dsn=dsn, max_batch=batch), work, repeat=2 if k > 1 else 1)
            yield measure(f"SQLite FULL, {label}, {grouped}",
                          lambda: Bench(max_batch=batch), work, repeat=2 if k > 1 else 1)


def main_pg(argv: List[str]) -> None:
    quick = "--quick" in argv
    server = None
    if "--dsn" in argv:
        dsn = argv[argv.index("--dsn") + 1]
    else:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                        "tests"))
        from pg_server import PgServer
        server = PgServer().start()
        dsn = server.dsn()
    try:
        one = statistics.median(raw_pg_commits_per_s(dsn) for _ in range(3))
        many = statistics.median(raw_pg_commits_per_s(dsn, 16) for _ in range(3))
        print(f"raw PostgreSQL single-row commits (one UPDATE, autocommit) on the same server: "
              f"{one:,.0f}/s on one connection, {many:,.0f}/s on 16 connections "
              f"(a lone 3-step saga makes 4 commits in sequence: at most {one / 4:,.0f} "
              f"sagas/s)")
        print()
        print("| configuration | committed 3-step sagas/s (median) | min..max "
              "| writes per commit | wall ms per commit |")
        print("|---|---:|---:|---:|---:|")
        for r in pg_table(dsn, quick):
            print(f"| {r['label']} | {r['rate']:,.0f} | {r['min']:,.0f}..{r['max']:,.0f} "
                  f"| {r['batch']:.1f} | {r['commit_ms']:.2f} |", flush=True)
        # the disk is shared and its fsync time drifts: the raw figure again, after
        one = statistics.median(raw_pg_commits_per_s(dsn) for _ in range(3))
        print(f"\nraw single-row commits again, after the table: {one:,.0f}/s on one "
              f"connection")
    finally:
        if server is not None:
            server.stop()


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    if "--postgres" in argv or "--dsn" in argv:
        return main_pg(argv)
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
