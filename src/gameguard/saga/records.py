"""What a saga holds in memory: step definitions, the context a step gets, a transaction's
state (mirroring its row) and how a transaction ended. JSON encoding and ids live here too."""
from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..errors import SagaError
from .store import COMMITTED, COMPENSATED, Transition

__all__ = ["ACTION", "COMPENSATION", "StepContext", "SagaResult"]

ACTION = "action"
COMPENSATION = "compensation"
MAX_ERRORS = 100        # errors kept per transaction (the newest)
MAX_ERROR_TEXT = 1000   # characters kept per error message
MAX_TX_ID = 200

# Compact, strict JSON: no NaN/Infinity (PostgreSQL ``jsonb`` rejects them too). One
# encoder object, built once: ``json.dumps(**options)`` would build one per call.
dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode
loads = json.JSONDecoder().decode


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


new_id = _Ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=new_id._reset)


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


class SagaResult:
    """How a transaction ended (or, from ``recover()``, why it could not be driven).

    ``status``: ``"committed"``, ``"compensated"`` or ``"failed"`` (a compensation still
    failed after its retries; the row stays for an operator). From ``recover()`` a
    transaction it could not drive keeps its stored status (``"executing"``, ...) and
    ``error`` says why. ``error`` is the exception that made the saga compensate (or
    :class:`~gameguard.CompensationFailed`); after a crash only ``errors`` (the recorded
    texts) survive.
    """

    __slots__ = ("tx_id", "saga", "status", "results", "payload", "trace_id", "error",
                 "errors")

    def __init__(self, tx_id: str, saga: str, status: str, results: Dict[str, Any],
                 payload: Any, trace_id: str, error: Optional[BaseException] = None,
                 errors: Optional[List[Dict[str, Any]]] = None) -> None:
        self.tx_id = tx_id
        self.saga = saga
        self.status = status
        self.results = results
        self.payload = payload
        self.trace_id = trace_id
        self.error = error
        self.errors: List[Dict[str, Any]] = [] if errors is None else errors

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not SagaResult:
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"SagaResult({inner})"

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


class Step:
    """One registered step: its action, compensation and retry policy."""

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
    import inspect  # at registration only: `import gameguard.saga` stays light
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(type(fn), "__call__", None))  # noqa: B004


class Tx:
    """A transaction's state in memory, mirroring its row; ``move`` makes the next write."""

    __slots__ = ("tx_id", "saga", "status", "step", "attempt", "version", "payload",
                 "results", "parts", "errors", "errors_dirty", "trace_id", "steps", "prefix",
                 "error")

    def __init__(self, tx_id: str, status: str, step: int, attempt: int, version: int,
                 payload: Any, results: Dict[str, Any], errors: List[Dict[str, Any]],
                 trace_id: str, steps: List[Step], saga: str) -> None:
        self.tx_id = tx_id
        self.saga = saga
        self.status = status
        self.step = step
        self.attempt = attempt
        self.version = version
        self.payload = payload
        self.results = results
        self.parts = [f"{dumps(k)}:{dumps(v)}" for k, v in results.items()]
        self.errors = errors
        self.errors_dirty = False
        self.trace_id = trace_id
        self.steps = steps
        self.prefix = f"{saga}/{tx_id}/"
        self.error: Optional[BaseException] = None

    def move(self, status: str, step: int, attempt: int, results: bool = False) -> Transition:
        t = Transition(self.tx_id, self.version, status, step, attempt,
                       "{" + ",".join(self.parts) + "}" if results else None,
                       dumps(self.errors) if self.errors_dirty else None, time.time())
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

    def result(self) -> SagaResult:
        return SagaResult(self.tx_id, self.saga, self.status, dict(self.results),
                          self.payload, self.trace_id, self.error, list(self.errors))
