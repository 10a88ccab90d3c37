"""``PostgresStore`` against a real PostgreSQL 15 (``pg_server``): the store contract, leases,
SKIP LOCKED claims, fencing, group commit, migrations and every bad-input case."""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, Callable, Iterator, List

import psycopg
import pytest

from gameguard.errors import ConfigurationError, StaleTransaction, StoreError
from gameguard.saga import (COMMITTED, COMPENSATED, EXECUTING, FAILED, PostgresStore, Saga,
                            SagaStore, Transition)
from gameguard.saga.postgres import SCHEMA_VERSION
from pg_server import in_threads

_n = itertools.count()


@pytest.fixture
def make(pg_server: Any) -> Iterator[Callable[..., PostgresStore]]:
    """Stores on a fresh schema per test (``make(schema=...)`` to share one)."""
    made: List[PostgresStore] = []
    schema = f"t{next(_n)}_{int(time.time() * 1000) % 10**8}"

    def build(**kw: Any) -> PostgresStore:
        kw.setdefault("schema", schema)
        kw.setdefault("lease", 5.0)
        s = PostgresStore(kw.pop("dsn", pg_server.dsn()), **kw)
        made.append(s)
        return s
    yield build
    for s in made:
        s.close()


def transfer(store: PostgresStore, log: List[str], stop_at: str = "") -> Saga:
    saga = Saga("transfer", store=store, backoff=0.0)

    def step(name: str) -> Callable[[Any], Any]:
        def run(ctx: Any) -> Any:
            if name == stop_at and ctx.attempt == 1:
                raise KeyboardInterrupt  # the process "dies" here: the row stays as is
            log.append(f"{name}:{ctx.attempt}")
            return {"step": name}
        return run
    for name in ("debit", "credit"):
        saga.step(step(name), name=name, compensate=lambda ctx: log.append("undo"))
    return saga


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def freeze(store: PostgresStore) -> None:
    """What a paused process looks like from outside: its heartbeat stops."""
    store._stop.set()
    assert store._heart is not None
    store._heart.join(timeout=10)


def test_it_is_a_saga_store_and_runs_sagas_sync_and_async(make: Any) -> None:
    store = make()
    assert isinstance(store, SagaStore) and store.durability == "power-loss"
    log: List[str] = []
    saga = transfer(store, log)
    res = saga.run({"amount": 5, "note": "k\u0000ey order", "b": 1, "a": 2})
    assert res.status == COMMITTED and log == ["debit:1", "credit:1"]
    rec = store.get(res.tx_id)
    assert rec is not None and rec.status == COMMITTED and rec.version == 3
    # the JSON text comes back exactly as written (json columns, not jsonb)
    assert rec.payload_json == '{"amount":5,"note":"k\\u0000ey order","b":1,"a":2}'
    assert rec.results == {"debit": {"step": "debit"}, "credit": {"step": "credit"}}

    asaga = Saga("async", store=store)

    async def act(ctx: Any) -> int:
        await asyncio.sleep(0)
        return ctx.attempt
    asaga.step(act, name="a")
    out = asyncio.run(asaga.run_async({}))
    assert out.status == COMMITTED and out.results == {"a": 1}
    assert store.counts() == {COMMITTED: 2}
    assert store.stats()["writes"] >= 5 and store.available


def test_recover_after_a_crash_in_another_process(make: Any) -> None:
    a = make()
    log: List[str] = []
    with pytest.raises(KeyboardInterrupt):
        transfer(a, log, stop_at="credit").run({"amount": 1}, tx_id="tx-1")
    assert a.get("tx-1").status == EXECUTING  # type: ignore[union-attr]
    b = make()
    assert transfer(b, log).recover() == []  # a's lease holds: not b's to take
    a.close()  # a process that exits gives its lease up; a SIGKILLed one lets it lapse
    [res] = transfer(b, log).recover()
    assert res.status == COMMITTED and log == ["debit:1", "credit:2"]
    rec = b.get("tx-1")
    assert rec is not None and rec.owner == b.owner


