"""Saga: running, compensating, retries, timeouts, guards, recovery, bad input and faults."""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from gameguard import CircuitBreaker, CompensationFailed, ConfigurationError, ManualClock
from gameguard.errors import SagaError
from gameguard.saga import (DuplicateTransaction, Saga, SagaResult, SagaStore, SQLiteStore,
                            StaleTransaction, StepContext, StoreError, Transition)
from gameguard.saga.store import TxRecord


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "sagas.db")
    yield s
    s.close()


class Log:
    """Records calls; ``fail`` maps (step, phase) to how many attempts raise."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []
        self.ctxs: List[StepContext] = []
        self.fail: Dict[tuple, int] = {}
        self.interrupt: set = set()

    def make(self, saga: Saga, names=("a", "b", "c"), compensate=True, **kw: Any) -> None:
        for n in names:
            saga.step(self._fn(n, "action"), name=n,
                      compensate=self._fn(n, "compensation") if compensate else None, **kw)

    def _fn(self, name: str, phase: str):
        def fn(ctx: StepContext) -> Any:
            self.calls.append((name, phase, ctx.attempt))
            self.ctxs.append(ctx)
            if (name, phase) in self.interrupt:
                self.interrupt.discard((name, phase))
                raise KeyboardInterrupt
            left = self.fail.get((name, phase), 0)
            if left:
                self.fail[(name, phase)] = left - 1
                raise RuntimeError(f"{name} {phase} failed")
            return f"{name}-out" if phase == "action" else None
        return fn


# -- the happy path and the context ---------------------------------------------------------
def test_commit_runs_steps_in_order_with_context(store: SQLiteStore) -> None:
    saga = Saga("teleport", store=store)
    log = Log()
    log.make(saga)
    res = saga.run({"player": 7}, tx_id="tx1", trace_id="trace-1")
    assert isinstance(res, SagaResult)
    assert res.status == "committed" and res.committed and res.finished
    assert res.results == {"a": "a-out", "b": "b-out", "c": "c-out"}
    assert log.calls == [("a", "action", 1), ("b", "action", 1), ("c", "action", 1)]
    ctx = log.ctxs[2]
    assert (ctx.tx_id, ctx.saga, ctx.step, ctx.phase, ctx.trace_id) == \
        ("tx1", "teleport", "c", "action", "trace-1")
    assert ctx.payload == {"player": 7}
    assert dict(ctx.results) == {"a": "a-out", "b": "b-out"}
    with pytest.raises(TypeError):
        ctx.results["x"] = 1  # type: ignore[index]
    assert [c.idempotency_key for c in log.ctxs] == \
        ["teleport/tx1/a/action", "teleport/tx1/b/action", "teleport/tx1/c/action"]
    rec = store.get("tx1")
    assert rec is not None and rec.status == "committed" and rec.results == res.results
    assert rec.payload == {"player": 7} and rec.steps == ["a", "b", "c"]
    assert res.raise_for_status() is res


def test_default_ids_are_unique_and_payload_is_json_roundtripped(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    seen = []

    @saga.step
    def a(ctx: StepContext) -> Any:
        seen.append(ctx.payload)
        return (1, 2)

    @saga.step
    def b(ctx: StepContext) -> Any:
        seen.append(ctx.results["a"])

    r1, r2 = saga.run({"k": (1, 2)}), saga.run({"k": (1, 2)})
    assert r1.tx_id != r2.tx_id and r1.trace_id != r2.trace_id
    assert len(r1.tx_id) == 32 and len(r1.trace_id) == 32
    # steps see what recovery would see: the JSON-decoded values
    assert seen[:2] == [{"k": [1, 2]}, [1, 2]]


def test_store_none_uses_env_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAMEGUARD_SAGA_DB", str(tmp_path / "env.db"))
    saga = Saga("s")
    saga.step(lambda ctx: 1, name="a")
    assert saga.run(None).committed
    assert isinstance(saga.store, SQLiteStore) and saga.store.path == str(tmp_path / "env.db")
    saga.store.close()


# -- compensation ---------------------------------------------------------------------------
def test_failing_step_is_compensated_too_then_completed_steps_in_reverse(store) -> None:
    saga = Saga("s", store=store)
    log = Log()
    log.make(saga, names=("a", "b", "c", "d"))
    log.fail[("c", "action")] = 1
    res = saga.run({}, tx_id="t")
    assert res.status == "compensated" and res.finished and not res.committed
    assert isinstance(res.error, RuntimeError)
    assert log.calls == [("a", "action", 1), ("b", "action", 1), ("c", "action", 1),
                         ("c", "compensation", 1), ("b", "compensation", 1),
                         ("a", "compensation", 1)]
    comp = [c for c in log.ctxs if c.phase == "compensation"]
    assert [c.idempotency_key for c in comp] == \
        ["s/t/c/compensation", "s/t/b/compensation", "s/t/a/compensation"]
    assert dict(comp[1].results) == {"a": "a-out", "b": "b-out"}  # its own output included
    rec = store.get("t")
    assert rec.status == "compensated"
    assert [(e["step"], e["phase"], e["attempt"]) for e in rec.errors] == [("c", "action", 1)]
    assert "RuntimeError: c action failed" in rec.errors[0]["error"]
    with pytest.raises(RuntimeError):
        res.raise_for_status()


def test_steps_without_compensation_are_skipped(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    log = Log()
    saga.step(log._fn("a", "action"), name="a", compensate=log._fn("a", "compensation"))
    saga.step(log._fn("b", "action"), name="b")  # nothing to undo (a read, say)
    saga.step(log._fn("c", "action"), name="c")
    log.fail[("c", "action")] = 1
    assert saga.run({}).status == "compensated"
    assert log.calls[-1] == ("a", "compensation", 1)
    assert ("b", "compensation", 1) not in log.calls

    only = Saga("nothing", store=store)
    only.step(lambda ctx: 1 / 0, name="x")
    assert only.run({}).status == "compensated"


def test_compensation_failure_leaves_failed_for_an_operator(store: SQLiteStore) -> None:
    saga = Saga("s", store=store, seed=3, clock=ManualClock())
    log = Log()
    log.make(saga, retries=1)
    log.fail[("b", "action")] = 2
    log.fail[("a", "compensation")] = 2  # both attempts fail
    res = saga.run({}, tx_id="t")
    assert res.status == "failed" and not res.finished
    err = res.error
    assert isinstance(err, CompensationFailed) and err.step == "a"
    assert isinstance(err.__cause__, RuntimeError)
    assert [type(e) for e in err.errors] == [RuntimeError, RuntimeError]
    rec = store.get("t")
    assert rec.status == "failed" and rec.step == 0 and rec.attempt == 2
    assert [(e["step"], e["phase"], e["attempt"]) for e in rec.errors] == \
        [("b", "action", 1), ("b", "action", 2), ("a", "compensation", 1),
         ("a", "compensation", 2)]
    assert [r.tx_id for r in saga.failed()] == ["t"]
    # never dropped: recover() skips it, purge() keeps it
    assert saga.recover() == []
    assert store.purge(retention=0) == 0 and store.get("t").status == "failed"
    # the operator fixes the cause and retries; the attempt count goes on
    res2 = saga.recover(include_failed=True)
    assert [r.status for r in res2] == ["compensated"]
    assert log.calls[-1] == ("a", "compensation", 3)
    assert store.get("t").status == "compensated"
    with pytest.raises(CompensationFailed):
        res.raise_for_status()


# -- retries, backoff, timeouts -------------------------------------------------------------
def test_retry_backoff_full_jitter_is_exact_on_manual_clock(store: SQLiteStore) -> None:
    clock = ManualClock()
    saga = Saga("s", store=store, clock=clock, seed=42)
    log = Log()
    log.make(saga, names=("a",), retries=5, backoff=0.1, max_backoff=0.5)
    log.fail[("a", "action")] = 4
    res = saga.run({}, tx_id="t")
    assert res.committed
    assert [c[2] for c in log.calls] == [1, 2, 3, 4, 5]
    rng = random.Random(42)
    expected = sum(rng.random() * min(0.5, 0.1 * 2 ** n) for n in range(4))
    assert clock() == pytest.approx(expected, abs=1e-12)
    assert store.get("t").attempt == 0  # committed


def test_retries_exhausted_then_compensated_and_attempts_recorded(store) -> None:
    clock = ManualClock()
    saga = Saga("s", store=store, clock=clock, rng=lambda: 1.0, backoff=1.0, max_backoff=3.0)
    log = Log()
    log.make(saga, names=("a",), retries=3)
    log.fail[("a", "action")] = 10
    assert saga.run({}).status == "compensated"
    assert clock() == 1.0 + 2.0 + 3.0  # capped at max_backoff
    assert [c for c in log.calls if c[1] == "action"] == [("a", "action", n) for n in (1, 2, 3, 4)]


def test_sync_timeout_counts_an_overrunning_attempt_as_failed(store: SQLiteStore) -> None:
    clock = ManualClock()
    saga = Saga("s", store=store, clock=clock, rng=lambda: 0.0)
    attempts = []

    @saga.step(retries=1, timeout=1.0, compensate=lambda ctx: attempts.append("undo"))
    def slow(ctx: StepContext) -> str:
        attempts.append(ctx.attempt)
        assert ctx.timeout == 1.0
        clock.advance(2.0 if ctx.attempt == 1 else 0.5)
        return "done"

    res = saga.run({})
    assert res.committed and attempts == [1, 2]
    assert "TimeoutError" in res.errors[0]["error"]

    attempts.clear()
    saga2 = Saga("s2", store=store, clock=clock)

    @saga2.step(timeout=1.0, compensate=lambda ctx: attempts.append("undo"))
    def slower(ctx: StepContext) -> str:
        clock.advance(1.5)
        return "late"

    res = saga2.run({})
    assert res.status == "compensated" and attempts == ["undo"]
    assert isinstance(res.error, TimeoutError) and res.results == {}


@pytest.mark.asyncio
async def test_async_timeout_cancels_the_step(store: SQLiteStore) -> None:
    saga = Saga("s", store=store, rng=lambda: 0.0)
    seen: List[str] = []

    async def undo(ctx: StepContext) -> None:
        seen.append("undo")

    @saga.step(timeout=0.01, compensate=undo)
    async def hang(ctx: StepContext) -> None:
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    res = await saga.run_async({})
    assert res.status == "compensated" and seen == ["cancelled", "undo"]
    assert isinstance(res.error, TimeoutError)


def test_guard_rejection_is_a_failed_attempt_retried_after_retry_after(store) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("dep", consecutive_failures=1, open_duration=2.0, clock=clock)
    saga = Saga("s", store=store, clock=clock, rng=lambda: 0.0, max_backoff=10.0)
    calls = []

    @saga.step(retries=2, guard=breaker)
    def remote(ctx: StepContext) -> int:
        calls.append((ctx.attempt, clock()))
        if ctx.attempt == 1:
            raise ConnectionError("down")
        return 1

    res = saga.run({})
    assert res.committed
    # attempt 1 fails and opens the breaker; attempt 2 is rejected without running and
    # waits retry_after (2 s); attempt 3 goes through the half-open breaker
    assert calls == [(1, 0.0), (3, 2.0)]
    assert ["ConnectionError" in e["error"] for e in res.errors] == [True, False]
    assert "CircuitOpenError" in res.errors[1]["error"]


@pytest.mark.asyncio
async def test_async_and_sync_steps_mix_and_guard_is_async_with(store) -> None:
    from gameguard import Bulkhead
    saga = Saga("s", store=store)
    bulk = Bulkhead(1)
    order = []

    @saga.step(guard=bulk)
    async def a(ctx: StepContext) -> int:
        assert bulk.in_flight == 1
        order.append("a")
        return 1

    @saga.step(guard=bulk)
    def b(ctx: StepContext) -> int:
        order.append("b")
        return ctx.results["a"] + 1

    res = await saga.run_async({})
    assert res.committed and res.results == {"a": 1, "b": 2} and order == ["a", "b"]
    assert bulk.in_flight == 0
    with pytest.raises(TypeError, match="run_async"):
        saga.run({})
    with pytest.raises(TypeError, match="recover_async"):
        saga.recover()


@pytest.mark.asyncio
async def test_sync_only_guard_works_under_run_async(store: SQLiteStore) -> None:
    import contextlib
    entered = []

    @contextlib.contextmanager
    def cm() -> Iterator[None]:
        entered.append(1)
        yield

    class SyncGuard:
        def __enter__(self) -> None:
            self._cm = cm()
            self._cm.__enter__()

        def __exit__(self, *exc: Any) -> None:
            self._cm.__exit__(*exc)

    saga = Saga("s", store=store)

    @saga.step(guard=SyncGuard())
    async def a(ctx: StepContext) -> int:
        return 1

    saga.step(lambda ctx: 2, name="b", guard=SyncGuard())
    assert (await saga.run_async({})).committed and entered == [1, 1]


# -- bad input --------------------------------------------------------------------------
def test_payload_not_json_fails_before_anything_runs(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    log = Log()
    log.make(saga)
    with pytest.raises(TypeError, match="not JSON-serialisable.*never pickled"):
        saga.run({"when": object()}, tx_id="t")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        saga.run({"x": float("nan")}, tx_id="t")
    assert log.calls == [] and store.get("t") is None
    with pytest.raises(TypeError):
        saga.run({}, tx_id=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        saga.run({}, tx_id="")
    with pytest.raises(ValueError):
        saga.run({}, tx_id="a/b")


def test_result_not_json_compensates_that_step(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    undone = []
    saga.step(lambda ctx: 1, name="a", compensate=lambda ctx: undone.append("a"))
    saga.step(lambda ctx: {1, 2}, name="b", compensate=lambda ctx: undone.append("b"),
              retries=3)
    res = saga.run({})
    assert res.status == "compensated" and undone == ["b", "a"]
    assert isinstance(res.error, TypeError) and "JSON" in str(res.error)
    assert len(res.errors) == 1  # not retried: the same value would fail again


def test_duplicate_tx_id_is_refused_and_nothing_overwritten(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    log = Log()
    log.make(saga)
    saga.run({"v": 1}, tx_id="t")
    before = store.get("t")
    n = len(log.calls)
    with pytest.raises(DuplicateTransaction, match="already exists.*nothing was overwritten"):
        saga.run({"v": 2}, tx_id="t")
    assert store.get("t") == before and len(log.calls) == n

    inner: List[BaseException] = []
    nested = Saga("n", store=store)

    @nested.step
    def again(ctx: StepContext) -> None:  # the same tx_id while it runs, in this process
        try:
            nested.run({}, tx_id=ctx.tx_id)
        except DuplicateTransaction as exc:
            inner.append(exc)

    assert nested.run({}, tx_id="u").committed
    assert len(inner) == 1 and "already running" in str(inner[0])


@pytest.mark.asyncio
async def test_duplicate_tx_id_async(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)

    @saga.step
    async def a(ctx: StepContext) -> int:
        return 1

    await saga.run_async({}, tx_id="t")
    with pytest.raises(DuplicateTransaction):
        await saga.run_async({}, tx_id="t")


def test_corrupt_or_unwritable_database_fails_at_construction(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database|cannot be initialised"):
        SQLiteStore(junk)
    with pytest.raises(StoreError):
        SQLiteStore(tmp_path / "no-such-dir" / "x.db")
    other = tmp_path / "other.db"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE saga_tx (id INTEGER)")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="another program"):
        SQLiteStore(other)


def test_write_failure_is_a_store_error_and_no_action_runs(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    saga = Saga("s", store=store)
    log = Log()
    log.make(saga)
    # the database turns read-only under us (a full disk fails the same way)
    store._wconn.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="write failed, nothing of this batch"):
        saga.run({}, tx_id="t")
    assert log.calls == []
    store._wconn.execute("PRAGMA query_only = OFF")
    assert store.get("t") is None
    assert saga.run({}, tx_id="t").committed
    store.close()
    with pytest.raises(StoreError, match="closed"):
        saga.run({})


def test_interrupted_commit_releases_leadership(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    saga.step(lambda ctx: 1, name="a")
    real = store._writer.execute

    def interrupted(batch: Any) -> None:
        store._writer.execute = real
        raise KeyboardInterrupt

    store._writer.execute = interrupted
    with pytest.raises(KeyboardInterrupt):
        saga.run({}, tx_id="t")
    assert not store._writer._leading and store._writer._queue == []
    assert store.get("t") is None
    assert saga.run({}, tx_id="t").committed  # the next writer is not stuck


def test_configuration_errors(store: SQLiteStore) -> None:
    with pytest.raises(ConfigurationError):
        Saga("")
    with pytest.raises(ConfigurationError):
        Saga("a/b")
    with pytest.raises(ConfigurationError, match="store"):
        Saga("s", store=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not both"):
        Saga("s", store=store, rng=random.random, seed=1)
    with pytest.raises(ConfigurationError, match="seed"):
        Saga("s", store=store, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="backoff"):
        Saga("s", store=store, backoff=-1)
    with pytest.raises(ConfigurationError, match="clock"):
        Saga("s", store=store, clock=5)  # type: ignore[arg-type]
    saga = Saga("s", store=store)
    saga.step(lambda ctx: 1, name="a")
    with pytest.raises(ConfigurationError, match="already has a step named 'a'"):
        saga.step(lambda ctx: 2, name="a")
    with pytest.raises(ConfigurationError, match="retries"):
        saga.step(retries=-1)
    with pytest.raises(ConfigurationError, match="timeout"):
        saga.step(timeout=0)
    with pytest.raises(ConfigurationError, match="compensate"):
        saga.step(compensate=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="guard"):
        saga.step(guard=object())
    with pytest.raises(ConfigurationError, match="without"):
        saga.step(lambda ctx: 1, name="x/y")
    with pytest.raises(SagaError, match="no steps"):
        Saga("empty", store=store).run({})
    with pytest.raises(ConfigurationError, match="synchronous"):
        SQLiteStore(":memory:", synchronous="off")
    with pytest.raises(ConfigurationError, match="max_batch"):
        SQLiteStore(":memory:", max_batch=0)
    with pytest.raises(ConfigurationError, match="path"):
        SQLiteStore(5)  # type: ignore[arg-type]
    assert saga.steps == ("a",)


# -- BaseException, cancellation and recovery ------------------------------------------------
def test_keyboard_interrupt_leaves_a_consistent_row_that_recover_finishes(store) -> None:
    saga = Saga("s", store=store)
    log = Log()
    log.make(saga)
    log.interrupt.add(("b", "action"))
    with pytest.raises(KeyboardInterrupt):
        saga.run({}, tx_id="t")
    rec = store.get("t")
    assert (rec.status, rec.step, rec.attempt) == ("executing", 1, 1)
    assert rec.results == {"a": "a-out"}
    (res,) = saga.recover()
    assert res.committed and res.results == {"a": "a-out", "b": "b-out", "c": "c-out"}
    # the step that may have run runs again with the same key and the next attempt number
    b_calls = [c for c in log.ctxs if c.step == "b"]
    assert [c.attempt for c in b_calls] == [1, 2]
    assert b_calls[0].idempotency_key == b_calls[1].idempotency_key
    assert saga.recover() == []


def test_interrupt_during_compensation_goes_on_backward(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    log = Log()
    log.make(saga)
    log.fail[("c", "action")] = 1
    log.interrupt.add(("b", "compensation"))
    with pytest.raises(KeyboardInterrupt):
        saga.run({}, tx_id="t")
    assert (store.get("t").status, store.get("t").step) == ("compensating", 1)
    (res,) = saga.recover()
    assert res.status == "compensated"
    assert log.calls[-2:] == [("b", "compensation", 2), ("a", "compensation", 1)]
    assert ("a", "action", 2) not in log.calls


@pytest.mark.asyncio
async def test_cancellation_mid_step_then_recover_async(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    started = asyncio.Event()
    keys: List[tuple] = []

    @saga.step(compensate=lambda ctx: None)
    async def a(ctx: StepContext) -> int:
        keys.append(("a", ctx.attempt, ctx.idempotency_key))
        return 1

    @saga.step
    async def b(ctx: StepContext) -> int:
        keys.append(("b", ctx.attempt, ctx.idempotency_key))
        if ctx.attempt == 1:
            started.set()
            await asyncio.Event().wait()
        return 2

    task = asyncio.ensure_future(saga.run_async({}, tx_id="t"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rec = store.get("t")
    assert (rec.status, rec.step, rec.attempt) == ("executing", 1, 1)
    (res,) = await saga.recover_async()
    assert res.committed and res.results == {"a": 1, "b": 2}
    assert keys == [("a", 1, "s/t/a/action"), ("b", 1, "s/t/b/action"),
                    ("b", 2, "s/t/b/action")]


def test_recover_leaves_transactions_running_in_this_process(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    seen: List[List[SagaResult]] = []
    log = Log()
    log.make(saga, names=("x",))
    log.interrupt.add(("x", "action"))
    with pytest.raises(KeyboardInterrupt):
        saga.run({}, tx_id="abandoned")

    @saga.step
    def recover_inside(ctx: StepContext) -> None:  # recover() while this saga runs
        seen.append(saga.recover())

    saga.run({}, tx_id="running")
    # the abandoned one was finished (it has no recover_inside step recorded); the running
    # one was not touched
    assert [(r.tx_id, r.status) for r in seen[0]] == [("abandoned", "committed")]
    assert store.get("running").status == "committed"


def test_recover_leaves_transactions_of_a_live_process(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    saga.step(lambda ctx: 1, name="a")
    other = "otherhost-4242-deadbeef"
    lock_dir = store.path + ".owners"
    os.makedirs(lock_dir, exist_ok=True)
    holder = open(os.path.join(lock_dir, other), "a+b")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # "the other process lives"
    now = 0.0
    store.insert(TxRecord("theirs", "s", "executing", 0, 1, '["a"]', "{}", "{}", "[]", "tr",
                          other, 1, now, now))
    assert store.owner_alive(other) and store.owner_alive(store.owner)
    assert saga.recover() == []
    holder.close()  # the other process dies: the kernel drops its lock
    assert not store.owner_alive(other)
    (res,) = saga.recover()
    assert res.tx_id == "theirs" and res.committed
    assert not os.path.exists(os.path.join(lock_dir, other))  # swept by purge()
    assert not store.owner_alive("never-existed-1-00")


def test_unregistered_steps_are_reported_not_guessed(store: SQLiteStore) -> None:
    old = Saga("s", store=store)
    log = Log()
    log.make(old)
    log.interrupt.add(("b", "action"))
    with pytest.raises(KeyboardInterrupt):
        old.run({}, tx_id="t")
    new = Saga("s", store=store)  # the code changed: step "b" is gone
    new.step(lambda ctx: 1, name="a")
    new.step(lambda ctx: 1, name="c")
    (res,) = new.recover()
    assert res.status == "executing" and not res.finished
    assert isinstance(res.error, SagaError) and "['b']" in str(res.error)
    assert store.get("t").status == "executing"
    (res,) = old.recover()  # the old code finishes it
    assert res.committed


def test_stale_writer_is_fenced(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    log = Log()
    log.make(saga, names=("a",))
    log.interrupt.add(("a", "action"))
    with pytest.raises(KeyboardInterrupt):
        saga.run({}, tx_id="t")
    rec = store.get("t")
    assert store.claim("t", rec.version, store.owner, 0.0)
    assert not store.claim("t", rec.version, store.owner, 0.0)  # version moved on
    with pytest.raises(StaleTransaction, match="changed under this writer"):
        store.update(Transition("t", rec.version, "committed", 1, 0, None, None, 0.0))
    assert store.get("t").attempt == 2


def test_purge_deletes_only_old_finished_rows(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    log = Log()
    log.make(saga, names=("a",))
    saga.run({}, tx_id="ok")
    log.fail[("a", "action")] = 1
    saga.run({}, tx_id="undone")
    log.interrupt.add(("a", "action"))
    with pytest.raises(KeyboardInterrupt):
        saga.run({}, tx_id="open")
    assert store.purge() == 0  # younger than the retention
    assert store.purge(retention=0) == 2
    assert store.get("ok") is None and store.get("undone") is None
    assert store.get("open").status == "preparing"
    assert store.counts() == {"preparing": 1}


# -- threads, async concurrency, group commit ----------------------------------------------
@pytest.mark.parametrize("max_batch", [1, 256])
def test_threads_share_one_store(tmp_path: Path, max_batch: int) -> None:
    store = SQLiteStore(tmp_path / "s.db", synchronous="normal", max_batch=max_batch)
    saga = Saga("s", store=store)
    log = Log()
    log.make(saga)
    errors: List[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(40):
                assert saga.run({"k": k, "i": i}).committed
                store.get("nothing")  # reads on this thread's own connection
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts() == {"committed": 320}
    assert len(log.calls) == 960
    store.close()


def _spin_until(cond: Any) -> None:
    import time
    deadline = time.monotonic() + 30.0
    while not cond():
        assert time.monotonic() < deadline, "threads never queued up"


@pytest.mark.parametrize("max_batch,commits", [(256, 2), (2, 4)])
def test_group_commit_shares_one_commit_among_waiting_writers(tmp_path: Path, max_batch: int,
                                                              commits: int) -> None:
    store = SQLiteStore(tmp_path / "s.db", max_batch=max_batch)
    c0, w0 = store.commits, store.writes
    store._db_mu.acquire()  # a commit "in progress": the first writer leads and waits on it
    threads = [threading.Thread(target=store.insert, args=(TxRecord(
        f"t{i}", "s", "preparing", 0, 1, '["a"]', "{}", "{}", "[]", "tr", store.owner, 1,
        0.0, 0.0),)) for i in range(6)]
    threads[0].start()
    _spin_until(lambda: store._writer._leading and not store._writer._queue)
    for t in threads[1:]:
        t.start()
    _spin_until(lambda: len(store._writer._queue) == 5)
    store._db_mu.release()
    _spin_until(lambda: store.writes - w0 >= 6)
    for t in threads:
        t.join()
    # t0's insert alone, then the 5 queued inserts together (or in batches of max_batch)
    assert (store.commits - c0, store.writes - w0) == (commits, 6)
    assert store.counts() == {"preparing": 6}
    store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("max_batch", [3, 256])
async def test_many_concurrent_async_sagas_and_threads_mixed(tmp_path: Path,
                                                             max_batch: int) -> None:
    store = SQLiteStore(tmp_path / "s.db", max_batch=max_batch)
    asaga = Saga("a", store=store)
    ssaga = Saga("b", store=store)
    for n in ("x", "y", "z"):
        async def step(ctx: StepContext, n: str = n) -> str:
            await asyncio.sleep(0)
            return n
        asaga.step(step, name=n)
        ssaga.step(lambda ctx, n=n: n, name=n)
    thread = threading.Thread(target=lambda: [ssaga.run({}) for _ in range(30)])
    thread.start()
    results = await asyncio.gather(*(asaga.run_async({"i": i}) for i in range(200)))
    await asyncio.to_thread(thread.join)
    assert all(r.committed for r in results)
    assert store.counts("a") == {"committed": 200} and store.counts("b") == {"committed": 30}
    store.close()


def test_memory_store_is_not_durable_and_works() -> None:
    store = SQLiteStore(":memory:")
    assert store.durability == "none" and "none" in repr(store)
    assert isinstance(store, SagaStore)
    saga = Saga("s", store=store)
    saga.step(lambda ctx: 1, name="a")
    assert saga.run({}).committed
    assert store.counts() == {"committed": 1}
    store.close()
    store.close()  # idempotent


def test_durability_levels(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "f.db") as s:
        assert s.durability == "power-loss"
        assert s._wconn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert s._wconn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with SQLiteStore(tmp_path / "n.db", synchronous="normal") as s:
        assert s.durability == "process-crash"
        assert s._wconn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_stored_json_is_plain_json(store: SQLiteStore) -> None:
    saga = Saga("s", store=store)
    saga.step(lambda ctx: {"gold": 5, "items": ["sword"]}, name="a")
    saga.run({"player": "ann"}, tx_id="t")
    c = sqlite3.connect(store.path)
    payload, results, errors = c.execute(
        "SELECT payload, results, errors FROM saga_tx WHERE tx_id = 't'").fetchone()
    c.close()
    assert json.loads(payload) == {"player": "ann"}
    assert json.loads(results) == {"a": {"gold": 5, "items": ["sword"]}}
    assert json.loads(errors) == []


def test_demo_runs_and_recovers() -> None:
    from gameguard.demos import saga as demo
    lines: List[str] = []
    out = demo.run(seed=7, out=lines.append)
    assert out["killed"] is True
    assert out["recovered"] >= 1
    assert out["unfinished_after"] == 0
    assert out["ledger_ok"] is True
    assert any("SIGKILL" in line for line in lines)
