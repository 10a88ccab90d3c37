"""``Barrier`` on sqlite3 and on psycopg (sync and async): duplicates skipped, null
compensation, anti-hanging, rolled back with the participant's transaction, and a
hypothesis run over any order of (re)deliveries against a model of DTM's rules."""
from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import Any, Callable, Iterator, List, Tuple

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gameguard.errors import ConfigurationError, SagaError
from gameguard.saga import Barrier, Saga, SQLiteStore, StepContext
from pg_server import in_threads


def ctx(tx: str, step: str, phase: str) -> StepContext:
    return StepContext(tx, "trade", step, phase, None, {}, 1, f"trade/{tx}/{step}/{phase}",
                       "t", None)


def sqlite_check(barrier: Barrier, conn: sqlite3.Connection, c: Any) -> bool:
    conn.execute("BEGIN")
    try:
        return barrier.check(conn, c)
    finally:
        conn.execute("COMMIT")


@pytest.fixture
def pg_conn(pg_server: Any) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_server.dsn()) as conn:
        yield conn


def pg_check(barrier: Barrier, conn: psycopg.Connection[Any], c: Any) -> bool:
    with conn.transaction():
        return barrier.check(conn, c)


def test_sqlite_duplicates_null_compensation_and_anti_hanging() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    b = Barrier()
    assert sqlite_check(b, conn, ctx("t1", "debit", "action"))          # first: apply
    assert not sqlite_check(b, conn, ctx("t1", "debit", "action"))      # duplicate
    assert sqlite_check(b, conn, ctx("t1", "debit", "compensation"))    # undo what ran
    assert not sqlite_check(b, conn, ctx("t1", "debit", "compensation"))
    # compensation first: nothing to undo, and the late action is refused
    assert not sqlite_check(b, conn, "trade/t2/debit/compensation")
    assert not sqlite_check(b, conn, "trade/t2/debit/action")
    rows = conn.execute("SELECT tx_id, step, phase, origin FROM gameguard_barrier "
                        "WHERE tx_id = 't2' ORDER BY phase").fetchall()
    assert rows == [("t2", "debit", "action", "compensation"),
                    ("t2", "debit", "compensation", "compensation")]


def test_sqlite_rolls_back_with_the_effect_and_needs_a_transaction() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    b = Barrier("barrier_rows")
    conn.execute("BEGIN")
    assert b.check(conn, ctx("t", "s", "action"))
    conn.execute("ROLLBACK")  # the effect failed: the barrier row goes too
    assert sqlite_check(b, conn, ctx("t", "s", "action"))  # so the retry applies
    with pytest.raises(SagaError, match="inside the participant's transaction"):
        b.check(conn, ctx("t", "s", "action"))


def test_sqlite_legacy_implicit_transaction_joins_the_effect(tmp_path: Any) -> None:
    conn = sqlite3.connect(tmp_path / "p.db")  # isolation_level "": implicit transactions
    conn.execute("CREATE TABLE effects (k TEXT)")
    b = Barrier()
    assert b.check(conn, "trade/t/s/action") and conn.in_transaction
    conn.execute("INSERT INTO effects VALUES ('x')")
    conn.rollback()  # the effect failed: both go
    assert conn.execute("SELECT COUNT(*) FROM effects").fetchone() == (0,)
    assert b.check(conn, "trade/t/s/action")
    conn.commit()
    assert not b.check(conn, "trade/t/s/action")
    conn.commit()


def test_postgres_sync(pg_conn: psycopg.Connection[Any]) -> None:
    b = Barrier(f"public.b_{uuid.uuid4().hex[:8]}")
    tx = uuid.uuid4().hex
    assert pg_check(b, pg_conn, ctx(tx, "credit", "action"))
    assert not pg_check(b, pg_conn, ctx(tx, "credit", "action"))
    assert not pg_check(b, pg_conn, ctx(tx, "debit", "compensation"))
    assert not pg_check(b, pg_conn, ctx(tx, "debit", "action"))  # hanging action refused
    with pytest.raises(RuntimeError):
        with pg_conn.transaction():
            assert b.check(pg_conn, ctx(tx, "notify", "action"))
            raise RuntimeError("the effect failed")
    assert pg_check(b, pg_conn, ctx(tx, "notify", "action"))  # the rollback took it back


