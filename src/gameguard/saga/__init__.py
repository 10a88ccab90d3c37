"""Saga steps: cross-server transactions that are never lost and never applied twice.

A :class:`Saga` is a sequence of steps, each with a compensation; every transaction is
recorded in a durable local message table (:class:`SQLiteStore` by default) before each
action starts, so after any crash :meth:`Saga.recover` ends it committed or compensated.
Steps get a :class:`StepContext` whose ``idempotency_key`` lets the remote side apply each
effect once. See ``docs/saga.md``.

Modules: ``core`` (``Saga``), ``runner`` (the state machine), ``recovery``, ``records``,
``store`` (the store interface), ``sqlite`` (``SQLiteStore``), ``writer`` (group commit),
``owners`` (owner liveness). ``SQLiteStore`` is imported on first use, so importing this
package costs no ``sqlite3``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DuplicateTransaction, StaleTransaction, StoreError
from .core import ACTION, COMPENSATION, Saga, SagaResult, StepContext, default_store
from .store import (COMMITTED, COMPENSATED, COMPENSATING, EXECUTING, FAILED, PREPARING,
                    SagaStore, Transition, TxRecord)

if TYPE_CHECKING:
    from .sqlite import SQLiteStore

__all__ = [
    "ACTION", "COMMITTED", "COMPENSATED", "COMPENSATING", "COMPENSATION",
    "DuplicateTransaction", "EXECUTING", "FAILED", "PREPARING", "SQLiteStore", "Saga",
    "SagaResult", "SagaStore", "StaleTransaction", "StepContext", "StoreError",
    "Transition", "TxRecord", "default_store",
]


def __getattr__(name: str) -> Any:
    if name == "SQLiteStore":
        from .sqlite import SQLiteStore
        globals()["SQLiteStore"] = SQLiteStore  # later look-ups skip this function
        return SQLiteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
