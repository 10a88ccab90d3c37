"""``Saga``: cross-server transactions as steps with compensations, recorded durably.

One driver, written once as a generator over *effects* (call a step, write a transition,
sleep), runs both ``run`` (blocking) and ``run_async`` (awaiting): the state machine and its
rules live in one place. Per transaction the store sees ``1 + steps`` writes on the happy
path (insert, then one per completed step, the last one ``committed``), each durable before
the next action starts.
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import (Any, Callable, Dict, Generator, List, Mapping, Optional,
                    Set, Tuple, TypeVar, Union, overload)

from ..clock import Clock, async_sleeper, sleeper
from ..errors import CompensationFailed, ConfigurationError, RejectedError, SagaError
from .store import (COMMITTED, COMPENSATED, COMPENSATING, EXECUTING, FAILED, PREPARING,
                    UNFINISHED, DuplicateTransaction, SagaStore, Transition, TxRecord)

__all__ = ["Saga", "SagaResult", "StepContext", "ACTION", "COMPENSATION"]

log = logging.getLogger("gameguard.saga")

F = TypeVar("F", bound=Callable[..., Any])
ACTION = "action"
COMPENSATION = "compensation"
MAX_ERRORS = 100        # errors kept per transaction (the newest)
MAX_ERROR_TEXT = 1000   # characters kept per error message
MAX_TX_ID = 200


# Compact, strict JSON: no NaN/Infinity (PostgreSQL ``jsonb`` rejects them too). One
# encoder object, built once: ``json.dumps(**options)`` would build one per call.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode
_loads = json.JSONDecoder().decode


class _Ids:
    """Transaction and trace ids: 64 random bits per process (new after a fork) + a counter,
    as 32 hex digits (the W3C trace-id format). Unique without a syscall per id."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_new_id = _Ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id._reset)


# -- this process's running transactions: recover() never takes one of these over ---------
class _Active:
    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._keys: Set[Tuple[str, str]] = set()

    def acquire(self, key: Tuple[str, str]) -> bool:
        with self._mu:
            if key in self._keys:
                return False
            self._keys.add(key)
            return True

    def release(self, key: Tuple[str, str]) -> None:
        with self._mu:
            self._keys.discard(key)

    def __contains__(self, key: Tuple[str, str]) -> bool:
        return key in self._keys

    def _reset(self) -> None:
        self._mu = threading.Lock()
        self._keys = set()


_ACTIVE = _Active()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ACTIVE._reset)  # a child runs none of these


class StepContext:
    """What a step or compensation gets: who it is, what came before, how to dedupe.

    ``idempotency_key`` is ``"<saga>/<tx_id>/<step>/<phase>"``: stable across retries and
    crashes, distinct per transaction, step and phase (``"action"``/``"compensation"``).
    Send it to the remote side so it applies each effect once. ``attempt`` starts at 1 and
    goes on counting across crashes. ``results`` maps earlier steps' names to their
    (JSON-decoded) outputs, read-only; a compensation also finds its own step's output
    there if that step completed. ``timeout`` is the step's timeout (pass it on to your
    client calls) or ``None``.
    """

    __slots__ = ("tx_id", "saga", "step", "phase", "payload", "results", "attempt",
                 "idempotency_key", "trace_id", "timeout")

    def __init__(self, tx_id: str, saga: str, step: str, phase: str, payload: Any,
                 results: Mapping[str, Any], attempt: int, idempotency_key: str,
                 trace_id: str, timeout: Optional[float]) -> None:
        self.tx_id = tx_id
        self.saga = saga
        self.step = step
        self.phase = phase
        self.payload = payload
        self.results = results
        self.attempt = attempt
        self.idempotency_key = idempotency_key
        self.trace_id = trace_id
        self.timeout = timeout

    def __repr__(self) -> str:
        return (f"StepContext(tx_id={self.tx_id!r}, step={self.step!r}, phase={self.phase!r}, "
                f"attempt={self.attempt})")


