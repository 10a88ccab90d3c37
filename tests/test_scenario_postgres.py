"""The scenario with ``--dsn``: the guarded run keeps its teleport sagas in a real PostgreSQL
(``pg_server``), and they are recorded, committed, compensated and recovered there.

A second full ``--quick`` run would cost about a minute, so this runs the scenario's own
runner (``run_mode``, what ``--dsn`` drives) once, guarded, for a few seconds with only the
two faults that interrupt sagas: the dependency that turns slow then fails (steps fail,
sagas compensate, some compensations run out of retries) and battle SIGKILLed in the middle
of teleports and restarted. The gateways then recover, failed compensations included, as at
the end of every guarded run. The figures are the quick run's: no saga lost, none applied
twice; and the rows are read back from PostgreSQL itself.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from gameguard.scenario import report
from gameguard.scenario.run import run_mode
from test_scenario import scenario

DURATION = 8.0  # seconds of load: the two faults' phases are about a second each
FAULTS = ("slow-fail", "kill")
FINAL = ("committed", "compensated")


@pytest.fixture(scope="module")
def pg_run(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    pg_server.sql("CREATE DATABASE scenario_dsn")
    dsn = pg_server.dsn(dbname="scenario_dsn")
    work = tmp_path_factory.mktemp("scenario-pg")
    run = asyncio.run(run_mode(True, str(work), DURATION, 7, FAULTS, dsn))
    rows: Dict[str, str] = {}  # tx -> status, from every gateway's schema
    for schema in run["schemas"]:
        for tx, status in pg_server.sql(f"SELECT tx_id, status FROM {schema}.saga_tx",
                                        dbname="scenario_dsn"):
            rows[tx] = status
    yield {"run": run, "figures": report.figures(run), "rows": rows, "work": work}
    pg_server.sql("DROP DATABASE scenario_dsn WITH (FORCE)")


def test_the_sagas_are_recorded_in_postgres_not_sqlite(pg_run: Dict[str, Any]) -> None:
    run, rows, work = pg_run["run"], pg_run["rows"], pg_run["work"]
    assert len(run["schemas"]) == 2  # one per gateway, named for this run
    assert not list(Path(work).glob("*-sagas.db")), "a saga log went to SQLite"
    # every teleport a participant saw is a saga PostgreSQL holds
    assert run["ledger"] and set(run["ledger"]) <= set(rows)
    assert len(rows) >= pg_run["figures"]["sagas_started"]


def test_none_is_lost_or_applied_twice_and_each_ends_committed_or_compensated(
        pg_run: Dict[str, Any]) -> None:
    f, rows = pg_run["figures"], pg_run["rows"]
    assert f["sagas_started"] > 0
    assert f["sagas_lost"] == 0
    assert f["effects_applied_twice"] == 0
    assert f["sagas_committed"] + f["sagas_compensated"] == f["sagas_started"]
    # the log agrees with the participants' ledgers, and recovery left nothing unfinished
    assert sorted(set(rows.values())) == sorted(FINAL)
    assert sum(s == "committed" for s in rows.values()) == f["sagas_committed"]


def test_the_faults_made_sagas_compensate_and_recovery_finish_them(
        pg_run: Dict[str, Any]) -> None:
    f, run = pg_run["figures"], pg_run["run"]
    assert f["sagas_committed"] > 0 and f["sagas_compensated"] > 0
    assert run["recovered"] > 0, "no saga needed recovering: the faults did not bite"


def test_a_dsn_that_refuses_the_login_is_a_clear_error(pg_server: Any) -> None:
    done = scenario("--quick", "--dsn", pg_server.dsn(password="not-the-password"))
    assert done.returncode != 0
    assert "DSN does not answer" in done.stderr and "password" in done.stderr
    assert "not-the-password" not in done.stderr  # the error names no secret


def test_a_finished_run_drops_its_schemas_unless_kept(pg_server: Any) -> None:
    from gameguard.scenario.cli import drop_schemas
    pg_server.sql("CREATE SCHEMA scenario_gone_0", "CREATE TABLE scenario_gone_0.saga_tx (x int)",
                  "CREATE SCHEMA scenario_kept_0")
    drop_schemas(pg_server.dsn(), ["scenario_gone_0"])
    left = {r[0] for r in pg_server.sql("SELECT nspname FROM pg_namespace WHERE nspname "
                                        "LIKE 'scenario_%'")}
    assert left == {"scenario_kept_0"}
    pg_server.sql("DROP SCHEMA scenario_kept_0")
