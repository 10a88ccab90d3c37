"""Saga steps: cross-server transactions that are never lost and never applied twice.

A :class:`Saga` is a sequence of steps, each with a compensation; every transaction is
recorded in a durable local message table (:class:`SQLiteStore` by default) before each
action starts, so after any crash :meth:`Saga.recover` ends it committed or compensated.
Steps get a :class:`StepContext` whose ``idempotency_key`` lets the remote side apply each
effect once. See ``docs/saga.md``.

Modules: ``core`` (``Saga``), ``runner`` (the state machine), ``recovery``, ``records``,
``store`` (the store interface), ``sqlite`` (``SQLiteStore``), ``writer`` (group commit),
``owners`` (owner liveness), ``postgres`` (``PostgresStore``, shared by many machines),
``barrier`` (``Barrier``, the callee side of exactly-once), ``cli`` (``python -m gameguard
sagas``). The stores and the barrier are imported on first use, so importing this package
costs no ``sqlite3`` and no ``psycopg``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DuplicateTransaction, StaleTransaction, StoreError
from .core import ACTION, COMPENSATION, Saga, SagaResult, StepContext, default_store
from .store import (COMMITTED, COMPENSATED, COMPENSATING, EXECUTING, FAILED, PREPARING,
                    SagaStore, Transition, TxRecord)

if TYPE_CHECKING:
    from .barrier import Barrier
    from .postgres import PostgresStore
    from .sqlite import SQLiteStore

__all__ = [
    "ACTION", "Barrier", "COMMITTED", "COMPENSATED", "COMPENSATING", "COMPENSATION",
    "DuplicateTransaction", "EXECUTING", "FAILED", "PREPARING", "PostgresStore",
    "SQLiteStore", "Saga", "SagaResult", "SagaStore", "StaleTransaction", "StepContext",
    "StoreError", "Transition", "TxRecord", "default_store",
]


#: loaded on first use: sqlite3 and psycopg only for those who use them
_LAZY = {"SQLiteStore": "sqlite", "PostgresStore": "postgres", "Barrier": "barrier"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