@dataclass
class SagaResult:
    """How a transaction ended (or, from ``recover()``, why it could not be driven).

    ``status``: ``"committed"``, ``"compensated"`` or ``"failed"`` (a compensation still
    failed after its retries; the row stays for an operator). From ``recover()`` a
    transaction it could not drive keeps its stored status (``"executing"``, ...) and
    ``error`` says why. ``error`` is the exception that made the saga compensate (or
    :class:`~gameguard.CompensationFailed`); after a crash only ``errors`` (the recorded
    texts) survive.
    """

    tx_id: str
    saga: str
    status: str
    results: Dict[str, Any]
    payload: Any
    trace_id: str
    error: Optional[BaseException] = None
    errors: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def committed(self) -> bool:
        return self.status == COMMITTED

    @property
    def finished(self) -> bool:
        """Committed or compensated: nothing more will happen to this transaction."""
        return self.status in (COMMITTED, COMPENSATED)

    def raise_for_status(self) -> "SagaResult":
        """Return ``self`` if committed, else raise ``error`` (a :class:`SagaError` if none)."""
        if self.status == COMMITTED:
            return self
        if self.error is not None:
            raise self.error
        raise SagaError(f"transaction {self.tx_id!r} of saga {self.saga!r} is {self.status}")


class _Step:
    __slots__ = ("name", "action", "compensate", "retries", "timeout", "backoff",
                 "max_backoff", "guard", "is_async", "action_async", "comp_async",
                 "action_key", "comp_key")

    def __init__(self, name: str, action: Callable[..., Any],
                 compensate: Optional[Callable[..., Any]], retries: int,
                 timeout: Optional[float], backoff: float, max_backoff: float,
                 guard: Any) -> None:
        self.name = name
        self.action = action
        self.compensate = compensate
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.guard = guard
        self.action_async = _is_async(action)
        self.comp_async = compensate is not None and _is_async(compensate)
        self.is_async = (self.action_async or self.comp_async
                         or (guard is not None and not hasattr(guard, "__enter__")))
        self.action_key = f"{name}/{ACTION}"
        self.comp_key = f"{name}/{COMPENSATION}"


def _is_async(fn: Any) -> bool:
    """``async def`` functions, partials of them, and objects with ``async def __call__``."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(type(fn), "__call__", None))  # noqa: B004


class _Tx:
    """A transaction's state in memory, mirroring its row; ``move`` makes the next write."""

    __slots__ = ("tx_id", "status", "step", "attempt", "version", "payload", "results",
                 "parts", "errors", "errors_dirty", "trace_id", "steps", "prefix",
                 "error")

    def __init__(self, tx_id: str, status: str, step: int, attempt: int, version: int,
                 payload: Any, results: Dict[str, Any], errors: List[Dict[str, Any]],
                 trace_id: str, steps: List[_Step], saga: str) -> None:
        self.tx_id = tx_id
        self.status = status
        self.step = step
        self.attempt = attempt
        self.version = version
        self.payload = payload
        self.results = results
        self.parts = [f"{_dumps(k)}:{_dumps(v)}" for k, v in results.items()]
        self.errors = errors
        self.errors_dirty = False
        self.trace_id = trace_id
        self.steps = steps
        self.prefix = f"{saga}/{tx_id}/"
        self.error: Optional[BaseException] = None

    def move(self, status: str, step: int, attempt: int, results: bool = False) -> Transition:
        t = Transition(self.tx_id, self.version, status, step, attempt,
                       "{" + ",".join(self.parts) + "}" if results else None,
                       _dumps(self.errors) if self.errors_dirty else None, time.time())
        self.status, self.step, self.attempt = status, step, attempt
        self.version += 1
        self.errors_dirty = False
        return t

    def note_error(self, step: str, phase: str, exc: BaseException) -> None:
        text = f"{type(exc).__qualname__}: {exc}"
        self.errors.append({"step": step, "phase": phase, "attempt": self.attempt,
                            "error": text[:MAX_ERROR_TEXT], "at": time.time()})
        if len(self.errors) > MAX_ERRORS:
            del self.errors[:len(self.errors) - MAX_ERRORS]
        self.errors_dirty = True


