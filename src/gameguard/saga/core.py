"""``Saga``: cross-server transactions as steps with compensations, recorded durably.

This module holds the saga's configuration and its entry points; the state machine and its
runners are in ``runner.py``, recovery in ``recovery.py``, the in-memory records in
``records.py``.
"""
from __future__ import annotations

import os
import threading
import time
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar,
                    overload)

from .._loop import warn_if_loop_thread
from .._registry import register
from ..errors import ConfigurationError, DuplicateTransaction, SagaError
from .records import (ACTION, COMPENSATION, MAX_TX_ID, SagaResult, Step, StepContext, Tx,
                      dumps, loads, new_id)
from .recovery import ACTIVE, recover, recover_async, retry, retry_async
from .runner import drive, perform, perform_async
from .store import FAILED, PREPARING, SagaStore, TxRecord

if TYPE_CHECKING:
    from ..clock import Clock
    from .sqlite import SQLiteStore

__all__ = ["Saga", "SagaResult", "StepContext", "ACTION", "COMPENSATION"]

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_DB = "gameguard-sagas.db"
_defaults: Dict[str, SQLiteStore] = {}  # absolute path -> the store sagas with store=None share
_defaults_mu = threading.Lock()


def default_store() -> SQLiteStore:
    """The store of sagas made with ``store=None``: ``SQLiteStore($GAMEGUARD_SAGA_DB)``, else
    ``SQLiteStore("./gameguard-sagas.db")`` with a warning (once per file) naming its
    absolute path, since a file appearing in the working directory is easy to miss. Sagas
    on one file share one store (so they share group commits); a closed one is reopened."""
    from .sqlite import SQLiteStore
    env = os.environ.get("GAMEGUARD_SAGA_DB")
    path = os.path.abspath(env or DEFAULT_DB)
    with _defaults_mu:
        store = _defaults.get(path)
        if store is not None and not store.closed:
            return store
        if env is None and store is None:
            import warnings
            warnings.warn(f"gameguard: a Saga without a store records its transactions in "
                          f"{path}; pass store=SQLiteStore(path) or set GAMEGUARD_SAGA_DB",
                          UserWarning, stacklevel=4)
        _defaults[path] = store = SQLiteStore(path)
        return store


