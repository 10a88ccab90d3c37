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

Writes go through a **group commit**: a caller (thread) that finds no commit in progress
becomes the leader, takes every queued write (up to ``max_batch``), runs them in one SQLite
transaction with one fsync, and wakes their callers; callers arriving meanwhile queue up
for the next batch. A single caller pays one commit per write (no hand-off); N concurrent
sagas share commits. ``run_async`` hands writes to a writer thread, so the event loop never
waits on an fsync. Each caller still returns only after the commit holding its own write.

Threads: the leader writes on the one write connection (leadership is exclusive); reads use
one connection per thread (``sqlite3`` connections are not shared across threads).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sqlite3
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import ConfigurationError
from .store import (COMPENSATED, COMMITTED, FAILED, UNFINISHED, DuplicateTransaction,
                    StaleTransaction, StoreError, Transition, TxRecord)

try:  # POSIX: owner liveness by file lock (released by the kernel when a process dies)
    import fcntl
except ImportError:  # pragma: no cover - Windows: pid check instead
    fcntl = None  # type: ignore[assignment]

__all__ = ["SQLiteStore"]

log = logging.getLogger("gameguard.saga")

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


class _Op:
    """One queued write and how its caller is told it is done."""

    __slots__ = ("kind", "params", "tx_id", "error", "result", "lead", "done", "waiter", "loop",
                 "fut")

    def __init__(self, kind: int, params: Tuple[Any, ...], tx_id: str) -> None:
        self.kind = kind
        self.params = params
        self.tx_id = tx_id
        self.error: Optional[BaseException] = None
        self.result: Any = None
        self.lead = False
        self.done = False
        self.waiter: Any = None  # a held threading lock, released when done (sync callers)
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.fut: Optional["asyncio.Future[None]"] = None


def _wake_futures(futs: List["asyncio.Future[None]"]) -> None:
    for f in futs:
        if not f.done():  # a cancelled caller's future; its write still committed or not
            f.set_result(None)


_forks = [0]  # bumped in a forked child: stores then reopen their connections
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


# -- owner tokens and liveness (process-wide: one token and lock per database per process) --
_owner_mu = threading.Lock()
_owners: Dict[str, Tuple[int, str, Any]] = {}  # lock dir -> (pid, token, open lock file)


def _owner_token(lock_dir: Optional[str]) -> str:
    pid = os.getpid()
    key = lock_dir or ""
    with _owner_mu:
        held = _owners.get(key)
        if held is not None and held[0] == pid:
            return held[1]
        token = f"{socket.gethostname()}-{pid}-{os.urandom(4).hex()}"
        f = None
        if lock_dir is not None and fcntl is not None:
            os.makedirs(lock_dir, exist_ok=True)
            f = open(os.path.join(lock_dir, token), "a+b")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # new file: never contended
        _owners[key] = (pid, token, f)  # after fork the child makes its own token and lock
        return token


