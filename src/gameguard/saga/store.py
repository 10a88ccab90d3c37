"""The saga store interface: what any durable message table (SQLite, PostgreSQL) provides.

One row per transaction. The saga core (``core.py``) is the only writer of a row's
contents and keeps every rule of the state machine; a store only has to persist rows
atomically, fence concurrent writers, and say whether a row's owner is still alive. The
contract, in the order the core relies on it:

* **JSON text only.** The core hands the store JSON *text* (``payload_json``,
  ``results_json``, ``errors_json``, ``steps_json``) that it has already encoded; a store
  never sees Python objects and never pickles. A PostgreSQL store passes the text to
  ``jsonb`` columns.
* **Durable before return.** :meth:`SagaStore.insert`, :meth:`~SagaStore.update` and
  :meth:`~SagaStore.claim` return only once the write is committed at the store's durability
  level (``SagaStore.durability`` says which): the core starts the next action only
  after that. The ``*_async`` variants give the same guarantee without blocking the event
  loop for longer than a short commit. Stores may commit several callers' writes together
  (group commit); each caller still waits for the commit that contains its write.
* **Atomic and fenced.** Every row carries a ``version``. ``update`` and ``claim`` name the
  version they expect and bump it by one; a mismatch (someone else wrote the row since)
  raises :class:`StaleTransaction` / returns ``False`` and changes nothing. ``insert`` of an
  existing ``tx_id`` raises :class:`DuplicateTransaction` and changes nothing.
* **Ownership.** ``owner`` is this process's token, written on insert and claim.
  ``owner_alive(token)`` answers whether the process holding ``token`` may still be running
  transactions (SQLite: a file lock the owner holds for its lifetime; PostgreSQL: a lease
  its heartbeat renews, fenced by owner and version on every write), so ``recover()`` never
  takes over a transaction a live process is driving.
* **Retention.** ``purge()`` deletes finished rows (``committed`` / ``compensated``) older
  than the retention period; ``failed`` rows stay until an operator acts.

``PostgresStore`` (``postgres.py``) implements the same methods over the same columns; see
``docs/saga.md``.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

from ..errors import DuplicateTransaction, StaleTransaction, StoreError

__all__ = [
    "SagaStore", "TxRecord", "Transition", "DuplicateTransaction", "StaleTransaction",
    "StoreError", "PREPARING", "EXECUTING", "COMPENSATING", "COMMITTED", "COMPENSATED",
    "FAILED", "UNFINISHED", "FINISHED", "STATUSES",
]
# The errors live in gameguard.errors (one exception tree); re-exported here, where a store
# implementation looks for them.

# The seed's state machine (docs/saga.md has the diagram):
#   preparing -> executing -> committed
#   preparing | executing -> compensating -> compensated | failed;  failed -> compensating
PREPARING = "preparing"        # recorded; the first step may be in flight, none completed
EXECUTING = "executing"        # >= 1 step completed; `step` is the one in flight or next
COMPENSATING = "compensating"  # going backward; `step` is the compensation in flight or next
COMMITTED = "committed"        # every step completed
COMPENSATED = "compensated"    # every compensation completed
FAILED = "failed"              # a compensation still failed after its retries (operator)
STATUSES = (PREPARING, EXECUTING, COMPENSATING, COMMITTED, COMPENSATED, FAILED)
UNFINISHED = (PREPARING, EXECUTING, COMPENSATING)
FINISHED = (COMMITTED, COMPENSATED)


class TxRecord(NamedTuple):
    """One transaction row as stored (a row is a tuple: ``TxRecord(*row)``). JSON fields
    hold text; the properties decode them.

    ``step`` is the index (into ``steps``) of the step whose action (status preparing /
    executing) or compensation (compensating / failed) is in flight or next; ``attempt`` the
    number of the attempt of it that may have run (0 = none yet).
    """

    tx_id: str
    saga: str
    status: str
    step: int
    attempt: int
    steps_json: str
    payload_json: str
    results_json: str
    errors_json: str
    trace_id: str
    owner: str
    version: int
    created_at: float
    updated_at: float

    @property
    def steps(self) -> List[str]:
        return list(json.loads(self.steps_json))

    @property
    def payload(self) -> Any:
        return json.loads(self.payload_json)

    @property
    def results(self) -> Dict[str, Any]:
        return dict(json.loads(self.results_json))

    @property
    def errors(self) -> List[Dict[str, Any]]:
        """What went wrong, oldest first: ``{"step", "phase", "attempt", "error", "at"}``."""
        return list(json.loads(self.errors_json))

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class Transition(NamedTuple):
    """One state change of one row, applied iff the row's version is still ``version``.

    ``results_json`` / ``errors_json`` of ``None`` leave that column unchanged.
    """

    tx_id: str
    version: int
    status: str
    step: int
    attempt: int
    results_json: Optional[str]
    errors_json: Optional[str]
    at: float


@runtime_checkable
class SagaStore(Protocol):
    """What :class:`~gameguard.saga.Saga` needs from a durable message table."""

    #: Identifies the underlying database (a resolved path, a DSN without password):
    #: two store objects with equal ``identity`` share transactions.
    identity: str
    #: ``"power-loss"``, ``"process-crash"`` or ``"none"`` (``:memory:``).
    durability: str

    @property
    def owner(self) -> str:
        """This process's owner token (held alive until the process exits)."""
        ...

    def owner_alive(self, owner: str) -> bool:
        """Whether the process holding ``owner`` may still be driving its transactions."""
        ...

    def insert(self, record: TxRecord) -> None:
        """Durably create ``record``; :class:`DuplicateTransaction` if ``tx_id`` exists."""
        ...

    async def insert_async(self, record: TxRecord) -> None: ...

    def update(self, transition: Transition) -> None:
        """Durably apply ``transition``; :class:`StaleTransaction` on a version mismatch."""
        ...

    async def update_async(self, transition: Transition) -> None: ...

    def claim(self, tx_id: str, version: int, owner: str, at: float) -> bool:
        """Take over an unfinished or failed row: set ``owner``, bump ``version`` and
        ``attempt`` (the attempt in flight counts as made). ``False`` if the row moved on."""
        ...

    def get(self, tx_id: str) -> Optional[TxRecord]: ...

    def scan(self, saga: Optional[str] = None,
             statuses: Sequence[str] = UNFINISHED) -> List[TxRecord]:
        """Rows of ``saga`` (all sagas if ``None``) in ``statuses``, oldest first."""
        ...

    def purge(self, retention: Optional[float] = None) -> int:
        """Delete committed/compensated rows finished more than ``retention`` seconds ago
        (the store's default if ``None``); return how many. Never deletes failed rows."""
        ...

    def close(self) -> None: ...