class Saga:
    """A named sequence of steps, each with an optional compensation, run as transactions.

    ``Saga(name, *, store=None, clock=None, rng=None, seed=None, backoff=0.05,
    max_backoff=5.0)``. ``store=None`` uses the default store (see :func:`default_store`),
    opened on first use. ``clock`` times sync-step timeouts and drives retry sleeps (a
    ``ManualClock`` makes them exact);
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
        if rng is None:
            import random
            rng = random.Random(seed).random
        self._rng: Callable[[], float] = rng
        self.backoff = check_non_negative("backoff", backoff)
        self.max_backoff = check_non_negative("max_backoff", max_backoff)
        self._steps: List[Step] = []
        self._by_name: Dict[str, Step] = {}
        self._names_json = "[]"
        self._has_async = False
        # transactions this object drove to an end, by status (metrics read outcomes())
        self._outcomes = {"committed": 0, "compensated": 0, "failed": 0}
        self._outcomes_mu = threading.Lock()
        register(self)

    def outcomes(self) -> Dict[str, int]:
        """Transactions run or recovered by this object since creation, by final status
        (``committed``, ``compensated``, ``failed``)."""
        with self._outcomes_mu:
            return dict(self._outcomes)

    def _ended(self, results: List[SagaResult]) -> None:
        with self._outcomes_mu:
            for r in results:
                # recover() reports a transaction it could not drive with a plain SagaError
                # and its stored status: not an outcome
                if r.status in self._outcomes and type(r.error) is not SagaError:
                    self._outcomes[r.status] += 1

    # -- configuration ----------------------------------------------------------------------
    @property
    def store(self) -> SagaStore:
        """The store (the default one, opened on first use, when none was given)."""
        if self._store is None:
            with self._store_mu:
                if self._store is None:
                    self._store = default_store()
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
            st = Step(step_name, fn, compensate, retries, timeout, bo, mbo, guard)
            self._steps.append(st)
            self._by_name[step_name] = st
            self._names_json = dumps([s.name for s in self._steps])
            self._has_async = self._has_async or st.is_async
            return fn

        return register if func is None else register(func)

    # -- running ----------------------------------------------------------------------------
    def _prepare(self, payload: Any, tx_id: Optional[str],
                 trace_id: Optional[str]) -> Tuple[Tx, TxRecord]:
        """Validate and encode everything before anything is written or run."""
        if not self._steps:
            raise SagaError(f"saga {self.name!r} has no steps")
        if tx_id is None:
            tx_id = new_id()
        elif not isinstance(tx_id, str):
            raise TypeError(f"tx_id must be a str or None, got {tx_id!r}")
        elif not tx_id or len(tx_id) > MAX_TX_ID or "/" in tx_id:
            raise ValueError(f"tx_id must be 1..{MAX_TX_ID} characters without '/', "
                             f"got {tx_id!r}")
        if trace_id is None:
            trace_id = new_id()
        elif not isinstance(trace_id, str):
            raise TypeError(f"trace_id must be a str or None, got {trace_id!r}")
        try:
            payload_json = dumps(payload)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"saga {self.name!r}: the payload is not JSON-serialisable "
                            f"({exc}); payloads are stored as JSON, never pickled, and "
                            f"nothing was run") from exc
        now = time.time()
        store = self.store
        rec = TxRecord(tx_id, self.name, PREPARING, 0, 1, self._names_json, payload_json, "{}",
                       "[]", trace_id, store.owner, 1, now, now)
        # steps see the payload as recovery will: decoded from its JSON
        tx = Tx(tx_id, PREPARING, 0, 1, 1, loads(payload_json), {}, [], trace_id,
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
        Async steps need :meth:`run_async` (``TypeError`` here, before anything runs); on a
        thread running an event loop this warns (``RuntimeWarning``): it blocks the loop.
        """
        if self._has_async:
            raise TypeError(f"saga {self.name!r} has async steps, compensations or guards: "
                            f"use 'await saga.run_async(...)'")
        warn_if_loop_thread("Saga.run()", "await saga.run_async(...)")
        tx, rec = self._prepare(payload, tx_id, trace_id)
        store = self.store
        key = self._running(store, tx.tx_id)
        try:
            store.insert(rec)
            result = perform(drive(tx, self._rng), store, self._clock)
        finally:
            ACTIVE.release(key)
        self._ended([result])
        return result

    async def run_async(self, payload: Any, tx_id: Optional[str] = None, *,
                        trace_id: Optional[str] = None) -> SagaResult:
        """:meth:`run` for asyncio: async steps are awaited (with ``timeout`` they are
        cancelled when it expires), sync steps are called inline on the loop. Store writes
        are committed by the store's writer thread, so the loop never waits on an fsync.
        Cancelling the task leaves the row as last recorded (a write already queued may
        still commit; either state is consistent) and :meth:`recover` finishes it."""
        tx, rec = self._prepare(payload, tx_id, trace_id)
        store = self.store
        key = self._running(store, tx.tx_id)
        try:
            await store.insert_async(rec)
            result = await perform_async(drive(tx, self._rng), store, self._clock)
        finally:
            ACTIVE.release(key)
        self._ended([result])
        return result

    @staticmethod
    def _running(store: SagaStore, tx_id: str) -> Tuple[str, str]:
        """Register ``tx_id`` as running in this process (so ``recover()`` leaves it)."""
        key = (store.identity, tx_id)
        if not ACTIVE.acquire(key):
            raise DuplicateTransaction(f"transaction {tx_id!r} is already running in this "
                                       f"process; nothing was written", tx_id=tx_id)
        return key

    # -- recovery ---------------------------------------------------------------------------
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
        warn_if_loop_thread("Saga.recover()", "await saga.recover_async()")
        results = recover(self, include_failed)
        self._ended(results)
        return results

    async def recover_async(self, *, include_failed: bool = False,
                            concurrency: int = 32) -> List[SagaResult]:
        """:meth:`recover` for sagas with async steps: up to ``concurrency`` transactions
        are driven at once on this loop (their writes share group commits); the scan and
        the claims run in a worker thread."""
        from .._checks import check_int
        check_int("concurrency", concurrency, 1, 1 << 16)
        results = await recover_async(self, include_failed, concurrency)
        self._ended(results)
        return results

    def retry(self, tx_id: str, *, include_failed: bool = False) -> SagaResult:
        """Drive one unfinished (or, with ``include_failed=True``, failed) transaction to
        its end, as :meth:`recover` would: an operator's retry (``python -m gameguard
        sagas retry``). :class:`SagaError` if it does not exist, belongs to another saga, is
        finished, is driven by a live process, or its steps are no longer registered."""
        if self._has_async:
            raise TypeError(f"saga {self.name!r} has async steps: use "
                            f"'await saga.retry_async(tx_id)'")
        warn_if_loop_thread("Saga.retry()", "await saga.retry_async(tx_id)")
        return retry(self, tx_id, include_failed)

    async def retry_async(self, tx_id: str, *, include_failed: bool = False) -> SagaResult:
        """:meth:`retry` for sagas with async steps."""
        return await retry_async(self, tx_id, include_failed)

    def failed(self) -> List[TxRecord]:
        """This saga's ``failed`` transactions, for an operator (errors in ``.errors``)."""
        return self.store.scan(self.name, (FAILED,))

    def __repr__(self) -> str:
        return f"<Saga {self.name!r} steps={list(self.steps)}>"
