"""Saga store hardening: bounded connections under thread churn, writers interrupted while
queued, owner lock files racing sweeps and probes, forks, the default store, lazy imports."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, List

import pytest

from gameguard.saga import Saga, SQLiteStore, StoreError, TxRecord, core, owners


def _rec(tx_id: str, owner: str = "me") -> TxRecord:
    return TxRecord(tx_id, "s", "preparing", 0, 1, '["a"]', "{}", "{}", "[]", "tr", owner, 1,
                    0.0, 0.0)


def _spin_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30.0  # a bound so a regression fails instead of hanging
    while not cond():
        assert time.monotonic() < deadline, what


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- reader connections ---------------------------------------------------------------------
def test_reader_connections_stay_bounded_under_thread_churn(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", max_readers=3)
    store.insert(_rec("x"))
    assert store.get("x") is not None
    before = _open_fds()
    errors: List[BaseException] = []

    def read() -> None:
        try:
            assert store.get("x") is not None and store.scan("s") != []
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    for _ in range(10):  # 200 short-lived threads, 20 at a time
        threads = [threading.Thread(target=read) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    # each connection holds the database, its WAL and its shared-memory file open
    assert _open_fds() - before <= 3 * 3
    assert store._readers.open <= 3
    store.close()
    assert store._readers.open == 0


def test_reads_wait_for_a_free_connection_and_fail_if_none_comes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", max_readers=1, busy_timeout=0.05)
    store.insert(_rec("x"))
    conn = store._readers._take()  # the only connection, busy
    with pytest.raises(StoreError, match="no read connection came free"):
        store.get("x")
    got: List[Any] = []
    t = threading.Thread(target=lambda: got.append(store.get("x")))
    store.busy_timeout = 30.0
    store._readers._wait = 30.0
    t.start()
    _spin_until(lambda: t.is_alive(), "reader never started")
    store._readers._give(conn)  # it comes free: the waiting read goes on
    t.join(30.0)
    assert got and got[0].tx_id == "x"
    store.close()


# -- interrupted writers --------------------------------------------------------------------
def _leader_blocked(store: SQLiteStore) -> threading.Thread:
    """A first writer leading a commit that waits on the write connection (held here)."""
    store._db_mu.acquire()
    leader = threading.Thread(target=store.insert, args=(_rec("lead"),), daemon=True)
    leader.start()
    _spin_until(lambda: store._writer._leading and not store._writer._queue,
                "the leader never started")
    return leader


def _later_write_finishes(store: SQLiteStore, what: str) -> None:
    later = threading.Thread(target=store.insert, args=(_rec("later"),), daemon=True)
    later.start()
    later.join(30.0)  # bounded: a stalled queue fails the test instead of hanging it
    assert not later.is_alive(), what
    assert store.get("later") is not None


def test_writer_interrupted_while_queued_never_stalls_later_writers(tmp_path: Path) -> None:
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    store = SQLiteStore(tmp_path / "s.db")
    queue = store._writer._queue
    leader = _leader_blocked(store)

    def ctrl_c() -> None:  # Ctrl-C while the main thread waits in the queue
        _spin_until(lambda: len(queue) == 1, "the second writer never queued")
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]

    sender = threading.Thread(target=ctrl_c)
    sender.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            store.insert(_rec("interrupted"))
    finally:
        sender.join()
        store._db_mu.release()
    leader.join(30.0)
    _later_write_finishes(store, "a writer after the interrupted one never finished")
    assert store.get("lead") is not None
    assert store.get("interrupted") is None  # it took its write back: not recorded
    assert queue == [] and not store._writer._leading
    store.close()


def test_writer_handed_leadership_after_it_left_passes_it_on(tmp_path: Path) -> None:
    # the hand-off lands on a writer that was interrupted an instant before: it must not
    # keep leadership it will never use
    store = SQLiteStore(tmp_path / "s.db")
    gc = store._writer
    leader = _leader_blocked(store)
    waiting = threading.Thread(target=store.insert, args=(_rec("queued"),), daemon=True)
    waiting.start()
    _spin_until(lambda: len(gc._queue) == 1, "the second writer never queued")
    gone = gc._queue[0]
    # simulate its thread's interrupt: leadership was handed to it, then it settles
    with gc._mu:
        gone.lead = True
    gc._settle(gone)
    store._db_mu.release()
    leader.join(30.0)
    _later_write_finishes(store, "a writer after the departed leader never finished")
    gone.waiter.release()  # the departed thread's own wait ends (its write was taken back)
    waiting.join(30.0)
    assert store.get("queued") is None
    store.close()


@pytest.mark.asyncio
async def test_async_writer_cancelled_while_queued_never_stalls_later_writers(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    gc = store._writer

    async def until(cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30.0
        while not cond():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0)

    store._db_mu.acquire()
    first = asyncio.ensure_future(store.insert_async(_rec("a")))
    await until(lambda: gc._leading and not gc._queue, "the writer thread never took it")
    second = asyncio.ensure_future(store.insert_async(_rec("b")))
    await until(lambda: len(gc._queue) == 1, "the second write never queued")
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    store._db_mu.release()
    await asyncio.wait_for(first, 30.0)
    await asyncio.wait_for(store.insert_async(_rec("c")), 30.0)
    await asyncio.wait_for(asyncio.to_thread(store.insert, _rec("d")), 30.0)
    assert {r.tx_id for r in store.scan("s")} >= {"a", "c", "d"}
    store.close()


@pytest.mark.asyncio
async def test_cancelled_run_async_is_recovered(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    saga = Saga("s", store=store)
    calls: List[int] = []

    @saga.step
    async def a(ctx: Any) -> int:
        calls.append(ctx.attempt)
        return 1

    store._db_mu.acquire()  # the insert is queued behind a commit in progress
    task = asyncio.ensure_future(saga.run_async({}, tx_id="t"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    store._db_mu.release()
    deadline = time.monotonic() + 30.0
    while store._writer._leading:
        assert time.monotonic() < deadline, "the queued insert never committed"
        await asyncio.sleep(0)
    assert store.get("t") is not None  # an async write stays queued when cancelled
    (res,) = await saga.recover_async()
    # the step never ran; the claim counts an attempt as made, so it runs as attempt 2
    assert res.committed and calls == [2]
    assert await saga.recover_async() == []
    store.close()


# -- owner lock files -----------------------------------------------------------------------
def test_owner_lock_survives_a_sweep_between_open_and_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    lock_dir = store.path + ".owners"
    real = owners._try_lock
    raced: List[int] = []

    def sweep_first(fd: int) -> bool:  # another process sweeps right after our open
        if not raced:
            raced.append(fd)
            owners.sweep(lock_dir, keep={store.owner})
        return real(fd)

    monkeypatch.setattr(owners, "_try_lock", sweep_first)
    token, fd = owners._take(lock_dir)  # a new owner (another process) takes its lock
    monkeypatch.undo()
    try:
        assert raced
        assert os.path.exists(os.path.join(lock_dir, token))
        assert store.owner_alive(token)  # everyone else sees it alive
        assert owners.sweep(lock_dir, keep={store.owner}) == 0
        assert store.owner_alive(token)
    finally:
        os.close(fd)
    assert not store.owner_alive(token)  # it "dies": its lock goes with it
    assert owners.sweep(lock_dir, keep={store.owner}) == 1
    store.close()


def test_owner_lock_busy_with_a_prober_takes_a_fresh_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock_dir = str(tmp_path / "owners")
    real = owners._try_lock
    raced: List[str] = []

    def probed(fd: int) -> bool:  # a prober holds the new file's lock at this instant
        if raced:
            return real(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        raced.append(os.path.basename(path))
        probe = os.open(path, os.O_RDWR)
        try:
            assert real(probe)
            return real(fd)
        finally:
            os.close(probe)

    monkeypatch.setattr(owners, "_try_lock", probed)
    token, fd = owners._take(lock_dir)
    monkeypatch.undo()
    try:
        assert raced and token != raced[0]
        assert sorted(os.listdir(lock_dir)) == [token]  # the spoiled name is cleaned up
        assert owners.alive(lock_dir, token)
    finally:
        os.close(fd)


_FORKER = r"""
import os, sys
from gameguard.saga import SQLiteStore
store = SQLiteStore(sys.argv[1])
token = store.owner
child = os.fork()
if child == 0:  # its fork handlers have run by now
    os.write(1, b"child\n")  # one write each: the two processes share the pipe
    os.read(0, 1)  # the child lives on until the test closes its stdin
    os._exit(0)
