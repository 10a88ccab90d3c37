"""The crash test: sagas killed with SIGKILL at random points, then recovered.

A worker process (``saga_worker.py``) runs transfer sagas (sync: 3 threads; async: 16
tasks) against a SQLite saga store and a deduping ledger; the test kills it with SIGKILL
after a seeded random delay (and the worker sometimes kills itself at the worst moments:
right before or after an effect, right after an undo). The next worker is a fresh process
whose ``recover()`` must leave every transaction committed or compensated, and the ledger
must show each effect applied exactly once (compensated transactions net to zero).
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

WORKER = str(Path(__file__).with_name("saga_worker.py"))
STEPS = ("debit", "credit", "notify")


def check(saga_db: Path, ledger_db: Path, done: Optional[Set[str]] = None) -> Dict[str, int]:
    """Every transaction finished; the ledger holds each effect once; undone ones net 0.

    ``done``: transactions already verified (finished rows never change), skipped and then
    extended, so a check after each kill costs what the last run added, not the whole history.
    """
    done = set() if done is None else done
    s = sqlite3.connect(saga_db)
    status = dict(s.execute("SELECT tx_id, status FROM saga_tx"))
    s.close()
    bad = {tx: st for tx, st in status.items() if st not in ("committed", "compensated")}
    assert not bad, f"unfinished after recover(): {list(bad.items())[:5]}"
    new = [tx for tx in status if tx not in done]
    lg = sqlite3.connect(ledger_db)
    entries: List[tuple] = []
    for i in range(0, len(new), 500):
        chunk = new[i:i + 500]
        entries += lg.execute(f"SELECT key, tx, step, amount, kind FROM entries WHERE tx IN "
                              f"({', '.join('?' * len(chunk))})", chunk).fetchall()
    lost = {tx for (tx,) in lg.execute("SELECT DISTINCT tx FROM entries")} - status.keys()
    calls, deduped = lg.execute("SELECT COUNT(*), COUNT(*) - SUM(applied) FROM calls").fetchone()
    reused = lg.execute("SELECT key, attempt FROM calls GROUP BY key, attempt "
                        "HAVING COUNT(*) > 1").fetchall()
    lg.close()
    assert not reused, f"an attempt number was used twice for one key: {reused[:5]}"
    assert not lost, f"the ledger has effects of transactions the saga store lost: {lost}"
    per_tx: Dict[str, Dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for _key, tx, step, amount, kind in entries:
        per_tx[tx][step].append((kind, amount))
    for tx in new:
        steps = per_tx.get(tx, {})
        if status[tx] == "committed":
            for step in STEPS:
                kinds = sorted(k for k, _ in steps.get(step, []))
                assert kinds == ["do"], f"committed {tx}: step {step} has {kinds}"
        else:
            for step, rows in steps.items():
                assert sum(a for _, a in rows) == 0, f"compensated {tx}: {step} nets {rows}"
                kinds = sorted(k for k, _ in rows)
                assert kinds in (["do", "undo"], ["barrier"]), f"compensated {tx}: {step} {kinds}"
    done.update(new)
    counts: Dict[str, int] = defaultdict(int)
    for st in status.values():
        counts[st] += 1
    counts["calls"] = calls or 0
    counts["deduped"] = deduped or 0
    return dict(counts)


def spawn(saga_db: Path, ledger_db: Path, seed: int, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([sys.executable, WORKER, str(saga_db), str(ledger_db), str(seed),
                             mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def recovered(p: subprocess.Popen) -> None:
    line = p.stdout.readline()
    if not line.startswith("recovered"):
        p.kill()
        raise AssertionError(f"worker did not recover: {line!r} {p.stderr.read()}")


@pytest.mark.slow
@pytest.mark.parametrize("mode,kills", [("sync", 105), ("async", 105)])
def test_sigkill_then_recover_exactly_once(tmp_path: Path, mode: str, kills: int) -> None:
    saga_db, ledger_db = tmp_path / "sagas.db", tmp_path / "ledger.db"
    rng = random.Random(f"gameguard-saga-crash-{mode}")
    self_kills = 0
    verified: Set[str] = set()
    for _ in range(kills):
        p = spawn(saga_db, ledger_db, rng.randrange(1 << 30), mode)
        try:
            recovered(p)
            check(saga_db, ledger_db, verified)  # the worker idles, nothing in flight
            p.stdin.write("go\n")
            p.stdin.flush()
            try:  # a seeded random moment: mid-step, mid-commit, mid-compensation...
                p.wait(timeout=rng.uniform(0.005, 0.06))
                self_kills += 1  # it killed itself at one of its planted points
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
            assert p.returncode == -signal.SIGKILL, p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdin.close()
            p.stdout.close()
            p.stderr.close()
    p = spawn(saga_db, ledger_db, 0, mode)  # the last recovery, then a clean exit
    recovered(p)
    counts = check(saga_db, ledger_db)  # everything, from scratch
    p.communicate("quit\n", timeout=30)
    assert p.returncode == 0
    # the kills landed where they matter: both outcomes, and retries the ledger deduped
    assert counts.get("committed", 0) > 100 and counts.get("compensated", 0) > 50, counts
    assert counts["deduped"] > 0, counts
    print(f"{mode}: {kills} kills ({self_kills} self-inflicted), {counts}")
