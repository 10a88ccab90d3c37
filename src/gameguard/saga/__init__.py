"""Saga steps: cross-server transactions that are never lost and never applied twice.

A :class:`Saga` is a sequence of steps, each with a compensation; every transaction is
recorded in a durable local message table (:class:`SQLiteStore` by default) before each
action starts, so after any crash :meth:`Saga.recover` ends it committed or compensated.
Steps get a :class:`StepContext` whose ``idempotency_key`` lets the remote side apply each
effect once. See ``docs/saga.md``.
"""
from __future__ import annotations

from .core import ACTION, COMPENSATION, Saga, SagaResult, StepContext
from .sqlite import SQLiteStore
from .store import (COMMITTED, COMPENSATED, COMPENSATING, EXECUTING, FAILED, PREPARING,
                    DuplicateTransaction, SagaStore, StaleTransaction, StoreError, Transition,
                    TxRecord)

__all__ = [
    "Saga", "SagaResult", "StepContext", "SQLiteStore", "SagaStore", "TxRecord", "Transition",
    "DuplicateTransaction", "StaleTransaction", "StoreError", "ACTION", "COMPENSATION",
    "PREPARING", "EXECUTING", "COMPENSATING", "COMMITTED", "COMPENSATED", "FAILED",
]