os.write(1, f"{token}\n".encode())
os._exit(0)  # the parent dies; its child does not
"""


def test_forked_child_does_not_keep_a_dead_parent_alive(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    store = SQLiteStore(db)
    p = subprocess.Popen([sys.executable, "-c", _FORKER, db], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        lines = {p.stdout.readline().strip(), p.stdout.readline().strip()}
        assert "child" in lines
        (token,) = lines - {"child"}
        assert p.wait(timeout=60) == 0 and token
        assert os.path.exists(os.path.join(db + ".owners", token))
        # the parent is gone: its transactions must be recoverable although its child runs
        assert not store.owner_alive(token)
    finally:
        if p.stdin is not None:
            p.stdin.close()
        if p.stdout is not None:
            p.stdout.close()
    store.close()


# -- the default store ----------------------------------------------------------------------
def test_default_store_warns_once_naming_its_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GAMEGUARD_SAGA_DB", raising=False)
    monkeypatch.setattr(core, "_defaults", {})
    path = str(tmp_path / "gameguard-sagas.db")
    a = Saga("a")
    a.step(lambda ctx: 1, name="x")
    with pytest.warns(UserWarning, match=re.escape(path)) as seen:
        assert a.run(None).committed
    assert len(seen) == 1
    b = Saga("b")
    b.step(lambda ctx: 2, name="y")
    assert b.run(None).committed  # no second warning (filterwarnings=error would raise)
    assert b.store is a.store and isinstance(a.store, SQLiteStore)
    assert a.store.path == path and os.path.exists(path)
    a.store.close()
    c = Saga("c")
    c.step(lambda ctx: 3, name="z")
    assert c.run(None).committed  # a closed default store is reopened, still no warning
    assert c.store is not a.store
    c.store.close()


def test_default_store_from_the_environment_does_not_warn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "_defaults", {})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GAMEGUARD_SAGA_DB", "env.db")
    saga = Saga("s")
    saga.step(lambda ctx: 1, name="a")
    assert saga.run(None).committed
    assert isinstance(saga.store, SQLiteStore)
    assert saga.store.path == str(tmp_path / "env.db")
    assert not os.path.exists(tmp_path / "gameguard-sagas.db")
    saga.store.close()


# -- imports --------------------------------------------------------------------------------
_BARE_IMPORT = """
import importlib.util, sys, types
# the package without its __init__ (whose re-exports are another module's business)
spec = importlib.util.find_spec("gameguard")
pkg = types.ModuleType("gameguard")
pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["gameguard"] = pkg
import gameguard.saga
heavy = ("sqlite3", "asyncio", "inspect", "dataclasses", "logging", "socket")
print(",".join(m for m in heavy if m in sys.modules))
gameguard.saga.SQLiteStore
print(",".join(m for m in ("sqlite3",) if m in sys.modules))
"""


def test_import_gameguard_saga_pulls_no_heavy_modules() -> None:
    out = subprocess.run([sys.executable, "-c", _BARE_IMPORT], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["", "sqlite3"]  # nothing heavy until SQLiteStore is asked for


# -- event loops ----------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_sync_run_and_recover_on_a_loop_thread_say_they_block_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    saga = Saga("s", store=store)
    saga.step(lambda ctx: 1, name="a")
    with pytest.warns(RuntimeWarning, match=r"Saga\.run\(\) blocks the event loop.*run_async"):
        assert saga.run({}).committed
    with pytest.warns(RuntimeWarning, match=r"Saga\.recover\(\).*recover_async"):
        assert saga.recover() == []
    assert (await saga.run_async({})).committed  # the async form says nothing
    assert await asyncio.to_thread(lambda: saga.run({}).committed)  # nor a worker thread
    store.close()


# -- errors ---------------------------------------------------------------------------------
def test_saga_errors_live_in_the_tree_and_survive_pickling() -> None:
    import pickle

    from gameguard import errors
    from gameguard.saga import DuplicateTransaction, StaleTransaction
    from gameguard.saga import store as store_module
    for cls in (StoreError, DuplicateTransaction, StaleTransaction):
        assert issubclass(cls, errors.SagaError) and getattr(errors, cls.__name__) is cls
        assert getattr(store_module, cls.__name__) is cls and cls.__name__ in errors.__all__
    for exc in (DuplicateTransaction("dup", tx_id="t1"), StaleTransaction("stale", tx_id="t2")):
        back = pickle.loads(pickle.dumps(exc))  # e.g. returned from a multiprocessing worker
        assert type(back) is type(exc) and back.args == exc.args and back.tx_id == exc.tx_id
    back = pickle.loads(pickle.dumps(StoreError("disk full")))
    assert type(back) is StoreError and back.args == ("disk full",)
