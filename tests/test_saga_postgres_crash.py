"""The SIGKILL crash test on PostgreSQL, with three recovery workers racing, and a worker
frozen (SIGSTOP) past its lease being fenced.

Each round starts three workers (``saga_worker.py --pg``) at once on one shared store: each
``recover()``s what it can claim (the rows of killed workers whose lease lapsed), reports
the transactions it finished, then runs transfer sagas on 3 threads until the test kills
all three with SIGKILL at seeded random moments (the workers also kill themselves at the
worst points). The ledger applies effects through ``Barrier``. Checked: no transaction is
finished by two workers, no attempt number of one step is used twice (two drivers at
once would reuse one), every finished transaction applied each effect exactly once (a
compensated one nets zero), and after the last round every transaction is committed or
compensated.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

import psycopg

WORKER = str(Path(__file__).with_name("saga_worker.py"))
STEPS = ("debit", "credit", "notify")
LEASE = 1.0
ROUNDS = 6


def spawn(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([sys.executable, WORKER, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def reap(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)
    for f in (p.stdin, p.stdout, p.stderr):
        if f is not None:
            f.close()


def recovered(p: subprocess.Popen) -> List[str]:
    line = p.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("recovered"):
        p.kill()
        raise AssertionError(f"worker did not recover: {line!r} {p.stderr.read()}")  # type: ignore[union-attr]  # noqa: E501
    parts = line.split()
    return parts[2].split(",") if len(parts) > 2 else []


def check(dsn: str, schema: str, final: bool) -> Dict[str, int]:
    led = f"{schema}_ledger"
    with psycopg.connect(dsn) as c:
        status = dict(c.execute(f'SELECT tx_id, status FROM "{schema}".saga_tx').fetchall())
        entries = c.execute(f"SELECT tx, step, amount, kind FROM {led}_entries").fetchall()
        reused = c.execute(f"SELECT key, attempt, COUNT(*) FROM {led}_calls GROUP BY key, "
                           f"attempt HAVING COUNT(*) > 1").fetchall()
        calls, deduped = c.execute(f"SELECT COUNT(*), COUNT(*) - SUM(applied) "
                                   f"FROM {led}_calls").fetchone()  # type: ignore[misc]
    assert not reused, f"one attempt of one step ran twice (two drivers?): {reused[:5]}"
    lost = {tx for tx, *_ in entries} - status.keys()
    assert not lost, f"the ledger has effects of transactions the store lost: {lost}"
    finished = {tx: st for tx, st in status.items() if st in ("committed", "compensated")}
    if final:
        bad = {tx: st for tx, st in status.items() if tx not in finished}
        assert not bad, f"unfinished after the last recovery: {list(bad.items())[:5]}"
    per_tx: Dict[str, Dict[str, List[Any]]] = defaultdict(lambda: defaultdict(list))
    for tx, step, amount, kind in entries:
        per_tx[tx][step].append((kind, amount))
    for tx, st in finished.items():
        steps = per_tx.get(tx, {})
        if st == "committed":
            for step in STEPS:
                kinds = [k for k, _ in steps.get(step, [])]
                assert kinds == ["do"], f"committed {tx}: step {step} has {kinds}"
        else:
            for step, rows in steps.items():
                assert sorted(k for k, _ in rows) == ["do", "undo"], f"{tx} {step}: {rows}"
                assert sum(a for _, a in rows) == 0, f"compensated {tx}: {step} nets {rows}"
    counts: Dict[str, int] = defaultdict(int)
    for st in status.values():
        counts[st] += 1
    counts["calls"], counts["deduped"] = calls or 0, deduped or 0
    return dict(counts)


def wait_leases_lapsed(dsn: str, schema: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as c:
        while c.execute(f'SELECT COUNT(*) FROM "{schema}".saga_owner WHERE lease_until > '
                        f'extract(epoch from clock_timestamp())').fetchone()[0]:  # type: ignore[index]  # noqa: E501
            assert time.monotonic() < deadline, "leases of killed workers never lapsed"
            time.sleep(0.1)


def test_three_racing_recoverers_after_sigkills(pg_server: Any) -> None:
    dsn, schema = pg_server.dsn(), "crash"
    rng = random.Random("gameguard-saga-crash-postgres")
    finished_by: Dict[str, int] = {}
    racing_rounds = 0
    for rnd in range(ROUNDS + 1):
        last = rnd == ROUNDS
        if last:  # the dead workers' leases lapse: the final three must take everything
            wait_leases_lapsed(dsn, schema, timeout=LEASE * 10)
        procs = [spawn("--pg", dsn, schema, str(rng.randrange(1 << 30)), str(LEASE))
                 for _ in range(3)]
        try:
            ids = [recovered(p) for p in procs]
            if sum(bool(i) for i in ids) > 1:
                racing_rounds += 1
            for w, got in enumerate(ids):
                for tx in got:
                    assert tx not in finished_by, f"{tx} finished by two recoverers"
                    finished_by[tx] = rnd * 3 + w
            check(dsn, schema, final=last)  # the workers idle: nothing in flight
            if last:
                for p in procs:
                    p.communicate("quit\n", timeout=30)
                    assert p.returncode == 0, p.stderr
                break
            for p in procs:
                p.stdin.write("go\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            deadline = time.monotonic() + rng.uniform(0.3, 0.8)
            for p in procs:  # killed one after another, mid-step, mid-commit...
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGKILL)
                    p.wait(timeout=30)
                deadline += rng.uniform(0.0, 0.1)
                assert p.returncode == -signal.SIGKILL, p.stderr.read()  # type: ignore[union-attr]  # noqa: E501
        finally:
            for p in procs:
                reap(p)
    counts = check(dsn, schema, final=True)
    assert counts.get("committed", 0) > 40 and counts.get("compensated", 0) > 10, counts
    assert len(finished_by) > 5, finished_by  # the recoverers had work, and shared it
    assert counts["deduped"] > 0, counts  # retries the barrier skipped
    print(f"postgres: {ROUNDS} rounds x 3 workers killed, {len(finished_by)} recovered "
          f"({racing_rounds} rounds with 2+ recoverers finishing some), {counts}")


def test_a_worker_frozen_past_its_lease_is_fenced(pg_server: Any) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from saga_worker import build_pg
    dsn, schema = pg_server.dsn(), "frozen"
    p = spawn("--pg-hold", dsn, schema, "tx-frozen", "0.8")
    store = ledger = None
    try:
        line = p.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("holding"), (line, p.stderr.read())  # type: ignore[union-attr]  # noqa: E501
        frozen_owner = line.split()[1]
        p.send_signal(signal.SIGSTOP)  # a GC pause, a VM migration: its heartbeat stops
        store, ledger, saga = build_pg(dsn, schema, 5.0)
        deadline = time.monotonic() + 10
        while store.owner_alive(frozen_owner):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        [res] = saga.recover()  # the lease lapsed: taken over, driven to its end
        assert res.tx_id == "tx-frozen" and res.status == "committed"
        p.send_signal(signal.SIGCONT)
        out, err = p.communicate("go\n", timeout=30)  # it goes on from where it froze
        assert out.startswith("fenced StaleTransaction"), (out, err)
        rec = store.get("tx-frozen")
        assert rec is not None and rec.status == "committed" and rec.owner == store.owner
        with psycopg.connect(dsn) as c:
            rows = c.execute(f"SELECT step, kind FROM {schema}_ledger_entries "
                             f"ORDER BY step").fetchall()
            late = c.execute(f"SELECT applied FROM {schema}_ledger_calls WHERE pid = %s "
                             f"AND key LIKE %s", (p.pid, "%/credit/action")).fetchall()
        # each effect once: the frozen worker's late credit was refused by the barrier
        assert rows == [("credit", "do"), ("debit", "do"), ("notify", "do")]
        assert late == [(0,)]
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
        reap(p)
        if store is not None:
            store.close()
        if ledger is not None:
            ledger.close()

