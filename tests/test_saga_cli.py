"""``python -m gameguard sagas``: list, show and retry against stores (SQLite and
PostgreSQL) left by a process that was SIGKILLed mid-saga; clear errors for a missing or
foreign file and for an unusable DSN."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
import time
from typing import Any, Callable, Iterator, List

import pytest

from gameguard.__main__ import main

APP = '''
import os, signal
from gameguard.saga import PostgresStore, Saga, SQLiteStore

if "CRASH_DSN" in os.environ:
    store = PostgresStore(os.environ["CRASH_DSN"], schema="cli", lease=0.5)
else:
    store = SQLiteStore(os.environ["CRASH_DB"])
saga = Saga("teleport", store=store, backoff=0.0)


@saga.step
def reserve(ctx):
    return {"slot": 7}


def come_back(ctx):
    if os.environ.get("CRASH_BROKEN_UNDO"):
        raise RuntimeError("eu-1 unreachable")


@saga.step(compensate=come_back)
def leave(ctx):
    if ctx.payload.get("kill") and os.environ.get("CRASH_KILL"):
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies mid-teleport
    return {"left": "eu-1"}


@saga.step
def enter(ctx):
    if ctx.payload.get("refuse"):
        raise RuntimeError("zone full")
    return {"entered": "eu-2"}


if __name__ == "__main__":
    saga.run({"refuse": True}, tx_id="tp-failed")  # its undo fails too: kept as failed
    saga.run({"kill": True}, tx_id="tp-killed")
'''


def crashed_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str,
                  value: str) -> None:
    """Run the app in a process that SIGKILLs itself mid-teleport; its store stays behind."""
    (tmp_path / "crashapp.py").write_text(APP)
    monkeypatch.setenv(var, value)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", CRASH_KILL="1", CRASH_BROKEN_UNDO="1")
    p = subprocess.run([sys.executable, "crashapp.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env=env)
    assert p.returncode == -signal.SIGKILL, p.stderr


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def sagas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Result]]:
    """``python -m gameguard sagas ARGS`` run in this process (the CLI's main), from
    ``tmp_path``, where the crashed app's module lives."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            code = main(["sagas", *args])
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return Result(code, out.out, out.err)
    yield run
    app = sys.modules.pop("crashapp", None)
    if app is not None:
        app.store.close()


def list_show_retry(sagas: Callable[..., Result], where: List[str]) -> None:
    r = sagas(*where, "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("2 unfinished or failed transaction(s) in ")
    assert lines[1].split() == ["TX", "SAGA", "STATUS", "STEP", "ATTEMPT", "ERRORS", "UPDATED",
                                "OWNER"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:4]}
    assert rows["tp-failed"][1:6] == ["teleport", "failed", "leave", "1", "2"]
    assert rows["tp-killed"][1:6] == ["teleport", "executing", "leave", "1", "0"]
    assert rows["tp-killed"][-1] == "(gone)"  # the killed process is not driving it
    assert ("tp-failed: last error at leave/compensation attempt 1: RuntimeError: eu-1 "
            "unreachable") in r.stdout

    r = sagas(*where, "show", "tp-killed")
    assert r.returncode == 0, r.stderr
    assert "transaction tp-killed of saga 'teleport': executing" in r.stdout
    assert "step 0 reserve: done" in r.stdout
    assert "step 1 leave: action in flight or next, attempt 1" in r.stdout
    assert "step 2 enter: pending" in r.stdout
    assert 'payload {"kill": true}' in r.stdout and 'results {"reserve": {"slot": 7}}' in r.stdout
    r = sagas(*where, "show", "tp-failed")
    assert "error enter/action attempt 1" in r.stdout and "zone full" in r.stdout
    assert "step 1 leave: compensation in flight or next" in r.stdout

    app = ["--saga-object", "crashapp:saga"]
    r = sagas(*where, "retry", "tp-failed", *app)
    assert r.returncode == 1 and "is failed: retry it with include_failed=True" in r.stderr
    r = sagas(*where, "retry", "tp-killed", *app)
    assert (r.returncode, r.stdout) == (0, "transaction tp-killed: committed\n"), r.stderr
    r = sagas(*where, "retry", "tp-failed", *app, "--include-failed")
    assert (r.returncode, r.stdout) == (0, "transaction tp-failed: compensated\n"), r.stderr
    r = sagas(*where, "retry", "tp-killed", *app)
    assert r.returncode == 1 and "already committed" in r.stderr
    r = sagas(*where, "list")
    assert r.returncode == 0 and r.stdout.startswith("no unfinished or failed transactions")
    r = sagas(*where, "show", "nope")
    assert r.returncode == 1 and "no transaction 'nope'" in r.stderr


def test_sqlite_store_left_by_a_crashed_process(tmp_path: Path, sagas: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "sagas.db")
    crashed_store(tmp_path, monkeypatch, "CRASH_DB", db)
    list_show_retry(sagas, ["--db", db])


def test_postgres_store_left_by_a_crashed_process(tmp_path: Path, pg_server: Any, sagas: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = pg_server.dsn()
    crashed_store(tmp_path, monkeypatch, "CRASH_DSN", dsn)
    time.sleep(0.6)  # the killed process's lease (0.5 s) lapses: nobody drives its rows
    list_show_retry(sagas, ["--dsn", dsn, "--schema", "cli"])


def test_missing_and_foreign_files_are_clear_errors(tmp_path: Path, sagas: Any) -> None:
    missing = tmp_path / "nope.db"
    r = subprocess.run([sys.executable, "-m", "gameguard", "sagas", "--db", str(missing),
                        "list"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no saga store at" in r.stderr and "Traceback" not in r.stderr
    assert not missing.exists()  # never a new, empty store
    text = tmp_path / "notes.txt"
    text.write_text("not a database, just notes\n" * 100)
    r = sagas("--db", str(text), "list")
    assert r.returncode == 2 and "is not a SQLite database" in r.stderr
    other = tmp_path / "other.db"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE players (id INTEGER)")
    c.commit()
    c.close()
    r = sagas("--db", str(other), "show", "x")
    assert r.returncode == 2 and "not a gameguard saga store" in r.stderr
    c = sqlite3.connect(other)
    tables = [t for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    c.close()
    assert tables == ["players"]  # the foreign file was not touched
    r = sagas("--db", str(tmp_path), "list")
    assert r.returncode == 2 and "is not a file" in r.stderr


def test_unusable_dsn_and_bad_usage(pg_server: Any, sagas: Any) -> None:
    r = sagas("--dsn", pg_server.dsn(password="wrong"), "list")
    assert r.returncode == 2 and "password authentication failed" in r.stderr
    assert "Traceback" not in r.stderr
    r = sagas("list")  # neither --db nor --dsn
    assert r.returncode == 2 and "one of the arguments --db --dsn is required" in r.stderr
    r = sagas("--db", "x.db", "retry", "tx")  # no --saga-object
    assert r.returncode == 2 and "--saga-object" in r.stderr


@pytest.mark.parametrize("spec,match", [("nocolon", "MODULE:ATTR"),
                                        ("no_such_module_x:saga", "cannot import"),
                                        ("json:nothing", "has no attribute"),
                                        ("json:dumps", "not a Saga")])
def test_bad_saga_object(tmp_path: Path, sagas: Any, spec: str, match: str) -> None:
    db = str(tmp_path / "s.db")
    from gameguard.saga import SQLiteStore
    SQLiteStore(db).close()
    r = sagas("--db", db, "retry", "tx", "--saga-object", spec)
    assert r.returncode == 1 and match in r.stderr, r.stderr


# -- Saga.retry / retry_async, which `retry` drives ------------------------------------------
def interrupted(saga: Any, tx_id: str) -> None:
    with pytest.raises(KeyboardInterrupt):
        saga.run({}, tx_id=tx_id)


def test_retry_refuses_what_it_cannot_drive(tmp_path: Path) -> None:
    from gameguard.errors import SagaError
    from gameguard.saga import Saga, SQLiteStore
    store = SQLiteStore(tmp_path / "r.db")
    calls: List[int] = []

    def flaky(ctx: Any) -> None:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise KeyboardInterrupt
    saga = Saga("s", store=store)
    saga.step(flaky, name="a")
    interrupted(saga, "t1")
    other = Saga("other", store=store)
    other.step(lambda ctx: None, name="a")
    with pytest.raises(SagaError, match="belongs to saga 's', not 'other'"):
        other.retry("t1")
    with pytest.raises(SagaError, match="no transaction 'nope'"):
        saga.retry("nope")
    renamed = Saga("s", store=store)
    renamed.step(lambda ctx: None, name="b")
    with pytest.raises(SagaError, match=r"steps \['a'\] are no longer registered"):
        renamed.retry("t1")
    res = saga.retry("t1")
    assert res.status == "committed" and calls == [1, 2]
    with pytest.raises(SagaError, match="already committed"):
        saga.retry("t1")
    store.close()


def test_retry_leaves_a_transaction_a_live_process_drives(tmp_path: Path,
                                                          pg_server: Any) -> None:
    from gameguard.errors import SagaError
    from gameguard.saga import PostgresStore, Saga
    a = PostgresStore(pg_server.dsn(), schema="retry_live")
    b = PostgresStore(pg_server.dsn(), schema="retry_live")
    try:
        def build(store: Any) -> Any:
            saga = Saga("s", store=store)

            def step(ctx: Any) -> int:
                if store is a:
                    raise KeyboardInterrupt
                return 1
            saga.step(step, name="a")
            return saga
        interrupted(build(a), "live")
        with pytest.raises(SagaError, match="being driven by a live process"):
            build(b).retry("live")
        a.close()  # its owner is gone now
        assert build(b).retry("live").status == "committed"
    finally:
        a.close()
        b.close()


def test_retry_async(tmp_path: Path) -> None:
    import asyncio

    from gameguard.saga import Saga, SQLiteStore
    store = SQLiteStore(tmp_path / "a.db")
    saga = Saga("s", store=store)

    async def step(ctx: Any) -> int:
        if ctx.attempt == 1:
            raise KeyboardInterrupt
        return ctx.attempt
    saga.step(step, name="a")
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(saga.run_async({}, tx_id="t"))
    with pytest.raises(TypeError, match="retry_async"):
        saga.retry("t")
    res = asyncio.run(saga.retry_async("t"))
    assert res.status == "committed" and res.results == {"a": 2}
    store.close()