def test_postgres_autocommit_needs_a_transaction_block(pg_server: Any) -> None:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        b = Barrier()
        with pytest.raises(SagaError, match="inside the participant's transaction"):
            b.check(conn, ctx("t", "s", "action"))
        with conn.transaction():
            assert b.check(conn, ctx(uuid.uuid4().hex, "s", "action"))


def test_postgres_async(pg_server: Any) -> None:
    async def main() -> List[bool]:
        b = Barrier(f"b_async_{uuid.uuid4().hex[:8]}")
        tx = uuid.uuid4().hex
        out = []
        async with await psycopg.AsyncConnection.connect(pg_server.dsn()) as conn:
            for c in (ctx(tx, "s", "action"), ctx(tx, "s", "action"),
                      ctx(tx, "s", "compensation"), ctx(tx, "s", "compensation"),
                      ctx(tx, "t", "compensation"), ctx(tx, "t", "action")):
                async with conn.transaction():
                    out.append(await b.check_async(conn, c))
        return out
    assert asyncio.run(main()) == [True, False, True, False, False, False]


def test_concurrent_first_use_on_postgres(pg_server: Any) -> None:
    """Several processes' first checks at once: the table is created once, nobody fails."""
    table = f"b_race_{uuid.uuid4().hex[:8]}"
    results: List[bool] = []

    def one(_: int) -> None:
        with psycopg.connect(pg_server.dsn()) as conn:
            results.append(pg_check(Barrier(table), conn, ctx("same", "s", "action")))
    errors = in_threads(6, one)
    assert not errors and sorted(results) == [False] * 5 + [True]


@pytest.mark.parametrize("bad", ["", "a-b", "1x", "a.b.c", "x; DROP TABLE y", None])
def test_bad_table_name(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="table"):
        Barrier(bad)


@pytest.mark.parametrize("key", ["a/b/c", "trade/t/s/undo", "trade//s/action"])
def test_bad_idempotency_key(key: str) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("BEGIN")
    with pytest.raises(ValueError):
        Barrier().check(conn, key)


def test_a_saga_step_through_the_barrier_applies_once(tmp_path: Any) -> None:
    ledger = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    ledger.execute("CREATE TABLE effects (k TEXT, amount INTEGER)")
    barrier = Barrier()
    saga = Saga("pay", store=SQLiteStore(":memory:"), backoff=0.0)

    def effect(c: StepContext, amount: int) -> None:
        ledger.execute("BEGIN")
        if barrier.check(ledger, c):
            ledger.execute("INSERT INTO effects VALUES (?, ?)", (c.idempotency_key, amount))
        ledger.execute("COMMIT")

    def charge(c: StepContext) -> None:
        effect(c, 10)
        if c.attempt == 1:
            raise ConnectionError("reply lost after the effect applied")
    saga.step(charge, name="charge", retries=2, compensate=lambda c: effect(c, -10))
    assert saga.run({}).status == "committed"
    assert ledger.execute("SELECT SUM(amount), COUNT(*) FROM effects").fetchone() == (10, 1)


# -- any order of deliveries, against the model -------------------------------------------------
Delivery = Tuple[str, str]  # (step, phase)


def model(deliveries: List[Delivery]) -> List[bool]:
    """DTM's rules: an action applies once unless its compensation came first; a compensation
    applies once, and only if its action applied before it."""
    seen: set = set()
    out = []
    for step, phase in deliveries:
        if phase == "action":
            out.append((step, "action") not in seen)
            seen.add((step, "action"))
        else:
            ran = (step, "action") in seen
            first = (step, "compensation") not in seen
            seen |= {(step, "action"), (step, "compensation")}
            out.append(ran and first)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]),
                          st.sampled_from(["action", "compensation"])), max_size=12))
def test_barrier_decides_as_the_model(deliveries: List[Delivery]) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    b = Barrier()
    got = [sqlite_check(b, conn, ctx("tx", s, p)) for s, p in deliveries]
    assert got == model(deliveries)
    applied: Callable[[str, str], int] = lambda s, p: sum(  # noqa: E731
        ok for (s2, p2), ok in zip(deliveries, got) if (s2, p2) == (s, p))
    for s in ("a", "b"):  # each effect at most once, an undo only of an applied action
        assert applied(s, "action") <= 1 and applied(s, "compensation") <= applied(s, "action")
