"""``SQLiteStore``: the embedded durable message table (WAL, group commit, JSON only).

Durability, precisely:

* ``synchronous="full"`` (the default): WAL mode with ``PRAGMA synchronous=FULL``; every
  commit fsyncs the write-ahead log before the writer returns, so a committed state change
  survives a process crash (SIGKILL), an OS crash and a power loss.
* ``synchronous="normal"``: WAL with ``synchronous=NORMAL``; a commit is written to the
  log (in the OS page cache) but not fsynced. It survives the *process* crashing at any
  point — the kernel still writes the page cache out — but an OS crash or power loss may
  lose the last commits (the database stays consistent: it rolls back to an earlier
  committed state, never a torn one). About 6x cheaper per commit on this machine.
* ``":memory:"`` is for tests: nothing survives the process (``durability == "none"``).

Writes go through a **group commit** (``writer.py``): concurrent callers' writes share one
SQLite transaction and one fsync; each caller returns only after the commit holding its own
write. Owner liveness is a lock file per process (``owners.py``).

Connections: one write connection (the group-commit leader's, exclusive), and a small pool
of read connections shared by all threads (at most ``max_readers``, opened on demand), so
file descriptors stay bounded however many threads come and go.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import ConfigurationError, DuplicateTransaction, StaleTransaction, StoreError
from . import owners
from .readers import Readers, forks
from .store import COMPENSATED, COMMITTED, FAILED, UNFINISHED, Transition, TxRecord
from .writer import GroupCommit, Op

__all__ = ["SQLiteStore"]

SCHEMA_VERSION = 1
_COLUMNS = ("tx_id", "saga", "status", "step", "attempt", "steps", "payload", "results",
            "errors", "trace_id", "owner", "version", "created_at", "updated_at")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS saga_tx (
    tx_id      TEXT PRIMARY KEY,
    saga       TEXT NOT NULL,
    status     TEXT NOT NULL,
    step       INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    steps      TEXT NOT NULL,
    payload    TEXT NOT NULL,
    results    TEXT NOT NULL,
    errors     TEXT NOT NULL,
    trace_id   TEXT NOT NULL,
    owner      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""
_SCHEMA_REST = """
CREATE INDEX IF NOT EXISTS saga_tx_status ON saga_tx (status, saga);
CREATE TABLE IF NOT EXISTS saga_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM saga_tx"
_INSERT = f"INSERT INTO saga_tx ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_UPDATE = ("UPDATE saga_tx SET status = ?, step = ?, attempt = ?, "
           "results = COALESCE(?, results), errors = COALESCE(?, errors), "
           "version = version + 1, updated_at = ? WHERE tx_id = ? AND version = ?")
_CLAIM = ("UPDATE saga_tx SET owner = ?, version = version + 1, attempt = attempt + 1, "
          "updated_at = ? WHERE tx_id = ? AND version = ? AND status IN (?, ?, ?, ?)")

_INSERT_OP, _UPDATE_OP, _CLAIM_OP = 0, 1, 2

