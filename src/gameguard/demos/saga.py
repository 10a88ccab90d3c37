"""Demo: a cross-server teleport saga survives its process being killed mid-way.

``run(seed=7, out=print) -> dict``. A child process teleports players from server eu-1
to eu-2 as sagas (reserve a slot on eu-2, leave eu-1, enter eu-2); one destination is full,
so that teleport is compensated. Mid-way through another teleport — the player has left
eu-1 but not yet entered eu-2 — the child is killed with SIGKILL. This process then runs
``recover()``: the interrupted step is re-sent with the same idempotency key (the server
dedupes it), the teleport commits, and the world ledger shows every effect exactly once.
Everything lives in a temporary directory; it takes well under 5 seconds.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Tuple

from ..saga import Barrier, Saga, SQLiteStore, StepContext
from . import header

__all__ = ["run"]

WORLD = """
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY, tx TEXT NOT NULL, server TEXT NOT NULL, player TEXT NOT NULL,
    what TEXT NOT NULL, delta INTEGER NOT NULL, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (key TEXT NOT NULL, attempt INTEGER NOT NULL,
                                       applied INTEGER NOT NULL);
"""


class World:
    """Both game servers' side: each effect applied once, through the saga ``Barrier``
    (duplicates skipped, a compensation whose action never ran does nothing and blocks
    that action if it arrives late), in the same SQLite transaction as the effect."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(WORLD)
        self.barrier = Barrier()

    def _effect(self, ctx: StepContext, server: str, what: str, delta: int,
                kind: str) -> bool:
        self.db.execute("BEGIN IMMEDIATE")
        applied = self.barrier.check(self.db, ctx)
        if applied:
            self.db.execute("INSERT INTO effects VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (ctx.idempotency_key, ctx.tx_id, server, ctx.payload["player"],
                             what, delta, kind))
        if kind == "do":  # the demo reports re-sent actions
            self.db.execute("INSERT INTO deliveries VALUES (?, ?, ?)",
                            (ctx.idempotency_key, ctx.attempt, int(applied)))
        self.db.execute("COMMIT")
        return applied

    def apply(self, ctx: StepContext, server: str, what: str, delta: int) -> bool:
        return self._effect(ctx, server, what, delta, "do")

    def undo(self, ctx: StepContext, server: str, what: str, delta: int) -> bool:
        return self._effect(ctx, server, what, -delta, "undo")

    def population(self) -> Dict[str, int]:
        rows = self.db.execute("SELECT server, SUM(delta) FROM effects WHERE what = 'players' "
                               "GROUP BY server").fetchall()
        return {s: int(n) for s, n in rows}

    def close(self) -> None:
        self.db.close()


def _census(world: World) -> str:
    pop = world.population()
    total = sum(pop.values())
    return f"{pop} = {total} players" + ("" if total == len(
        world.db.execute("SELECT 1 FROM effects WHERE kind = 'seed'").fetchall())
        else " (one is in limbo: left eu-1, not on eu-2)")


def build(store: SQLiteStore, world: World, on_step: Callable[[StepContext], None]) -> Saga:
    """The teleport saga, identical in the child that crashes and the parent that recovers."""
    saga = Saga("teleport", store=store, seed=1, backoff=0.01, max_backoff=0.05)

    def release_slot(ctx: StepContext) -> None:
        world.undo(ctx, "eu-2", "slots", 1)

    @saga.step(compensate=release_slot, retries=2)
    def reserve_slot(ctx: StepContext) -> Dict[str, Any]:
        world.apply(ctx, "eu-2", "slots", 1)
        on_step(ctx)
        return {"server": "eu-2", "slot": f"slot-{ctx.payload['player']}"}

    def return_to_source(ctx: StepContext) -> None:
        world.undo(ctx, "eu-1", "players", -1)

    @saga.step(compensate=return_to_source, retries=2)
    def leave_zone(ctx: StepContext) -> Dict[str, Any]:
        world.apply(ctx, "eu-1", "players", -1)
        on_step(ctx)
        return {"left": "eu-1"}

    def remove_from_destination(ctx: StepContext) -> None:
        world.undo(ctx, "eu-2", "players", 1)

    @saga.step(compensate=remove_from_destination, retries=2)
    def enter_zone(ctx: StepContext) -> Dict[str, Any]:
        if ctx.payload.get("destination_full"):
            raise RuntimeError("eu-2 refuses: zone full")
        world.apply(ctx, "eu-2", "players", 1)
        on_step(ctx)
        return {"entered": "eu-2"}

    return saga