def test_a_lapsed_owner_is_taken_over_and_its_late_writes_are_refused(make: Any) -> None:
    a, b = make(lease=0.6), make(lease=0.6)
    log: List[str] = []
    with pytest.raises(KeyboardInterrupt):
        transfer(a, log, stop_at="credit").run({}, tx_id="tx-f")
    rec = a.get("tx-f")
    assert rec is not None
    assert not b.claim("tx-f", rec.version, b.owner, time.time())  # a's lease holds
    freeze(a)
    wait_until(lambda: not b.owner_alive(a.owner))
    assert b.claim("tx-f", rec.version, b.owner, time.time())
    # a wakes up and writes what it would have written next: refused, nothing changes
    late = Transition("tx-f", rec.version, COMMITTED, 2, 0, None, None, time.time())
    with pytest.raises(StaleTransaction, match="lease lapsed"):
        a.update(late)
    # even at the version b wrote: the owner does not match
    late = Transition("tx-f", rec.version + 1, COMMITTED, 2, 0, None, None, time.time())
    with pytest.raises(StaleTransaction):
        a.update(late)
    after = b.get("tx-f")
    assert after is not None and after.status == EXECUTING and after.owner == b.owner
    assert after.version == rec.version + 1 and after.attempt == rec.attempt + 1


def test_claim_skips_a_row_another_claimer_holds_instead_of_waiting(make: Any,
                                                                    pg_server: Any) -> None:
    a = make()
    with pytest.raises(KeyboardInterrupt):
        transfer(a, [], stop_at="debit").run({}, tx_id="tx-l")
    rec = a.get("tx-l")
    assert rec is not None
    a.close()
    b = make()
    with psycopg.connect(pg_server.dsn()) as other:  # a racing claimer, mid-claim
        other.execute(f'SELECT 1 FROM "{b.schema}".saga_tx WHERE tx_id = %s FOR UPDATE',
                      ("tx-l",))
        t0 = time.monotonic()
        assert not b.claim("tx-l", rec.version, b.owner, time.time())
        assert time.monotonic() - t0 < 2.0  # skipped, not queued behind the lock
        other.rollback()
    assert b.claim("tx-l", rec.version, b.owner, time.time())
    assert not b.claim("tx-l", rec.version, b.owner, time.time())  # the version moved


def test_concurrent_sagas_share_commits(make: Any) -> None:
    store = make()
    saga = transfer(store, [])

    def worker(_: int) -> None:
        for _ in range(6):
            assert saga.run({}).status == COMMITTED
    errors = in_threads(16, worker)
    assert not errors and store.counts() == {COMMITTED: 96}
    assert store.stats()["writes_per_commit"] > 1.2, store.stats()


def test_purge_keeps_failed_rows_and_duplicates_are_refused(make: Any) -> None:
    store = make()
    saga = Saga("p", store=store, backoff=0.0)

    def boom(ctx: Any) -> None:
        raise RuntimeError("no")
    saga.step(lambda ctx: 1, name="a", compensate=boom)
    saga.step(boom, name="b")
    assert saga.run({}).status == FAILED
    ok = Saga("q", store=store)
    ok.step(lambda ctx: 1, name="a")
    done = ok.run({}, tx_id="dup")
    with pytest.raises(Exception, match="already exists"):
        ok.run({}, tx_id="dup")
    assert store.purge(retention=3600) == 0
    assert store.purge(retention=0) == 1
    assert store.get(done.tx_id) is None and [r.status for r in saga.failed()] == [FAILED]


def test_several_processes_migrate_one_schema_at_once(make: Any) -> None:
    stores = [make(schema="shared_first_use") for _ in range(4)]
    errors = in_threads(4, lambda i: stores[i].owner)
    assert not errors
    [(version,)] = stores[0]._read('SELECT version FROM "shared_first_use".schema_version')
    assert version == SCHEMA_VERSION


# -- bad input: a clear error naming what is wrong -----------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"schema": "Bad-Name"}, "schema must be"), ({"schema": ""}, "schema must be"),
    ({"lease": 0}, "lease"), ({"lease": float("inf")}, "lease"),
    ({"max_batch": 0}, "max_batch"), ({"dsn": ""}, "dsn must be"),
    ({"dsn": "host=x port"}, "not a valid PostgreSQL connection string"),
    ({"dsn": 5}, "dsn must be"),
])
def test_bad_arguments_are_configuration_errors(kw: Any, match: str) -> None:
    dsn = kw.pop("dsn", "host=127.0.0.1")
    with pytest.raises(ConfigurationError, match=match):
        PostgresStore(dsn, **kw)


