"""``Barrier``: the callee side of exactly-once, DTM's sub-transaction barrier.

A saga calls each step at least once (a crash or a lost reply means a retry) and may call a
compensation before, or without, its action ever arriving (the action timed out on the
caller's side but is still in the network). The participant makes that safe inside its own
database transaction, before it applies the effect::

    with conn.transaction():                      # psycopg; sqlite3: BEGIN ... COMMIT, or
                                                  # its implicit transaction, then commit()
        if barrier.check(conn, ctx):              # ctx: a StepContext or its idempotency_key
            apply_the_effect(conn)

``check`` inserts ``(tx_id, step, phase)`` into the barrier table and answers whether to
apply the effect. ``False`` means skip it:

* **duplicate**: this phase of this step already ran (a retry, a re-sent step);
* **null compensation**: a compensation whose action never ran. It records the action as
  done-and-undone, so that
* **anti-hanging**: an action arriving after its compensation is refused.

The barrier rows commit with the effect or roll back with it, so "recorded" and "applied"
never disagree. Works with ``sqlite3`` connections and psycopg 3 (``check``), and psycopg's
``AsyncConnection`` (``await check_async``). The table is created on first use.
"""
from __future__ import annotations

import re
import threading
from typing import Any, Generator, Set, Tuple

from ..errors import ConfigurationError, SagaError
from .records import ACTION, COMPENSATION

__all__ = ["Barrier"]

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?\Z")
Key = Tuple[str, str, str]
Row = Tuple[str, str, str, str]


def _key(ctx: Any) -> Key:
    """(tx_id, step, phase) from a StepContext (or anything with those attributes) or from
    an idempotency key ``"<saga>/<tx_id>/<step>/<phase>"``, which is all a remote
    participant gets."""
    if isinstance(ctx, str):
        parts = ctx.split("/")
        if len(parts) != 4 or not all(parts):
            raise ValueError(f"not a saga idempotency key (<saga>/<tx_id>/<step>/<phase>): "
                             f"{ctx!r}")
        tx_id, step, phase = parts[1], parts[2], parts[3]
    else:
        tx_id, step, phase = ctx.tx_id, ctx.step, ctx.phase
    if phase not in (ACTION, COMPENSATION):
        raise ValueError(f"phase must be {ACTION!r} or {COMPENSATION!r}, got {phase!r}")
    return str(tx_id), str(step), str(phase)


class Barrier:
    """``Barrier(table="gameguard_barrier")``; ``table`` may be ``schema.table``.

    One object serves any number of connections and threads; it remembers which databases
    already have the table, so the check is one or two ``INSERT``s.
    """

    def __init__(self, table: str = "gameguard_barrier") -> None:
        if not isinstance(table, str) or not _TABLE.match(table):
            raise ConfigurationError(f"table must be an SQL identifier or schema.table, "
                                     f"got {table!r}")
        self.table = table
        self._ready: Set[Any] = set()  # databases known to have the table
        self._mu = threading.Lock()

    def _sql(self, mark: str) -> Tuple[str, str]:
        create = (f"CREATE TABLE IF NOT EXISTS {self.table} (tx_id TEXT NOT NULL, "
                  f"step TEXT NOT NULL, phase TEXT NOT NULL, origin TEXT NOT NULL, "
                  f"PRIMARY KEY (tx_id, step, phase))")
        insert = (f"INSERT INTO {self.table} (tx_id, step, phase, origin) "
                  f"VALUES ({mark}, {mark}, {mark}, {mark}) ON CONFLICT DO NOTHING")
        return create, insert

    # -- sync: sqlite3 and psycopg ------------------------------------------------------------
    def check(self, conn: Any, ctx: Any) -> bool:
        """Record this (tx_id, step, phase) in ``conn``'s open transaction; ``True``: apply
        the effect now; ``False``: skip it (duplicate, or null compensation / late action).
        """
        plan = _plan(*_key(ctx))
        if _is_sqlite(conn):
            # legacy isolation levels open the transaction at our INSERT, which the effect
            # then joins; autocommit would commit the barrier row on its own
            autocommit = conn.isolation_level is None or getattr(conn, "autocommit", -1) is True
            if autocommit and not conn.in_transaction:
                raise SagaError("Barrier.check() must run inside the participant's "
                                "transaction (sqlite3 in autocommit: BEGIN first), so the "
                                "barrier commits with the effect")
            create, insert = self._sql("?")
            conn.execute(create)  # a cheap no-op once it exists; never races in SQLite
        else:
            _check_psycopg_transaction(conn)
            create, insert = self._sql("%s")
            db = _pg_database(conn)
            if db not in self._ready:
                # concurrent first uses wait for each other instead of racing the catalog
                conn.execute(_LOCK, (self.table,))
                conn.execute(create)
                with self._mu:
                    self._ready.add(db)
        args = next(plan)
        while True:
            n = conn.execute(insert, args).rowcount
            try:
                args = plan.send(n)
            except StopIteration as done:
                return bool(done.value)

    # -- async: psycopg AsyncConnection ---------------------------------------------------------
    async def check_async(self, conn: Any, ctx: Any) -> bool:
        """:meth:`check` for a psycopg ``AsyncConnection`` (in its open transaction)."""
        plan = _plan(*_key(ctx))
        _check_psycopg_transaction(conn)
        create, insert = self._sql("%s")
        db = _pg_database(conn)
        if db not in self._ready:
            await conn.execute(_LOCK, (self.table,))
            await conn.execute(create)
            with self._mu:
                self._ready.add(db)
        args = next(plan)
        while True:
            n = (await conn.execute(insert, args)).rowcount
            try:
                args = plan.send(n)
            except StopIteration as done:
                return bool(done.value)

    def __repr__(self) -> str:
        return f"Barrier({self.table!r})"


_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s))"


def _plan(tx_id: str, step: str, phase: str) -> Generator[Row, int, bool]:
    """The barrier's decision, written once for both drivers: yields the rows to insert
    (tx_id, step, phase, origin), is sent how many went in, returns whether to apply."""
    if phase == ACTION:
        return (yield (tx_id, step, ACTION, ACTION)) == 1  # 0: duplicate, or compensated first
    # a compensation: if the action's row goes in now, the action never ran here: record
    # both, apply nothing, and a late action finds its row taken (anti-hanging)
    if (yield (tx_id, step, ACTION, COMPENSATION)) == 1:
        yield (tx_id, step, COMPENSATION, COMPENSATION)
        return False
    return (yield (tx_id, step, COMPENSATION, COMPENSATION)) == 1  # 0: duplicate


def _is_sqlite(conn: Any) -> bool:
    return type(conn).__module__.startswith("sqlite3")


def _check_psycopg_transaction(conn: Any) -> None:
    # autocommit with no transaction block would commit the barrier row on its own
    if getattr(conn, "autocommit", False) and conn.info.transaction_status == 0:  # IDLE
        raise SagaError("Barrier.check() must run inside the participant's transaction "
                        "(psycopg: 'with conn.transaction():' or autocommit off), so the "
                        "barrier commits with the effect")


def _pg_database(conn: Any) -> Tuple[Any, ...]:
    info = conn.info
    return (info.host, info.port, info.dbname)
