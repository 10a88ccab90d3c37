"""Crash-test worker: recovers, reports, then runs sagas until it is killed (SIGKILL).

``python saga_worker.py SAGA_DB LEDGER_DB SEED MODE`` (MODE ``sync``: 3 threads, ``async``:
16 tasks). Protocol with the test (``test_saga_crash.py``):

1. ``recover()`` (``recover_async()``) everything the previous, killed worker left;
2. print ``recovered N`` and wait for a line on stdin (the test checks the databases now);
3. on ``go``, run sagas forever; on ``quit``, exit.

Each saga moves money: ``debit`` (account A, -amount), ``credit`` (B, +amount), ``notify``
(N, +1). Steps write to a *ledger* (a second SQLite database) that dedupes by idempotency
key (``entries.key`` is the primary key), and log every call, duplicate or not, in ``calls``.
A compensation follows dtm's barrier: it first inserts the action's key as a zero "barrier"
row; if that insert took, the action never applied (null compensation, and a late action
is now blocked); otherwise it inserts the undo row under its own key. Faults drawn from
the seed: a step that fails for good (the saga compensates), a step that applies its
effect then fails its first attempt (the retry must be deduped), a compensation that
applies then fails its first attempt, and rare self-kills at the worst moments.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import threading

from gameguard.saga import Saga, SQLiteStore

STEPS = (("debit", "A", -1), ("credit", "B", 1), ("notify", "N", 0))
LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, tx TEXT NOT NULL, step TEXT NOT NULL,
                                    account TEXT NOT NULL, amount INTEGER NOT NULL,
                                    kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, key TEXT NOT NULL, tx TEXT NOT NULL,
                                  attempt INTEGER NOT NULL, applied INTEGER NOT NULL);
"""