class SQLiteStore:
    """The embedded durable message table. See the module docstring for durability.

    ``SQLiteStore(path, *, synchronous="full", retention=7 days, busy_timeout=5.0,
    max_batch=256, max_readers=4)``. ``path`` ``":memory:"`` is for tests and is not
    durable. A file that is not a SQLite database, a directory that cannot be written, or a
    read-only file raise :class:`StoreError` here, at construction (one small write checks
    it). ``max_batch=1`` turns group commit off (one commit per write), for measurement.
    ``max_readers`` caps the read connections, shared by all threads.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"] = "gameguard-sagas.db", *,
                 synchronous: str = "full", retention: float = 7 * 86400.0,
                 busy_timeout: float = 5.0, max_batch: int = 256,
                 max_readers: int = 4) -> None:
        from .._checks import check_int, check_positive
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigurationError(f"path must be a str or path, got {path!r}")
        path = os.fspath(path)
        if not isinstance(path, str) or not path:
            raise ConfigurationError(f"path must be a non-empty str, got {path!r}")
        if synchronous not in ("full", "normal"):
            raise ConfigurationError(
                f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        self.retention = check_positive("retention", retention, allow_inf=True)
        self.busy_timeout = check_positive("busy_timeout", busy_timeout)
        self.max_batch = check_int("max_batch", max_batch, 1, 1 << 20)
        self.max_readers = check_int("max_readers", max_readers, 1, 1024)
        self.synchronous = synchronous
        self.memory = path == ":memory:"
        self.path = path if self.memory else os.path.abspath(path)
        self.identity = f"sqlite:{self.path}" if not self.memory else f"sqlite::memory:{id(self):x}"
        self.durability = ("none" if self.memory else
                           "power-loss" if synchronous == "full" else "process-crash")
        self._lock_dir = None if self.memory else self.path + ".owners"
        self.closed = False
        self.commits = 0  # group commits made (each one fsync under synchronous="full")
        self.writes = 0   # writes they carried
        self._connections()
        self._init_schema()

    # -- connections ------------------------------------------------------------------------
    def _connections(self) -> None:
        """(Re)make the write connection, the reader pool and the write queue: at
        construction, and in a forked child (the parent's are not ours to use)."""
        self._forks = forks[0]
        self._db_mu = threading.Lock()  # the write connection (memory mode: every read too)
        self._writer = GroupCommit(self._execute, self.max_batch, self.path)
        self._readers = Readers(self._open, self.max_readers, self.busy_timeout)
        self._wconn = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open saga store {self.path!r}: {exc}") from exc
        try:
            if not self.memory:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"saga store {self.path!r}: cannot switch to WAL "
                                     f"(journal_mode is {mode!r})")
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"saga store {self.path!r} is not a usable SQLite database "
                             f"(corrupt, not a database, or unwritable): {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _init_schema(self) -> None:
        conn = self._wconn
        try:
            conn.executescript(_SCHEMA)
            cols = tuple(r[1] for r in conn.execute("PRAGMA table_info(saga_tx)"))
            if cols != _COLUMNS:
                raise StoreError(f"saga store {self.path!r}: table saga_tx has columns {cols}, "
                                 f"expected {_COLUMNS} (another program's table?)")
            conn.executescript(_SCHEMA_REST)
            row = conn.execute("SELECT value FROM saga_meta WHERE key = 'schema'").fetchone()
            if row is not None and row[0] != str(SCHEMA_VERSION):
                raise StoreError(f"saga store {self.path!r} has schema version {row[0]}, "
                                 f"this gameguard reads version {SCHEMA_VERSION}")
            # one real durable write now, so a read-only file or full disk fails here
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO saga_meta VALUES ('schema', ?)",
                         (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.close()
            raise StoreError(f"saga store {self.path!r} cannot be initialised "
                             f"(corrupt, read-only or disk full?): {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(f"saga store {self.path!r} is closed")
        if self._forks != forks[0]:  # forked: the parent's connections are not ours
            self._connections()

    def _read(self, sql: str, params: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
        self._check_open()
        try:
            if self.memory:  # one database per connection: reads share the write one
                with self._db_mu:
                    return self._wconn.execute(sql, params).fetchall()
            return self._readers.read(sql, params)
        except sqlite3.Error as exc:  # (the pool's own StoreErrors pass as they are)
            raise StoreError(f"saga store {self.path!r}: read failed: {exc}") from exc

    # -- identity and ownership -----------------------------------------------------------
    @property
    def owner(self) -> str:
        return owners.token(self._lock_dir)

    def owner_alive(self, owner: str) -> bool:
        """``True`` while the process holding ``owner`` runs (it holds a file lock named after
        the token in ``<path>.owners/``; the kernel drops it when the process dies, even on
        SIGKILL). Processes sharing the file must share a kernel (one host)."""
        if owner == self.owner:
            return True
        if self._lock_dir is None:
            return False  # memory store: only this process exists
        return owners.alive(self._lock_dir, owner)

    # -- writes: group commit ---------------------------------------------------------------
    def insert(self, record: TxRecord) -> None:
        self._check_open()
        self._writer.write(Op(_INSERT_OP, _insert_params(record), record.tx_id))

    async def insert_async(self, record: TxRecord) -> None:
        self._check_open()
        await self._writer.write_async(Op(_INSERT_OP, _insert_params(record), record.tx_id))

    def update(self, t: Transition) -> None:
        self._check_open()
        self._writer.write(Op(_UPDATE_OP, _update_params(t), t.tx_id))

    async def update_async(self, t: Transition) -> None:
        self._check_open()
        await self._writer.write_async(Op(_UPDATE_OP, _update_params(t), t.tx_id))

    def claim(self, tx_id: str, version: int, owner: str, at: float) -> bool:
        self._check_open()
        op = Op(_CLAIM_OP, (owner, at, tx_id, version, *UNFINISHED, FAILED), tx_id)
        self._writer.write(op)
        return bool(op.result)

    def _execute(self, batch: List[Op]) -> None:
        conn = self._wconn
        with self._db_mu:
            try:
                # one write: autocommit makes the statement its own transaction (as durable,
                # two fewer round trips); several: one explicit transaction, one fsync
                single = len(batch) == 1
                if not single:
                    conn.execute("BEGIN IMMEDIATE")
                for op in batch:
                    try:
                        if op.kind == _INSERT_OP:
                            conn.execute(_INSERT, op.params)
                        elif op.kind == _UPDATE_OP:
                            if conn.execute(_UPDATE, op.params).rowcount != 1:
                                op.error = StaleTransaction(
                                    f"transaction {op.tx_id!r} changed under this writer "
                                    f"(taken over by recover()?); nothing written",
                                    tx_id=op.tx_id)
                        else:
                            op.result = conn.execute(_CLAIM, op.params).rowcount == 1
                    except sqlite3.IntegrityError:  # statement-level: the rest of the batch goes on
                        op.error = DuplicateTransaction(
                            f"transaction {op.tx_id!r} already exists in the saga store "
                            f"{self.path!r}; nothing was overwritten", tx_id=op.tx_id)
                if not single:
                    conn.execute("COMMIT")
                self.commits += 1
                self.writes += len(batch)
            except sqlite3.Error as exc:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                err = StoreError(f"saga store {self.path!r}: write failed, nothing of this "
                                 f"batch was recorded: {exc}")
                err.__cause__ = exc
                for op in batch:
                    op.error = err
                    op.result = None
            except BaseException:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:  # pragma: no cover
                    pass
                raise

    # -- reads ------------------------------------------------------------------------------
    def get(self, tx_id: str) -> Optional[TxRecord]:
        rows = self._read(_SELECT + " WHERE tx_id = ?", (tx_id,))
        return TxRecord(*rows[0]) if rows else None

    def scan(self, saga: Optional[str] = None,
             statuses: Sequence[str] = UNFINISHED) -> List[TxRecord]:
        statuses = tuple(statuses)
        marks = ", ".join("?" * len(statuses))
        if saga is None:
            rows = self._read(f"{_SELECT} WHERE status IN ({marks}) ORDER BY created_at",
                              statuses)
        else:
            rows = self._read(f"{_SELECT} WHERE status IN ({marks}) AND saga = ? "
                              f"ORDER BY created_at", statuses + (saga,))
        return [TxRecord(*r) for r in rows]

    def counts(self, saga: Optional[str] = None) -> Dict[str, int]:
        """``{status: number of rows}``, for dashboards and tests."""
        if saga is None:
            rows = self._read("SELECT status, COUNT(*) FROM saga_tx GROUP BY status")
        else:
            rows = self._read("SELECT status, COUNT(*) FROM saga_tx WHERE saga = ? "
                              "GROUP BY status", (saga,))
        return {s: n for s, n in rows}

    def stats(self) -> Dict[str, Any]:
        """Group-commit counters: commits made, writes carried, writes per commit."""
        return {"commits": self.commits, "writes": self.writes,
                "writes_per_commit": self.writes / self.commits if self.commits else 0.0,
                "durability": self.durability}

    # -- retention --------------------------------------------------------------------------
    def purge(self, retention: Optional[float] = None) -> int:
        """Delete committed/compensated rows last changed more than ``retention`` seconds
        ago (wall clock); ``failed`` and unfinished rows are never purged. Also removes the
        lock files of dead owners that no unfinished or failed row names."""
        from .._checks import check_non_negative
        keep = self.retention if retention is None else check_non_negative("retention", retention)
        self._check_open()
        cutoff = time.time() - keep
        deleted = self._exclusive(
            "DELETE FROM saga_tx WHERE status IN (?, ?) AND updated_at < ?",
            (COMMITTED, COMPENSATED, cutoff))
        if self._lock_dir is not None and owners.LOCKS:
            self._sweep_owner_files()
        return deleted

    def _exclusive(self, sql: str, params: Tuple[Any, ...]) -> int:
        """One statement in its own durable transaction, serialised with group commits."""
        with self._db_mu:
            conn = self._wconn
            try:
                conn.execute("BEGIN IMMEDIATE")
                n = conn.execute(sql, params).rowcount
                conn.execute("COMMIT")
                return int(n)
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"saga store {self.path!r}: write failed: {exc}") from exc

    def _sweep_owner_files(self) -> None:
        assert self._lock_dir is not None
        live = {r[0] for r in self._read(
            "SELECT DISTINCT owner FROM saga_tx WHERE status IN (?, ?, ?, ?)",
            (*UNFINISHED, FAILED))}
        live.add(self.owner)
        owners.sweep(self._lock_dir, live)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close every connection and stop the writer thread. Idempotent."""
        self.closed = True
        self._writer.close(timeout=self.busy_timeout + 5.0)
        self._readers.close()
        with self._db_mu:
            try:
                self._wconn.close()
            except sqlite3.Error:  # pragma: no cover
                pass

    def __enter__(self) -> "SQLiteStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SQLiteStore({self.path!r}, synchronous={self.synchronous!r}, "
                f"durability={self.durability!r})")


def _insert_params(r: TxRecord) -> Tuple[Any, ...]:
    return (r.tx_id, r.saga, r.status, r.step, r.attempt, r.steps_json, r.payload_json,
            r.results_json, r.errors_json, r.trace_id, r.owner, r.version, r.created_at,
            r.updated_at)


def _update_params(t: Transition) -> Tuple[Any, ...]:
    return (t.status, t.step, t.attempt, t.results_json, t.errors_json, t.at, t.tx_id,
            t.version)