# effects the driver yields; the sync and async runners perform them
_CALL, _WRITE, _SLEEP = 0, 1, 2
Outcome = Tuple[Optional[BaseException], Any]
Driver = Generator[Tuple[Any, ...], Any, "SagaResult"]


class Saga:
    """A named sequence of steps, each with an optional compensation, run as transactions.

    ``Saga(name, *, store=None, clock=None, rng=None, seed=None, backoff=0.05,
    max_backoff=5.0)``. ``store=None`` opens (on first use)
    ``SQLiteStore(os.environ.get("GAMEGUARD_SAGA_DB", "gameguard-sagas.db"))``. ``clock``
    times sync-step timeouts and drives retry sleeps (a ``ManualClock`` makes them exact);
    ``rng`` (a callable returning floats in [0, 1)) or ``seed`` draws the backoff jitter.
    ``backoff``/``max_backoff`` are the defaults for steps that do not set their own.

    Register steps in order with :meth:`step`; run a transaction with :meth:`run` or
    :meth:`run_async`; after a crash, :meth:`recover` finishes what the store holds.
    """

    def __init__(self, name: str, *, store: Optional[SagaStore] = None,
                 clock: Optional[Clock] = None, rng: Optional[Callable[[], float]] = None,
                 seed: Optional[int] = None, backoff: float = 0.05,
                 max_backoff: float = 5.0) -> None:
        from .._checks import check_clock, check_non_negative
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigurationError(f"name must be a non-empty str without '/', got {name!r}")
        if store is not None and not isinstance(store, SagaStore):
            raise ConfigurationError(f"store must implement SagaStore (e.g. SQLiteStore), "
                                     f"got {store!r}")
        if rng is not None and seed is not None:
            raise ConfigurationError("give rng or seed, not both")
        if rng is not None and not callable(rng):
            raise ConfigurationError(f"rng must be a callable returning floats in [0, 1), "
                                     f"got {rng!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigurationError(f"seed must be an int or None, got {seed!r}")
        self.name = name
        self._store = store
        self._store_mu = threading.Lock()
        self._clock = check_clock(clock)
        self._rng: Callable[[], float] = rng if rng is not None else random.Random(seed).random
        self.backoff = check_non_negative("backoff", backoff)
        self.max_backoff = check_non_negative("max_backoff", max_backoff)
        self._steps: List[_Step] = []
        self._by_name: Dict[str, _Step] = {}
        self._names_json = "[]"
        self._has_async = False

    # -- configuration ----------------------------------------------------------------------
    @property
    def store(self) -> SagaStore:
        """The store (opened on first use when none was given)."""
        if self._store is None:
            with self._store_mu:
                if self._store is None:
                    from .sqlite import SQLiteStore
                    self._store = SQLiteStore(os.environ.get("GAMEGUARD_SAGA_DB",
                                                             "gameguard-sagas.db"))
        return self._store

    @property
    def steps(self) -> Tuple[str, ...]:
        """Registered step names, in order."""
        return tuple(s.name for s in self._steps)

    @overload
    def step(self, func: F, /) -> F: ...
    @overload
    def step(self, func: None = None, /, *, compensate: Optional[Callable[..., Any]] = None,
             retries: int = 0, timeout: Optional[float] = None, name: Optional[str] = None,
             guard: Any = None, backoff: Optional[float] = None,
             max_backoff: Optional[float] = None) -> Callable[[F], F]: ...

    def step(self, func: Any = None, /, *, compensate: Optional[Callable[..., Any]] = None,
             retries: int = 0, timeout: Optional[float] = None, name: Optional[str] = None,
             guard: Any = None, backoff: Optional[float] = None,
             max_backoff: Optional[float] = None) -> Any:
        """Register the next step (``@saga.step`` or ``@saga.step(compensate=undo, ...)``).

        ``func(ctx)`` and ``compensate(ctx)`` may be sync or ``async def``; the function is
        returned unchanged. ``retries``: extra attempts after a failure (an ``Exception``),
        for the action and, separately, the compensation, with exponential backoff and full
        jitter: the n-th retry waits ``U(0,1) * min(max_backoff, backoff * 2**(n-1))``, and
        at least a guard's ``retry_after`` (capped at ``max_backoff``). ``timeout`` per
        attempt: async functions are cancelled; a sync function cannot be interrupted, so
        one that returns after ``timeout`` counts as a failed attempt (``TimeoutError``,
        result discarded, effect compensated if it is the last attempt). ``guard``: a
        breaker/limiter/bulkhead (anything usable as ``with g:`` / ``async with g:``)
        around each attempt of the action; a rejection is a failed attempt.
        """
        from .._checks import check_int, check_non_negative, check_positive
        check_int("retries", retries, 0, 1000)
        if timeout is not None:
            timeout = check_positive("timeout", timeout)
        if compensate is not None and not callable(compensate):
            raise ConfigurationError(f"compensate must be callable or None, got {compensate!r}")
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ConfigurationError(f"name must be a non-empty str without '/', got {name!r}")
        if guard is not None and not (hasattr(guard, "__enter__") or hasattr(guard, "__aenter__")):
            raise ConfigurationError(f"guard must be usable as 'with guard:' or "
                                     f"'async with guard:', got {guard!r}")
        bo = self.backoff if backoff is None else check_non_negative("backoff", backoff)
        mbo = self.max_backoff if max_backoff is None else check_non_negative("max_backoff",
                                                                              max_backoff)

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationError(f"a step must be callable, got {fn!r}")
            step_name = name if name is not None else getattr(fn, "__name__", None)
            if not isinstance(step_name, str) or not step_name or "/" in step_name:
                raise ConfigurationError(f"step name must be a non-empty str without '/', "
                                         f"got {step_name!r} (pass name=)")
            if step_name in self._by_name:
                raise ConfigurationError(f"saga {self.name!r} already has a step named "
                                         f"{step_name!r}; step names must be unique")
            st = _Step(step_name, fn, compensate, retries, timeout, bo, mbo, guard)
            self._steps.append(st)
            self._by_name[step_name] = st
            self._names_json = _dumps([s.name for s in self._steps])
            self._has_async = self._has_async or st.is_async
            return fn

        return register if func is None else register(func)

    # -- running ----------------------------------------------------------------------------
    def _prepare(self, payload: Any, tx_id: Optional[str],
                 trace_id: Optional[str]) -> Tuple[_Tx, TxRecord]:
        """Validate and encode everything before anything is written or run."""
        if not self._steps:
            raise SagaError(f"saga {self.name!r} has no steps")
        if tx_id is None:
            tx_id = _new_id()
        elif not isinstance(tx_id, str):
            raise TypeError(f"tx_id must be a str or None, got {tx_id!r}")
        elif not tx_id or len(tx_id) > MAX_TX_ID or "/" in tx_id:
            raise ValueError(f"tx_id must be 1..{MAX_TX_ID} characters without '/', "
                             f"got {tx_id!r}")
        if trace_id is None:
            trace_id = _new_id()
        elif not isinstance(trace_id, str):
            raise TypeError(f"trace_id must be a str or None, got {trace_id!r}")
        try:
            payload_json = _dumps(payload)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"saga {self.name!r}: the payload is not JSON-serialisable "
                            f"({exc}); payloads are stored as JSON, never pickled, and "
                            f"nothing was run") from exc
        now = time.time()
        store = self.store
        rec = TxRecord(tx_id, self.name, PREPARING, 0, 1, self._names_json, payload_json, "{}",
                       "[]", trace_id, store.owner, 1, now, now)
        # steps see the payload as recovery will: decoded from its JSON
        tx = _Tx(tx_id, PREPARING, 0, 1, 1, _loads(payload_json), {}, [], trace_id,
                 list(self._steps), self.name)
        return tx, rec

    def run(self, payload: Any, tx_id: Optional[str] = None, *,
            trace_id: Optional[str] = None) -> SagaResult:
        """Run one transaction to its end and return how it ended.

        The payload must be JSON-serialisable (``TypeError``/``ValueError`` before anything
        runs); an existing ``tx_id`` raises :class:`DuplicateTransaction` and overwrites
        nothing. A step failing after its retries is compensated, then every completed step
        in reverse order (status ``compensated``, or ``failed`` if a compensation fails too).
        A ``BaseException`` from a step (KeyboardInterrupt, SystemExit) or a store error
        propagates and leaves the row as last recorded: :meth:`recover` finishes it.
        Async steps need :meth:`run_async` (``TypeError`` here, before anything runs).
        """
        if self._has_async:
            raise TypeError(f"saga {self.name!r} has async steps, compensations or guards: "
                            f"use 'await saga.run_async(...)'")
        tx, rec = self._prepare(payload, tx_id, trace_id)
        store = self.store
        key = (store.identity, tx.tx_id)
        if not _ACTIVE.acquire(key):
            raise DuplicateTransaction(f"transaction {tx.tx_id!r} is already running in this "
                                       f"process; nothing was written", tx_id=tx.tx_id)
        try:
            store.insert(rec)
            return self._perform(self._drive(tx))
        finally:
            _ACTIVE.release(key)

    async def run_async(self, payload: Any, tx_id: Optional[str] = None, *,
                        trace_id: Optional[str] = None) -> SagaResult:
        """:meth:`run` for asyncio: async steps are awaited (with ``timeout`` they are
        cancelled when it expires), sync steps are called inline on the loop. Store writes
        are committed by the store's writer thread, so the loop never waits on an fsync.
        Cancelling the task leaves the row as last recorded (a write already queued may
        still commit; either state is consistent) and :meth:`recover` finishes it."""
        tx, rec = self._prepare(payload, tx_id, trace_id)
        store = self.store
        key = (store.identity, tx.tx_id)
        if not _ACTIVE.acquire(key):
            raise DuplicateTransaction(f"transaction {tx.tx_id!r} is already running in this "
                                       f"process; nothing was written", tx_id=tx.tx_id)
        try:
            await store.insert_async(rec)
            return await self._perform_async(self._drive(tx))
        finally:
            _ACTIVE.release(key)

    # -- the state machine (one place, for run, run_async and recover) ------------------------
    def _drive(self, tx: _Tx) -> Driver:
        steps = tx.steps
        n = len(steps)
        if tx.status in (PREPARING, EXECUTING):
            while True:
                st = steps[tx.step]
                exc, value = yield from self._attempts(tx, st, ACTION)
                if exc is None:
                    try:
                        vjson = _dumps(value)
                    except (TypeError, ValueError) as e:
                        exc = TypeError(f"step {st.name!r} returned a value that is not "
                                        f"JSON-serialisable ({e}); step results are stored "
                                        f"as JSON")
                        tx.note_error(st.name, ACTION, exc)
                    else:
                        tx.results[st.name] = _loads(vjson)
                        tx.parts.append(f"{_dumps(st.name)}:{vjson}")
                        nxt = tx.step + 1
                        if nxt == n:
                            yield (_WRITE, tx.move(COMMITTED, n, 0, results=True))
                            return self._result(tx)
                        yield (_WRITE, tx.move(EXECUTING, nxt, 1, results=True))
                        continue
                # failed for good: compensate this step too (it may have half-applied),
                # then the completed ones, newest first
                tx.error = exc
                c = self._compensable(steps, tx.step)
                if c < 0:
                    yield (_WRITE, tx.move(COMPENSATED, -1, 0))
                    return self._result(tx)
                yield (_WRITE, tx.move(COMPENSATING, c, 1))
                break
        elif tx.status == FAILED:  # an operator's retry (recover(include_failed=True))
            tx.status = COMPENSATING
        while True:
            c = self._compensable(steps, tx.step)
            if c != tx.step:  # only after a code change: that step lost its compensation
                if c < 0:
                    yield (_WRITE, tx.move(COMPENSATED, -1, 0))
                    return self._result(tx)
                yield (_WRITE, tx.move(COMPENSATING, c, 1))
            st = steps[tx.step]
            exc, _ = yield from self._attempts(tx, st, COMPENSATION)
            if exc is not None:
                yield (_WRITE, tx.move(FAILED, tx.step, tx.attempt))
                err = CompensationFailed(
                    f"saga {self.name!r}, transaction {tx.tx_id!r}: compensation of step "
                    f"{st.name!r} still failed after {st.retries + 1} attempt(s): "
                    f"{type(exc).__name__}: {exc}; the transaction is kept as 'failed'",
                    step=st.name, errors=[e for e in (tx.error, exc) if e is not None])
                err.__cause__ = exc
                tx.error = err
                return self._result(tx)
            c = self._compensable(steps, tx.step - 1)
            if c < 0:
                yield (_WRITE, tx.move(COMPENSATED, -1, 0))
                return self._result(tx)
            yield (_WRITE, tx.move(COMPENSATING, c, 1))

    @staticmethod
    def _compensable(steps: List[_Step], i: int) -> int:
        """The highest index <= i whose step has a compensation (-1: none)."""
        while i >= 0 and steps[i].compensate is None:
            i -= 1
        return i

    def _attempts(self, tx: _Tx, st: _Step, phase: str) -> Generator[Tuple[Any, ...], Any, Outcome]:
        """Attempts of one action or compensation, retried with backoff; each new attempt's
        number is durable before it starts."""
        key = tx.prefix + (st.action_key if phase == ACTION else st.comp_key)
        tries = 0
        while True:
            tries += 1
            ctx = StepContext(tx.tx_id, self.name, st.name, phase, tx.payload,
                              MappingProxyType(dict(tx.results)),
                              tx.attempt, key, tx.trace_id, st.timeout)
            exc, value = yield (_CALL, st, phase, ctx)
            if exc is None:
                return None, value
            tx.note_error(st.name, phase, exc)
            if tries > st.retries:
                return exc, None
            delay = self._rng() * min(st.max_backoff, st.backoff * 2.0 ** (tries - 1))
            if isinstance(exc, RejectedError) and exc.retry_after:
                delay = max(delay, min(float(exc.retry_after), st.max_backoff))
            if delay > 0.0:
                yield (_SLEEP, delay)
            yield (_WRITE, tx.move(tx.status, tx.step, tx.attempt + 1))

    def _result(self, tx: _Tx) -> SagaResult:
        return SagaResult(tx.tx_id, self.name, tx.status, dict(tx.results), tx.payload,
                          tx.trace_id, tx.error, list(tx.errors))

    # -- effect runners ---------------------------------------------------------------------
    def _perform(self, gen: Driver) -> SagaResult:
        store = self.store
        send: Any = None
        try:
            while True:
                try:
                    eff = gen.send(send)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                kind = eff[0]
                if kind == _CALL:
                    send = self._call(eff[1], eff[2], eff[3])
                elif kind == _WRITE:
                    store.update(eff[1])
                    send = None
                else:
                    sleeper(self._clock)(eff[1])
                    send = None
        finally:
            gen.close()

    def _call(self, st: _Step, phase: str, ctx: StepContext) -> Outcome:
        fn = st.action if phase == ACTION else st.compensate
        guard = st.guard if phase == ACTION else None
        clock = self._clock or time.monotonic
        try:
            t0 = clock() if st.timeout is not None else 0.0
            if guard is not None:
                with guard:
                    value = fn(ctx)  # type: ignore[misc]
                    if st.timeout is not None:
                        self._check_elapsed(st, phase, clock() - t0)
            else:
                value = fn(ctx)  # type: ignore[misc]
                if st.timeout is not None:
                    self._check_elapsed(st, phase, clock() - t0)
        except Exception as exc:
            return exc, None
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()
            return TypeError(f"step {st.name!r} ({phase}) returned an awaitable; "
                             f"async steps need run_async"), None
        return None, value

    @staticmethod
    def _check_elapsed(st: _Step, phase: str, elapsed: float) -> None:
        if elapsed > st.timeout:  # type: ignore[operator]
            raise TimeoutError(f"step {st.name!r} ({phase}) took {elapsed:.3f}s, over its "
                               f"timeout of {st.timeout}s; its result is discarded")

    async def _perform_async(self, gen: Driver) -> SagaResult:
        store = self.store
        send: Any = None
        try:
            while True:
                try:
                    eff = gen.send(send)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                kind = eff[0]
                if kind == _CALL:
                    st = eff[1]
                    if st.is_async:
                        send = await self._call_async(st, eff[2], eff[3])
                    else:
                        send = self._call(st, eff[2], eff[3])
                elif kind == _WRITE:
                    await store.update_async(eff[1])
                    send = None
                else:
                    await async_sleeper(self._clock)(eff[1])
                    send = None
        finally:
            gen.close()

    async def _call_async(self, st: _Step, phase: str, ctx: StepContext) -> Outcome:
        fn = st.action if phase == ACTION else st.compensate
        guard = st.guard if phase == ACTION else None
        try:
            if st.action_async if phase == ACTION else st.comp_async:
                if guard is None:
                    value = await self._await_step(fn, ctx, st.timeout)
                elif hasattr(guard, "__aenter__"):
                    async with guard:  # the coroutine is made only once admitted
                        value = await self._await_step(fn, ctx, st.timeout)
                else:
                    with guard:
                        value = await self._await_step(fn, ctx, st.timeout)
            else:  # a sync function among async ones: called inline
                clock = self._clock or time.monotonic
                t0 = clock()
                if guard is None:
                    value = fn(ctx)  # type: ignore[misc]
                elif hasattr(guard, "__aenter__"):
                    async with guard:
                        value = fn(ctx)  # type: ignore[misc]
                else:
                    with guard:
                        value = fn(ctx)  # type: ignore[misc]
                if st.timeout is not None:
                    self._check_elapsed(st, phase, clock() - t0)
        except asyncio.TimeoutError:  # wait_for's (an outside cancellation stays CancelledError)
            return TimeoutError(f"step {st.name!r} ({phase}) did not finish within its "
                                f"timeout of {st.timeout}s and was cancelled"), None
        except Exception as exc:
            return exc, None
        return None, value

    @staticmethod
    async def _await_step(fn: Any, ctx: StepContext, timeout: Optional[float]) -> Any:
        if timeout is None:
            return await fn(ctx)
        return await asyncio.wait_for(fn(ctx), timeout)

    # -- recovery ---------------------------------------------------------------------------
    def _recoverable(self, include_failed: bool) -> List[Union[Tuple[TxRecord, List[_Step]],
                                                               SagaResult]]:
        store = self.store
        statuses = UNFINISHED + ((FAILED,) if include_failed else ())
        me = store.owner
        alive: Dict[str, bool] = {}
        out: List[Union[Tuple[TxRecord, List[_Step]], SagaResult]] = []
        for rec in store.scan(self.name, statuses):
            if (store.identity, rec.tx_id) in _ACTIVE:
                continue  # running in this process right now
            if rec.owner != me:
                if rec.owner not in alive:
                    alive[rec.owner] = store.owner_alive(rec.owner)
                if alive[rec.owner]:
                    continue  # another live process is driving it
            names = rec.steps
            missing = [nm for nm in names if nm not in self._by_name]
            problem = None
            if missing:
                problem = (f"its recorded steps {missing} are no longer registered in saga "
                           f"{self.name!r}; not guessing, left as {rec.status!r}")
            elif not 0 <= rec.step < len(names):
                problem = f"its step index {rec.step} is out of range; left as {rec.status!r}"
            if problem is not None:
                log.warning("saga %r: transaction %r cannot be recovered: %s",
                            self.name, rec.tx_id, problem)
                out.append(SagaResult(rec.tx_id, self.name, rec.status, rec.results,
                                      rec.payload, rec.trace_id,
                                      SagaError(f"transaction {rec.tx_id!r}: {problem}"),
                                      rec.errors))
                continue
            out.append((rec, [self._by_name[nm] for nm in names]))
        return out

    def _claimed(self, rec: TxRecord, steps: List[_Step]) -> _Tx:
        return _Tx(rec.tx_id, rec.status, rec.step, rec.attempt + 1, rec.version + 1,
                   rec.payload, rec.results, rec.errors, rec.trace_id, steps, self.name)

    def recover(self, *, include_failed: bool = False) -> List[SagaResult]:
        """Finish this saga's unfinished transactions in the store (e.g. after a crash).

        Each goes on where it stopped: preparing/executing forward (the step that may have
        been in flight runs again, same idempotency key, next attempt number), compensating
        backward. Transactions running in this or another live process are left alone, so
        this is safe while new sagas run. ``include_failed=True`` also retries ``failed``
        ones (an operator's call once the cause is fixed). Returns one result per
        transaction it finished, plus one (with ``error``) per transaction it could not drive
        (steps no longer registered). Also purges finished rows past the store's retention.
        """
        if self._has_async:
            raise TypeError(f"saga {self.name!r} has async steps: use "
                            f"'await saga.recover_async()'")
        store = self.store
        results: List[SagaResult] = []
        for item in self._recoverable(include_failed):
            if isinstance(item, SagaResult):
                results.append(item)
                continue
            rec, steps = item
            key = (store.identity, rec.tx_id)
            if not _ACTIVE.acquire(key):
                continue
            try:
                if not store.claim(rec.tx_id, rec.version, store.owner, time.time()):
                    continue  # it moved on (another recoverer, or it just finished)
                results.append(self._perform(self._drive(self._claimed(rec, steps))))
            finally:
                _ACTIVE.release(key)
        store.purge()
        return results

    async def recover_async(self, *, include_failed: bool = False,
                            concurrency: int = 32) -> List[SagaResult]:
        """:meth:`recover` for sagas with async steps: up to ``concurrency`` transactions
        are driven at once on this loop (their writes share group commits); the scan and
        the claims run in a worker thread."""
        from .._checks import check_int
        check_int("concurrency", concurrency, 1, 1 << 16)
        store = self.store
        results: List[SagaResult] = []
        sem = asyncio.Semaphore(concurrency)

        async def finish(rec: TxRecord, steps: List[_Step]) -> None:
            async with sem:
                key = (store.identity, rec.tx_id)
                if not _ACTIVE.acquire(key):
                    return
                try:
                    if not await asyncio.to_thread(store.claim, rec.tx_id, rec.version,
                                                   store.owner, time.time()):
                        return  # it moved on (another recoverer, or it just finished)
                    results.append(await self._perform_async(
                        self._drive(self._claimed(rec, steps))))
                finally:
                    _ACTIVE.release(key)

        tasks = []
        for item in await asyncio.to_thread(self._recoverable, include_failed):
            if isinstance(item, SagaResult):
                results.append(item)
            else:
                tasks.append(asyncio.ensure_future(finish(*item)))
        if tasks:
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        await asyncio.to_thread(store.purge)
        return results

    def failed(self) -> List[TxRecord]:
        """This saga's ``failed`` transactions, for an operator (errors in ``.errors``)."""
        return self.store.scan(self.name, (FAILED,))

    def __repr__(self) -> str:
        return f"<Saga {self.name!r} steps={list(self.steps)}>"