def test_unreachable_server_fails_at_first_use_not_construction(make: Any) -> None:
    from pg_server import free_port
    store = make(dsn=f"host=127.0.0.1 port={free_port()} user=x dbname=y connect_timeout=2")
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL.*(refused|failed)"):
        store.owner
    assert not store.available


def test_wrong_password_says_so(make: Any, pg_server: Any) -> None:
    store = make(dsn=pg_server.dsn(password="wrong"))
    with pytest.raises(StoreError, match="password authentication failed"):
        store.scan()
    assert "wrong" not in store.identity and "password" not in store.identity


def test_a_newer_schema_is_refused_untouched(make: Any, pg_server: Any) -> None:
    make(schema="from_the_future").owner
    pg_server.sql('UPDATE "from_the_future".schema_version SET version = 99')
    with pytest.raises(StoreError, match="schema version 99.*up to 1: upgrade gameguard"):
        make(schema="from_the_future").owner
    assert pg_server.sql('SELECT version FROM "from_the_future".schema_version') == [(99,)]


def test_a_user_who_may_not_create_the_schema_is_told_how_to_fix_it(make: Any,
                                                                     pg_server: Any) -> None:
    pg_server.sql("DROP ROLE IF EXISTS limited", "CREATE ROLE limited LOGIN PASSWORD 'pw'")
    store = make(dsn=pg_server.dsn(user="limited", password="pw"), schema="nope")
    with pytest.raises(StoreError, match="may not create or change schema 'nope'.*"
                                         "CREATE SCHEMA nope AUTHORIZATION"):
        store.get("x")
    # once an owner made it for them, the same user migrates and runs
    pg_server.sql("CREATE SCHEMA nope AUTHORIZATION limited")
    ok = make(dsn=pg_server.dsn(user="limited", password="pw"), schema="nope")
    assert ok.scan() == []


def test_closed_store_refuses_and_gives_its_lease_up(make: Any) -> None:
    a, b = make(), make()
    owner = a.owner
    assert b.owner_alive(owner)
    a.close()
    a.close()  # idempotent
    assert not b.owner_alive(owner)
    with pytest.raises(StoreError, match="closed"):
        a.scan()


def test_compensation_path_on_postgres(make: Any) -> None:
    store = make()
    log: List[str] = []
    saga = Saga("c", store=store, backoff=0.0)
    saga.step(lambda ctx: log.append("a"), name="a", compensate=lambda ctx: log.append("ua"))

    def refuse(ctx: Any) -> None:
        raise RuntimeError("refused")
    saga.step(refuse, name="b", compensate=lambda ctx: log.append("ub"))
    res = saga.run({})
    assert res.status == COMPENSATED and log == ["a", "ub", "ua"]
    rec = store.get(res.tx_id)
    assert rec is not None and rec.errors[0]["error"] == "RuntimeError: refused"


def test_psycopg_is_imported_only_when_a_store_is_built() -> None:
    import json
    import subprocess
    import sys
    code = ("import sys, json, gameguard.saga as s; s.PostgresStore; s.Barrier; a = 'psycopg' in "
            "sys.modules; s.PostgresStore('host=127.0.0.1'); "
            "print(json.dumps([a, 'psycopg' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == [False, True]


def test_connections_killed_by_the_server_fail_one_call_then_reconnect(make: Any,
                                                                        pg_server: Any) -> None:
    store = make(lease=0.6)
    log: List[str] = []
    saga = transfer(store, log)
    assert saga.run({}).status == COMMITTED and store.scan() == []
    beats = store.renewals
    pg_server.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE application_name = 'gameguard-saga'")
    with pytest.raises(StoreError, match="may or may not be recorded"):
        saga.run({}, tx_id="cut")  # the insert met the dead write connection
    assert not store.available
    with pytest.raises(StoreError, match="read failed"):
        store.scan()  # and this read the dead pooled one
    assert saga.run({}).status == COMMITTED and store.available  # both reopened
    assert store.get("cut") is None  # the failed insert was not recorded
    wait_until(lambda: store.renewals > beats + 2)  # the heartbeat reconnected too
    assert make().owner_alive(store.owner)