def _lock_file_alive(lock_dir: str, token: str) -> bool:
    if os.sep in token or token.startswith("."):
        return False
    try:
        fd = os.open(os.path.join(lock_dir, token), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True  # its owner still holds it: the process is running
        raise
    finally:
        os.close(fd)  # closing drops our lock, if we took it
    return False


def _pid_alive(token: str) -> bool:  # pragma: no cover - only without fcntl
    try:
        host, pid, _ = token.rsplit("-", 2)
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class SQLiteStore:
    """The embedded durable message table. See the module docstring for durability.

    ``SQLiteStore(path, *, synchronous="full", retention=7 days, busy_timeout=5.0,
    max_batch=256)``. ``path`` ``":memory:"`` is for tests and is not durable. A file that
    is not a SQLite database, a directory that cannot be written, or a read-only file
    raise :class:`StoreError` here, at construction (one small write checks it).
    ``max_batch=1`` turns group commit off (one commit per write), for measurement.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"] = "gameguard-sagas.db", *,
                 synchronous: str = "full", retention: float = 7 * 86400.0,
                 busy_timeout: float = 5.0, max_batch: int = 256) -> None:
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
        self.synchronous = synchronous
        self.memory = path == ":memory:"
        self.path = path if self.memory else os.path.abspath(path)
        self.identity = f"sqlite:{self.path}" if not self.memory else f"sqlite::memory:{id(self):x}"
        self.durability = ("none" if self.memory else
                           "power-loss" if synchronous == "full" else "process-crash")
        self._lock_dir = None if self.memory else self.path + ".owners"
        self._forks = _forks[0]
        self._closed = False
        self._local = threading.local()
        self._conns: List[sqlite3.Connection] = []
        self._conns_mu = threading.Lock()
        self._db_mu = threading.Lock()  # the write connection (memory mode: every read too)
        # group commit
        self._mu = threading.Lock()
        self._queue: List[_Op] = []
        self._leading = False
        self._writer_go = False
        self._writer_cv = threading.Condition(self._mu)
        self._writer: Optional[threading.Thread] = None
        self.commits = 0  # group commits made (each one fsync under synchronous="full")
        self.writes = 0   # writes they carried
        self._wconn = self._open(writer=True)
        self._init_schema()

    # -- connections ------------------------------------------------------------------------
    def _open(self, writer: bool) -> sqlite3.Connection:
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
        with self._conns_mu:
            self._conns.append(conn)
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

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "forks", None) != _forks[0]:
            self._check_open()
            conn = self._open(writer=False)
            self._local.conn = conn
            self._local.forks = _forks[0]
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"saga store {self.path!r} is closed")
        if self._forks != _forks[0]:  # forked: the parent's connections are not ours
            self._after_fork()

    def _after_fork(self) -> None:
        self._forks = _forks[0]
        self._conns = []
        self._local = threading.local()
        self._mu = threading.Lock()
        self._db_mu = threading.Lock()
        self._queue = []
        self._leading = False
        self._writer_go = False
        self._writer_cv = threading.Condition(self._mu)
        self._writer = None
        self._wconn = self._open(writer=True)

    def _read(self, sql: str, params: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
        try:
            if self.memory:
                self._check_open()
                with self._db_mu:
                    return self._wconn.execute(sql, params).fetchall()
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"saga store {self.path!r}: read failed: {exc}") from exc

    # -- identity and ownership -----------------------------------------------------------
    @property
    def owner(self) -> str:
        return _owner_token(self._lock_dir)

    def owner_alive(self, owner: str) -> bool:
        """``True`` while the process holding ``owner`` runs (it holds a file lock named after
        the token in ``<path>.owners/``; the kernel drops it when the process dies, even on
        SIGKILL). Processes sharing the file must share a kernel (one host)."""
        if owner == self.owner:
            return True
        if self._lock_dir is None:
            return False  # memory store: only this process exists
        if fcntl is None:  # pragma: no cover
            return _pid_alive(owner)
        return _lock_file_alive(self._lock_dir, owner)

    # -- writes: group commit ---------------------------------------------------------------
    def insert(self, record: TxRecord) -> None:
        self._write(_Op(_INSERT_OP, _insert_params(record), record.tx_id))

    async def insert_async(self, record: TxRecord) -> None:
        await self._write_async(_Op(_INSERT_OP, _insert_params(record), record.tx_id))

    def update(self, t: Transition) -> None:
        self._write(_Op(_UPDATE_OP, (t.status, t.step, t.attempt, t.results_json,
                                     t.errors_json, t.at, t.tx_id, t.version), t.tx_id))

    async def update_async(self, t: Transition) -> None:
        await self._write_async(_Op(_UPDATE_OP, (t.status, t.step, t.attempt, t.results_json,
                                                 t.errors_json, t.at, t.tx_id, t.version),
                                    t.tx_id))

    def claim(self, tx_id: str, version: int, owner: str, at: float) -> bool:
        op = _Op(_CLAIM_OP, (owner, at, tx_id, version, *UNFINISHED, FAILED), tx_id)
        self._write(op)
        return bool(op.result)

    def _write(self, op: _Op) -> None:
        self._check_open()
        waiter = threading.Lock()
        waiter.acquire()
        op.waiter = waiter
        with self._mu:
            self._queue.append(op)
            lead = not self._leading
            if lead:
                self._leading = True
        if not lead:
            waiter.acquire()  # released when our write is committed, or leadership is ours
            if not op.lead:
                if op.error is not None:
                    raise op.error
                return
        self._lead(op)
        if op.error is not None:
            raise op.error

    def _lead(self, own: _Op) -> None:
        """Commit batches until one held ``own``, then pass leadership on (also when
        interrupted: nobody is left waiting on a leader that is gone)."""
        try:
            while not own.done:
                with self._mu:
                    batch = self._queue[:self.max_batch]
                    del self._queue[:self.max_batch]
                self._commit(batch)
        finally:
            self._pass_leadership()

    def _pass_leadership(self) -> None:
        with self._mu:
            if not self._queue:
                self._leading = False
                return
            for nxt in self._queue:
                if nxt.waiter is not None:  # a blocked thread: it leads the next batch
                    nxt.lead = True
                    break
            else:
                self._writer_go = True  # only async writes wait: the writer thread leads
                self._ensure_writer()
                self._writer_cv.notify()
                return
        nxt.waiter.release()

    async def _write_async(self, op: _Op) -> None:
        self._check_open()
        loop = asyncio.get_running_loop()
        op.loop = loop
        op.fut = fut = loop.create_future()
        with self._mu:
            self._queue.append(op)
            if not self._leading:
                self._leading = True
                self._writer_go = True
                self._ensure_writer()
                self._writer_cv.notify()
        # A cancellation here leaves the write queued: it commits or not, and either row
        # state is consistent; the version fence stops anything stale afterwards.
        await fut
        if op.error is not None:
            raise op.error

    def _ensure_writer(self) -> None:  # called with self._mu held
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._writer_main, daemon=True,
                                            name=f"gameguard-saga-writer:{self.path}")
            self._writer.start()

    def _writer_main(self) -> None:
        while True:
            with self._mu:
                while not self._writer_go:
                    if self._closed:
                        return
                    self._writer_cv.wait()
                self._writer_go = False
            while True:  # lead until the queue is empty (nobody else waits on us)
                with self._mu:
                    batch = self._queue[:self.max_batch]
                    del self._queue[:self.max_batch]
                    if not batch:
                        self._leading = False
                        break
                try:
                    self._commit(batch)
                except BaseException:  # pragma: no cover - its callers got a StoreError
                    log.exception("saga store %r: writer thread", self.path)

    def _commit(self, batch: List[_Op]) -> None:
        """Run ``batch`` in one SQLite transaction (one fsync) and tell every caller."""
        try:
            self._execute(batch)
        except BaseException as exc:  # not a database error: KeyboardInterrupt, MemoryError
            for op in batch:
                if op.error is None:
                    op.error = StoreError(f"saga store {self.path!r}: the commit was "
                                          f"interrupted ({type(exc).__name__}); this write "
                                          f"may or may not be recorded")
            raise
        finally:
            self._wake(batch)

    def _execute(self, batch: List[_Op]) -> None:
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

    @staticmethod
    def _wake(batch: List[_Op]) -> None:
        """Tell the callers: threads directly, each event loop once for all its futures."""
        by_loop: Dict[Any, List[Any]] = {}
        for op in batch:
            op.done = True
            if op.waiter is not None:
                op.waiter.release()
            else:
                by_loop.setdefault(op.loop, []).append(op.fut)
        for loop, futs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_wake_futures, futs)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

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
        if self._lock_dir is not None and fcntl is not None:
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
        try:
            names = os.listdir(self._lock_dir)
        except FileNotFoundError:
            return
        live = {r[0] for r in self._read(
            "SELECT DISTINCT owner FROM saga_tx WHERE status IN (?, ?, ?, ?)",
            (*UNFINISHED, FAILED))}
        mine = self.owner
        for name in names:
            if name == mine or name in live:
                continue
            if not _lock_file_alive(self._lock_dir, name):
                try:
                    os.unlink(os.path.join(self._lock_dir, name))
                except FileNotFoundError:
                    pass

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close every connection and stop the writer thread. Idempotent."""
        with self._mu:
            self._closed = True
            self._writer_cv.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=self.busy_timeout + 5.0)
        with self._conns_mu:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
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