def _child(tmp: str, kill_tx: str) -> None:
    """The game server process: teleports players until it is killed mid-teleport."""
    store = SQLiteStore(os.path.join(tmp, "sagas.db"))
    world = World(os.path.join(tmp, "world.db"))

    def on_step(ctx: StepContext) -> None:
        if ctx.tx_id == kill_tx and ctx.step == "leave_zone":
            print(f"MIDWAY {ctx.tx_id}", flush=True)
            sys.stdin.readline()  # wait here, the player in limbo, for the SIGKILL
    saga = build(store, world, on_step)
    for line in sys.stdin:
        tx_id, player, full = line.split()
        res = saga.run({"player": player, "destination_full": full == "1"}, tx_id=tx_id)
        print(f"DONE {tx_id} {res.status}", flush=True)


def run(seed: int = 7, out: Callable[[str], Any] = print) -> Dict[str, Any]:
    """Run the demo; return a summary dict (what a test or a dashboard checks)."""
    rng = random.Random(seed)
    players = [f"player{rng.randrange(100, 999)}" for _ in range(4)]
    full_at, kill_at = 1, 2 + rng.randrange(2)  # teleport 1 is refused; 2 or 3 is killed
    txs: List[Tuple[str, str, bool]] = [(f"tp-{seed}-{i}", p, i == full_at)
                                        for i, p in enumerate(players)]
    kill_tx = txs[kill_at][0]
    with tempfile.TemporaryDirectory(prefix="gameguard-saga-demo-") as tmp:
        world = World(os.path.join(tmp, "world.db"))
        world.db.executemany("INSERT INTO effects VALUES (?, 'seed', 'eu-1', ?, 'players', 1, "
                             "'seed')", [(f"seed/{p}", p) for _, p, _ in txs])
        header(out, "Saga: a cross-server teleport survives its process being killed",
               f"a child process teleports {len(txs)} players eu-1 → eu-2: reserve a slot on "
               "eu-2, leave eu-1,",
               "enter eu-2, each teleport a saga recorded in SQLite (WAL, synchronous=FULL).",
               "A status is the saga's outcome: committed, or compensated (every step undone).")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; from gameguard.demos.saga import _child; "
             "_child(sys.argv[1], sys.argv[2])", tmp, kill_tx],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert child.stdin is not None and child.stdout is not None
        killed = False
        for tx_id, player, full in txs:
            child.stdin.write(f"{tx_id} {player} {int(full)}\n")
            child.stdin.flush()
            line = child.stdout.readline().split()
            if line and line[0] == "MIDWAY":
                out(f"  {tx_id} ({player}): slot reserved on eu-2, player left eu-1 ...")
                out("    and the child process is killed now (SIGKILL)")
                child.send_signal(signal.SIGKILL)
                child.wait()
                killed = child.returncode == -signal.SIGKILL
                break
            out(f"  {tx_id} ({player}){' destination full:' if full else ':'} {line[-1]}")
        child.stdin.close()
        child.stdout.close()
        if child.poll() is None:  # pragma: no cover - it never got to the kill point
            child.kill()
            child.wait()

        store = SQLiteStore(os.path.join(tmp, "sagas.db"))
        rec = store.get(kill_tx)
        assert rec is not None
        out(f"  after the crash the store says {kill_tx} is {rec.status!r}, step "
            f"{rec.steps[rec.step]!r} attempt {rec.attempt} may have run;")
        out(f"    population {_census(world)}")
        resent: List[str] = []

        def on_step(ctx: StepContext) -> None:
            resent.append(f"{ctx.step} attempt {ctx.attempt} key {ctx.idempotency_key}")
        saga = build(store, world, on_step)
        out("  this process runs saga.recover():")
        results = saga.recover()
        for r in results:
            out(f"    {r.tx_id}: {r.status}")
        deliveries = world.db.execute(
            "SELECT key, attempt, applied FROM deliveries ORDER BY rowid").fetchall()
        dup = [d for d in deliveries if not d[2]]
        for k, attempt, _ in dup:
            out(f"    re-sent {k} (attempt {attempt}): the server had it already, not applied")
        unfinished = store.counts().get("executing", 0) + store.counts().get("preparing", 0) \
            + store.counts().get("compensating", 0)
        # the ledger: committed teleports applied once each, compensated ones net zero
        ledger_ok = True
        for tx_id, _, _ in txs:
            st = store.get(tx_id)
            rows = world.db.execute("SELECT what, server, kind, delta FROM effects "
                                    "WHERE tx = ?", (tx_id,)).fetchall()
            if st is None:
                continue  # never started (the process died first)
            if st.status == "committed":
                ledger_ok &= sorted(r[2] for r in rows) == ["do", "do", "do"]
            else:
                ledger_ok &= sum(r[3] for r in rows) == 0
        pop = world.population()
        out(f"  population now {_census(world)}; unfinished transactions: {unfinished};")
        out(f"  every effect applied exactly once: {ledger_ok}")
        counts = store.counts()
        store.close()
        world.close()
    return {"killed": killed, "recovered": len(results), "unfinished_after": unfinished,
            "ledger_ok": bool(ledger_ok), "population": pop, "status": counts,
            "duplicates_deduped": len(dup), "killed_tx": kill_tx}


if __name__ == "__main__":
    run()