class Ledger:
    """The remote side: applies each effect once per idempotency key."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.local = threading.local()
        self.conn().executescript(LEDGER_SCHEMA)

    def conn(self) -> sqlite3.Connection:
        c = getattr(self.local, "c", None)
        if c is None:
            c = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")  # survives the process being killed
            self.local.c = c
        return c

    def apply(self, ctx, account: str, amount: int) -> bool:
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        applied = c.execute("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, 'do')",
                            (ctx.idempotency_key, ctx.tx_id, ctx.step, account,
                             amount)).rowcount
        c.execute("INSERT INTO calls (key, tx, attempt, applied) VALUES (?, ?, ?, ?)",
                  (ctx.idempotency_key, ctx.tx_id, ctx.attempt, applied))
        c.execute("COMMIT")
        return bool(applied)

    def undo(self, ctx, account: str, amount: int) -> bool:
        action_key = ctx.idempotency_key.rsplit("/", 1)[0] + "/action"
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        barrier = c.execute("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, 0, 'barrier')",
                            (action_key, ctx.tx_id, ctx.step, account)).rowcount
        applied = 0
        did = not barrier and c.execute("SELECT kind FROM entries WHERE key = ?",
                                        (action_key,)).fetchone()[0] == "do"
        if did:  # the action applied (not just an earlier null compensation): undo it, once
            applied = c.execute("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, 'undo')",
                                (ctx.idempotency_key, ctx.tx_id, ctx.step, account,
                                 -amount)).rowcount
        c.execute("INSERT INTO calls (key, tx, attempt, applied) VALUES (?, ?, ?, ?)",
                  (ctx.idempotency_key, ctx.tx_id, ctx.attempt, applied))
        c.execute("COMMIT")
        return bool(applied)


PG_LEDGER = """
CREATE TABLE IF NOT EXISTS {p}_entries (key TEXT PRIMARY KEY, tx TEXT NOT NULL,
    step TEXT NOT NULL, account TEXT NOT NULL, amount INTEGER NOT NULL, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {p}_calls (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL,
    tx TEXT NOT NULL, attempt INTEGER NOT NULL, applied INTEGER NOT NULL, pid INTEGER NOT NULL);
"""


class PgLedger:
    """The remote side on PostgreSQL, exactly-once through ``Barrier``: the barrier row and
    the effect commit together. A null compensation leaves no entry (only barrier rows)."""

    def __init__(self, dsn: str, prefix: str) -> None:
        import psycopg

        from gameguard.saga import Barrier
        self.dsn, self.prefix, self.psycopg = dsn, prefix, psycopg
        self.barrier = Barrier(f"{prefix}_barrier")
        self.local = threading.local()
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SELECT pg_advisory_lock(hashtext(%s))", (prefix,))
            for stmt in PG_LEDGER.format(p=prefix).split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute("SELECT pg_advisory_unlock(hashtext(%s))", (prefix,))

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = self.psycopg.connect(self.dsn)
        return c

    def _record(self, ctx, account: str, amount: int, kind: str) -> bool:
        c = self.conn()
        with c.transaction():
            applied = self.barrier.check(c, ctx)
            if applied:
                c.execute(f"INSERT INTO {self.prefix}_entries VALUES (%s, %s, %s, %s, %s, %s)",
                          (ctx.idempotency_key, ctx.tx_id, ctx.step, account, amount, kind))
            c.execute(f"INSERT INTO {self.prefix}_calls (key, tx, attempt, applied, pid) "
                      f"VALUES (%s, %s, %s, %s, %s)",
                      (ctx.idempotency_key, ctx.tx_id, ctx.attempt, int(applied), os.getpid()))
        return applied

    def apply(self, ctx, account: str, amount: int) -> bool:
        return self._record(ctx, account, amount, "do")

    def close(self) -> None:
        """Close this thread's connection."""
        c = getattr(self.local, "c", None)
        if c is not None:
            c.close()
            self.local.c = None

    def undo(self, ctx, account: str, amount: int) -> bool:
        return self._record(ctx, account, -amount, "undo")


RUNNING = threading.Event()  # set once recovery is over: the planted kills spare recovery


def suicide(ctx, point: str) -> None:
    # first attempt, outside recovery only: the recovery that follows must finish
    if (RUNNING.is_set() and ctx.attempt == 1
            and ctx.payload.get("kill") == f"{ctx.step}:{point}"):
        os.kill(os.getpid(), signal.SIGKILL)


def build(saga_db: str, ledger_db: str, mode: str) -> tuple:
    store = SQLiteStore(saga_db)
    ledger = Ledger(ledger_db)
    return store, ledger, build_saga(store, ledger, mode)


def build_saga(store, ledger, mode: str) -> Saga:
    """The transfer saga over any store and any ledger (``apply``/``undo``)."""
    saga = Saga("transfer", store=store, seed=1, backoff=0.0005, max_backoff=0.002)

    def make(step: str, account: str, sign: int):
        def action(ctx):
            amount = ctx.payload["amount"] * sign if sign else 1
            suicide(ctx, "before")
            if ctx.payload.get("fail") == step:
                raise RuntimeError(f"{step} refused")
            ledger.apply(ctx, account, amount)
            suicide(ctx, "after")
            if ctx.payload.get("flaky") == step and ctx.attempt == 1:
                raise ConnectionError("reply lost after the effect applied")
            return {"amount": amount}

        def compensate(ctx):
            amount = ctx.payload["amount"] * sign if sign else 1
            ledger.undo(ctx, account, amount)
            suicide(ctx, "undone")
            if ctx.payload.get("comp_flaky") == step and ctx.attempt == 1:
                raise ConnectionError("undo reply lost")

        if mode == "async":
            async def action_async(ctx):
                await asyncio.sleep(0)
                return action(ctx)

            async def compensate_async(ctx):
                await asyncio.sleep(0)
                compensate(ctx)
            return action_async, compensate_async
        return action, compensate

    for step, account, sign in STEPS:
        act, comp = make(step, account, sign)
        saga.step(act, name=step, compensate=comp, retries=3)
    return saga


def payload(rng: random.Random) -> dict:
    p: dict = {"amount": rng.randint(1, 100)}
    names = [s[0] for s in STEPS]
    r = rng.random()
    if r < 0.3:
        p["fail"] = rng.choice(names)
    if rng.random() < 0.2:
        p["flaky"] = rng.choice(names)
    if rng.random() < 0.2:
        p["comp_flaky"] = rng.choice(names)
    if rng.random() < 0.01:
        p["kill"] = f"{rng.choice(names)}:{rng.choice(['before', 'after', 'undone'])}"
    return p


def build_pg(dsn: str, schema: str, lease: float, mode: str = "sync") -> tuple:
    from gameguard.saga import PostgresStore
    store = PostgresStore(dsn, schema=schema, lease=lease)
    ledger = PgLedger(dsn, f"{schema}_ledger")
    return store, ledger, build_saga(store, ledger, mode)


def main() -> None:
    if sys.argv[1] == "--pg":  # --pg DSN SCHEMA SEED LEASE: 3 threads, recovered ids printed
        dsn, schema, seed, lease = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
        return main_pg(*build_pg(dsn, schema, lease), seed)
    if sys.argv[1] == "--pg-hold":  # --pg-hold DSN SCHEMA TX LEASE: one saga, paused in credit
        return hold_pg(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    saga_db, ledger_db, seed, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store, ledger, saga = build(saga_db, ledger_db, mode)
    if mode == "async":
        done = asyncio.run(saga.recover_async())
    else:
        done = saga.recover()
    print(f"recovered {len(done)}", flush=True)
    if sys.stdin.readline().strip() != "go":
        store.close()
        return
    RUNNING.set()
    if mode == "async":
        async def runner(k: int) -> None:
            rng = random.Random(seed * 100 + k)
            while True:
                await saga.run_async(payload(rng))

        async def go() -> None:
            await asyncio.gather(*(runner(k) for k in range(16)))
        asyncio.run(go())
    else:
        def runner(k: int) -> None:
            rng = random.Random(seed * 100 + k)
            while True:
                saga.run(payload(rng))
        threads = [threading.Thread(target=runner, args=(k,), daemon=True) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main_pg(store, ledger, saga, seed: int) -> None:
    """Recover (racing the other workers), report what this worker finished, run sagas."""
    done = saga.recover()
    print(f"recovered {len(done)} {','.join(r.tx_id for r in done)}", flush=True)
    if sys.stdin.readline().strip() != "go":
        store.close()
        return
    RUNNING.set()
    from gameguard.saga import StaleTransaction

    def runner(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        while True:
            try:
                saga.run(payload(rng))
            except StaleTransaction:  # fenced: our lease lapsed under load; the row is theirs
                pass
    threads = [threading.Thread(target=runner, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def hold_pg(dsn: str, schema: str, tx_id: str, lease: float) -> None:
    """Run one saga that stops in ``credit`` (before its effect) until a line arrives on
    stdin: the test freezes this process there (SIGSTOP) past its lease."""
    store, ledger, _ = build_pg(dsn, schema, lease)
    saga = Saga("transfer", store=store, backoff=0.0)
    for step, account, sign in STEPS:
        def action(ctx, step=step, account=account, sign=sign):
            if ctx.step == "credit":
                print(f"holding {store.owner}", flush=True)
                sys.stdin.readline()
            ledger.apply(ctx, account, ctx.payload["amount"] * sign if sign else 1)
            return {"amount": ctx.payload["amount"]}
        saga.step(action, name=step, compensate=lambda ctx: None)
    from gameguard.saga import StaleTransaction
    try:
        saga.run({"amount": 7}, tx_id=tx_id)
        print("not fenced", flush=True)
    except StaleTransaction as exc:
        print(f"fenced {type(exc).__name__}: {exc}", flush=True)
    store.close()


if __name__ == "__main__":
    main()
