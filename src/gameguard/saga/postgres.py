"""``PostgresStore``: the saga log shared by every process on every machine (psycopg 3).

Same rows and contract as :class:`~gameguard.saga.SQLiteStore` (``store.py``); what differs:

* **Leases, not file locks.** Each store object has an owner token and a row in
  ``saga_owner`` whose ``lease_until`` (the server's clock, so hosts' clocks never matter) a
  heartbeat thread pushes ``lease`` seconds ahead every ``lease / 3``. A row belongs to its
  owner while that lease holds; once it lapses (the process died, froze, or lost the
  network) any worker's ``recover()`` may take the row over.
* **Claims that never block each other.** ``claim`` locks the row with ``FOR UPDATE SKIP
  LOCKED``: racing recoverers skip a row another one is claiming instead of queueing on it,
  and the claim is a compare-and-set on the version, so exactly one wins.
* **Fencing.** Every update names the version it expects *and* this store's owner token; a
  lapsed owner that wakes up after a take-over has both wrong, and its late write is
  refused (:class:`StaleTransaction`), whatever its clock says.
* **Group commit** as in SQLite (``writer.py``): concurrent writes share one transaction,
  sent in one round trip (psycopg pipeline mode), one WAL flush.
* **Schema** in its own PostgreSQL schema (``gameguard``), with a version table; created and
  migrated on first use under an advisory lock (several processes may start at once); a
  newer version than this code knows is refused.

JSON goes to ``json`` columns (not ``jsonb``): the text comes back exactly as the core wrote
it (key order, ``\\u0000``), as from SQLite; cast to ``jsonb`` to query it.
Nothing connects at construction: the first use connects, migrates and registers the owner,
and a bad DSN, a wrong password or a missing permission is a :class:`StoreError` saying so.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from .._registry import register
from ..errors import ConfigurationError, DuplicateTransaction, StaleTransaction, StoreError
from .readers import Readers, forks
from .store import FAILED, FINISHED, UNFINISHED, Transition, TxRecord
from .writer import GroupCommit, Op

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStore", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
_NOW = "extract(epoch from clock_timestamp())"  # the server's wall clock, seconds
_COLUMNS = ("tx_id", "saga", "status", "step", "attempt", "steps", "payload", "results",
            "errors", "trace_id", "owner", "version", "created_at", "updated_at")
_JSON = ("steps", "payload", "results", "errors")
_CLAIMABLE = ", ".join(f"'{s}'" for s in UNFINISHED + (FAILED,))
_DONE = ", ".join(f"'{s}'" for s in FINISHED)

# migration n takes the schema from version n - 1 to n; "{s}" is the quoted schema name
_MIGRATIONS = ("""
CREATE TABLE {s}.saga_tx (
    tx_id      text PRIMARY KEY,
    saga       text NOT NULL,
    status     text NOT NULL,
    step       integer NOT NULL,
    attempt    integer NOT NULL,
    steps      json NOT NULL,
    payload    json NOT NULL,
    results    json NOT NULL,
    errors     json NOT NULL,
    trace_id   text NOT NULL,
    owner      text NOT NULL,
    version    bigint NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL);
CREATE INDEX saga_tx_open ON {s}.saga_tx (saga, created_at) WHERE status IN (%(open)s);
CREATE INDEX saga_tx_done ON {s}.saga_tx (updated_at) WHERE status IN (%(done)s);
CREATE TABLE {s}.saga_owner (
    owner       text PRIMARY KEY,
    lease_until double precision NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  double precision NOT NULL);
""" % {"open": _CLAIMABLE, "done": _DONE},)

_INSERT, _UPDATE, _CLAIM = 0, 1, 2

log = logging.getLogger("gameguard.saga")


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ImportError("PostgresStore needs psycopg 3: pip install 'gameguard[postgres]'"
                          ) from exc
    return psycopg


class PostgresStore:
    """The shared durable message table on PostgreSQL. See the module docstring.

    ``PostgresStore(dsn, *, schema="gameguard", lease=10.0, retention=7 days,
    max_batch=256, max_readers=4, connect_timeout=10.0, name=None)``. ``dsn`` is a libpq
    connection string or URI. ``lease``: seconds a dead (or frozen) owner's transactions
    stay untouchable before another worker's ``recover()`` takes them over; renewed every
    ``lease / 3`` while this store is open. ``max_batch=1`` turns group commit off.
    """

    def __init__(self, dsn: str, *, schema: str = "gameguard", lease: float = 10.0,
                 retention: float = 7 * 86400.0, max_batch: int = 256, max_readers: int = 4,
                 connect_timeout: float = 10.0, name: Optional[str] = None) -> None:
        from .._checks import check_int, check_name, check_positive
        psycopg = _import_psycopg()
        if not isinstance(dsn, str) or not dsn.strip():
            raise ConfigurationError(f"dsn must be a non-empty connection string, got {dsn!r}")
        try:
            info = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"dsn is not a valid PostgreSQL connection string: "
                                     f"{exc}") from None
        if not isinstance(schema, str) or not _IDENT.match(schema):
            raise ConfigurationError(f"schema must be a lower-case SQL identifier "
                                     f"([a-z_][a-z0-9_]*, at most 63), got {schema!r}")
        self.lease = check_positive("lease", lease)
        self.retention = check_positive("retention", retention, allow_inf=True)
        self.max_batch = check_int("max_batch", max_batch, 1, 1 << 20)
        self.max_readers = check_int("max_readers", max_readers, 1, 1024)
        self.connect_timeout = check_positive("connect_timeout", connect_timeout)
        self.name = check_name(name, "postgres_store")
        self.schema = schema
        self.dsn = dsn
        info.pop("password", None)
        self._params = frozenset(info)
        where = (f"{info.get('user') or os.environ.get('PGUSER') or '?'}@"
                 f"{info.get('host') or os.environ.get('PGHOST') or 'localhost'}:"
                 f"{info.get('port') or os.environ.get('PGPORT') or 5432}/"
                 f"{info.get('dbname') or os.environ.get('PGDATABASE') or '?'}")
        self.identity = f"postgresql://{where}#{schema}"
        self.durability = "power-loss"  # until the server says otherwise (first use)
        self.closed = False
        self.available = True  # False while the server cannot be reached
        self.commits = self.writes = self.errors = self.renewals = 0
        self._s = f'"{schema}"'
        self._mu = threading.Lock()   # lazy start-up, reconnects
        self._wmu = threading.Lock()  # the write connection
        self._ready_forks = -1        # fork generation the connections belong to
        self._wconn: Any = None
        self._owner = ""
        self._stop = threading.Event()
        self._heart: Optional[threading.Thread] = None
        self._sql()
        register(self)

    def _sql(self) -> None:
        s = self._s
        cols = ", ".join(c + ("::text" if c in _JSON else "") for c in _COLUMNS)
        self._select = f"SELECT {cols} FROM {s}.saga_tx"
        self._statements = {
            _INSERT: (f"INSERT INTO {s}.saga_tx ({', '.join(_COLUMNS)}) VALUES "
                      f"({', '.join(['%s'] * len(_COLUMNS))}) ON CONFLICT (tx_id) DO NOTHING"),
            _UPDATE: (f"UPDATE {s}.saga_tx SET status = %s, step = %s, attempt = %s, "
                      f"results = COALESCE(%s::json, results), "
                      f"errors = COALESCE(%s::json, errors), version = version + 1, "
                      f"updated_at = %s WHERE tx_id = %s AND version = %s AND owner = %s"),
            # the row is locked, or skipped if a racing claimer holds it; taken only if its
            # owner is us or holds no live lease
            _CLAIM: (f"UPDATE {s}.saga_tx t SET owner = %s, version = t.version + 1, "
                     f"attempt = t.attempt + 1, updated_at = %s WHERE t.tx_id = ("
                     f"SELECT x.tx_id FROM {s}.saga_tx x WHERE x.tx_id = %s AND x.version = %s "
                     f"AND x.status IN ({_CLAIMABLE}) AND (x.owner = %s OR NOT EXISTS ("
                     f"SELECT 1 FROM {s}.saga_owner o WHERE o.owner = x.owner "
                     f"AND o.lease_until > {_NOW})) FOR UPDATE SKIP LOCKED)"),
        }

    # -- connections and start-up ---------------------------------------------------------
    def _connect(self, autocommit: bool) -> "psycopg.Connection[Any]":
        psycopg = _import_psycopg()
        # a server that stops answering must fail our calls, not hang them: TCP keepalives
        # and a bound on unacknowledged sends, unless the DSN says otherwise
        kw = {k: v for k, v in (("connect_timeout", max(1, int(round(self.connect_timeout)))),
                                ("keepalives", 1), ("keepalives_idle", 10),
                                ("keepalives_interval", 3), ("keepalives_count", 3),
                                ("tcp_user_timeout", 30000),
                                ("application_name", "gameguard-saga"))
              if k not in self._params}
        try:
            conn = psycopg.connect(self.dsn, autocommit=autocommit, **kw)
        except psycopg.Error as exc:
            self.available = False
            raise StoreError(f"saga store {self.identity}: cannot connect to PostgreSQL: "
                             f"{str(exc).strip()}") from exc
        self.available = True
        return conn  # type: ignore[no-any-return]

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(f"saga store {self.identity} is closed")
        if self._ready_forks != forks[0]:
            self._start()

    def _start(self) -> None:
        """First use (and first use in a forked child): connect, migrate, take an owner
        token and its lease, start the heartbeat."""
        with self._mu:
            if self._ready_forks == forks[0]:
                return
            conn = self._connect(autocommit=False)
            try:
                self._migrate(conn)
                self.durability = _durability(conn)
                self._owner = (f"{socket.gethostname()}-{os.getpid()}-"
                               f"{os.urandom(4).hex()}")
                conn.execute(f"INSERT INTO {self._s}.saga_owner VALUES "
                             f"(%s, {_NOW} + %s, %s, %s, {_NOW})",
                             (self._owner, self.lease, socket.gethostname(), os.getpid()))
                conn.commit()
            except BaseException:
                conn.close()
                raise
            # a forked child's copies of the parent's connections and threads are not ours
            self._wconn = conn
            self._wmu = threading.Lock()
            self._writer = GroupCommit(self._execute, self.max_batch, self.identity)
            self._readers = Readers(lambda: self._connect(autocommit=True), self.max_readers,
                                    self.connect_timeout)
            self._stop = threading.Event()
            self._heart = threading.Thread(target=self._heartbeat, daemon=True,
                                           name=f"gameguard-saga-lease:{self.identity}")
            self._heart.start()
            self._ready_forks = forks[0]

    def _migrate(self, conn: Any) -> None:
        psycopg = _import_psycopg()
        s, who = self._s, self.identity
        try:
            # one migrator at a time across processes (held until commit)
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                         (f"gameguard-migrate:{self.schema}",))
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                            (self.schema,)).fetchone() is None:
                conn.execute(f"CREATE SCHEMA {s}")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {s}.schema_version "
                         f"(component text PRIMARY KEY, version integer NOT NULL)")
            row = conn.execute(f"SELECT version FROM {s}.schema_version "
                               f"WHERE component = 'saga'").fetchone()
            have = 0 if row is None else int(row[0])
            if have > SCHEMA_VERSION:
                raise StoreError(f"saga store {who} has saga schema version {have}; this "
                                 f"gameguard knows versions up to {SCHEMA_VERSION}: upgrade "
                                 f"gameguard (nothing was changed)")
            for version in range(have + 1, SCHEMA_VERSION + 1):
                conn.execute(_MIGRATIONS[version - 1].format(s=s))
            if have < SCHEMA_VERSION:
                conn.execute(f"INSERT INTO {s}.schema_version VALUES ('saga', %s) ON CONFLICT "
                             f"(component) DO UPDATE SET version = EXCLUDED.version",
                             (SCHEMA_VERSION,))
            conn.commit()
        except psycopg.errors.InsufficientPrivilege as exc:
            conn.rollback()
            raise StoreError(f"saga store {who}: the PostgreSQL user may not create or "
                             f"change schema {self.schema!r} ({str(exc).strip()}); create it "
                             f"once as its owner (CREATE SCHEMA {self.schema} AUTHORIZATION "
                             f"<user>) or grant CREATE on the database") from exc
        except psycopg.Error as exc:
            conn.rollback()
            raise StoreError(f"saga store {who}: cannot set up schema {self.schema!r}: "
                             f"{str(exc).strip()}") from exc
        except BaseException:
            conn.rollback()
            raise

    # -- ownership ------------------------------------------------------------------------
    @property
    def owner(self) -> str:
        """This store's owner token; its lease is live before the token is handed out."""
        self._check_open()
        return self._owner

    def owner_alive(self, owner: str) -> bool:
        """Whether ``owner``'s lease still holds (by the server's clock)."""
        if owner == self.owner:
            return True
        rows = self._read(f"SELECT lease_until > {_NOW} FROM {self._s}.saga_owner "
                          f"WHERE owner = %s", (owner,))
        return bool(rows and rows[0][0])

    def _heartbeat(self) -> None:
        """Push our lease ahead every ``lease / 3`` s; log once per failing episode."""
        stop, me, conn = self._stop, self._owner, None
        good = time.monotonic()
        failing = False
        sql = (f"INSERT INTO {self._s}.saga_owner VALUES (%s, {_NOW} + %s, %s, %s, {_NOW}) "
               f"ON CONFLICT (owner) DO UPDATE SET lease_until = EXCLUDED.lease_until")
        while not stop.wait(self.lease / 3.0):
            try:
                if conn is None or conn.closed:
                    conn = self._connect(autocommit=True)
                conn.execute(sql, (me, self.lease, socket.gethostname(), os.getpid()))
                late = time.monotonic() - good
                good += late
                self.renewals += 1
                if late > self.lease:
                    log.warning("saga store %s: the lease of %s was renewed %.1fs after the "
                                "last renewal (lease %.1fs): other workers may have taken "
                                "its transactions over; their next writes are refused",
                                self.identity, me, late, self.lease)
                if failing:
                    log.warning("saga store %s: lease renewal works again", self.identity)
                failing = False
            except Exception as exc:  # keep beating: the server may come back
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                if not failing:
                    log.warning("saga store %s: cannot renew the lease of %s: %s",
                                self.identity, me, exc)
                failing = True
        if conn is not None:
            conn.close()

    # -- writes: group commit -----------------------------------------------------------------
    def insert(self, record: TxRecord) -> None:
        self._check_open()
        self._writer.write(Op(_INSERT, tuple(record), record.tx_id))

    async def insert_async(self, record: TxRecord) -> None:
        self._check_open()
        await self._writer.write_async(Op(_INSERT, tuple(record), record.tx_id))

    def update(self, t: Transition) -> None:
        self._check_open()
        self._writer.write(Op(_UPDATE, self._update_params(t), t.tx_id))

    async def update_async(self, t: Transition) -> None:
        self._check_open()
        await self._writer.write_async(Op(_UPDATE, self._update_params(t), t.tx_id))

    def _update_params(self, t: Transition) -> Tuple[Any, ...]:
        return (t.status, t.step, t.attempt, t.results_json, t.errors_json, t.at, t.tx_id,
                t.version, self._owner)

    def claim(self, tx_id: str, version: int, owner: str, at: float) -> bool:
        """Take the row over if its version is ``version`` and its owner is ``owner`` or
        holds no live lease; a row another claimer has locked right now is skipped."""
        self._check_open()
        op = Op(_CLAIM, (owner, at, tx_id, version, owner), tx_id)
        self._writer.write(op)
        return bool(op.result)

    def _execute(self, batch: List[Op]) -> None:
        psycopg = _import_psycopg()
        with self._wmu:
            try:
                conn = self._wconn
                if conn is None or conn.closed:
                    conn = self._wconn = self._connect(autocommit=False)
                # the whole batch and its COMMIT in one round trip
                with conn.pipeline():
                    cursors = [conn.execute(self._statements[op.kind], op.params)
                               for op in batch]
                    conn.commit()
                for op, cur in zip(batch, cursors):
                    n = cur.rowcount
                    if op.kind == _INSERT and n != 1:
                        op.error = DuplicateTransaction(
                            f"transaction {op.tx_id!r} already exists in the saga store "
                            f"{self.identity}; nothing was overwritten", tx_id=op.tx_id)
                    elif op.kind == _UPDATE and n != 1:
                        op.error = StaleTransaction(
                            f"transaction {op.tx_id!r} changed under this writer, or its "
                            f"lease lapsed and another worker took it over; nothing "
                            f"written", tx_id=op.tx_id)
                    elif op.kind == _CLAIM:
                        op.result = n == 1
                self.commits += 1
                self.writes += len(batch)
                self.available = True
            except (psycopg.Error, StoreError) as exc:
                self.errors += 1
                # a connection lost mid-batch may have lost the COMMIT's answer, not the
                # COMMIT; one that could not be opened (StoreError) sent nothing
                lost = isinstance(exc, psycopg.Error) and (
                    isinstance(exc, psycopg.OperationalError)
                    or not isinstance(exc, psycopg.DatabaseError))
                if lost or isinstance(exc, StoreError):
                    self.available = False
                _close_or_rollback(self._wconn)
                if self._wconn is not None and self._wconn.closed:
                    self._wconn = None
                what = "it may or may not be" if lost else "nothing of this batch was"
                err = StoreError(f"saga store {self.identity}: write failed, {what} "
                                 f"recorded: {str(exc).strip()}")
                err.__cause__ = exc
                for op in batch:
                    op.error = err
                    op.result = None
            except BaseException:
                _close_or_rollback(self._wconn)
                raise

    # -- reads ------------------------------------------------------------------------------
    def _read(self, sql: str, params: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
        self._check_open()
        psycopg = _import_psycopg()
        try:
            return self._readers.read(sql, params)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                self.available = False
            raise StoreError(f"saga store {self.identity}: read failed: "
                             f"{str(exc).strip()}") from exc

    def get(self, tx_id: str) -> Optional[TxRecord]:
        rows = self._read(self._select + " WHERE tx_id = %s", (tx_id,))
        return TxRecord(*rows[0]) if rows else None

    def scan(self, saga: Optional[str] = None,
             statuses: Sequence[str] = UNFINISHED) -> List[TxRecord]:
        if saga is None:
            rows = self._read(f"{self._select} WHERE status = ANY(%s) ORDER BY created_at",
                              (list(statuses),))
        else:
            rows = self._read(f"{self._select} WHERE status = ANY(%s) AND saga = %s "
                              f"ORDER BY created_at", (list(statuses), saga))
        return [TxRecord(*r) for r in rows]

    def counts(self, saga: Optional[str] = None) -> Dict[str, int]:
        """``{status: number of rows}``, for dashboards and tests."""
        where, params = ("", ()) if saga is None else (" WHERE saga = %s", (saga,))
        rows = self._read(f"SELECT status, COUNT(*) FROM {self._s}.saga_tx{where} "
                          f"GROUP BY status", params)
        return {s: int(n) for s, n in rows}

    def stats(self) -> Dict[str, Any]:
        """Group-commit and lease counters (the shared-backend shape health checks read)."""
        return {"decisions": self.writes, "fallback_decisions": 0, "errors": self.errors,
                "leases": self.renewals, "commits": self.commits, "writes": self.writes,
                "writes_per_commit": self.writes / self.commits if self.commits else 0.0,
                "durability": self.durability}

    # -- retention ----------------------------------------------------------------------------
    def purge(self, retention: Optional[float] = None) -> int:
        """Delete committed/compensated rows last changed more than ``retention`` seconds
        ago; ``failed`` and unfinished rows are never purged. Also forgets owners whose
        lease lapsed over an hour ago (no row can be theirs any more: a lapsed lease is as
        good as none)."""
        from .._checks import check_non_negative
        keep = self.retention if retention is None else check_non_negative("retention", retention)
        self._check_open()
        psycopg = _import_psycopg()
        cutoff = time.time() - keep

        def purge(conn: Any) -> int:
            n = conn.execute(f"DELETE FROM {self._s}.saga_tx WHERE status IN ({_DONE}) "
                             f"AND updated_at < %s", (cutoff,)).rowcount
            conn.execute(f"DELETE FROM {self._s}.saga_owner WHERE lease_until < {_NOW} - 3600")
            return int(n)
        try:
            return self._readers.use(purge)
        except psycopg.Error as exc:
            raise StoreError(f"saga store {self.identity}: purge failed: "
                             f"{str(exc).strip()}") from exc

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the heartbeat, give the lease up (so others may recover what is left at
        once), close every connection. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._ready_forks != forks[0]:
            return  # never started here (or the connections are a parent's)
        self._stop.set()
        self._writer.close(timeout=self.connect_timeout + 5.0)
        if self._heart is not None:
            self._heart.join(timeout=self.connect_timeout + 5.0)
        self._readers.close()
        with self._wmu:
            conn, self._wconn = self._wconn, None
            try:
                if conn is not None and not conn.closed:
                    conn.execute(f"UPDATE {self._s}.saga_owner SET lease_until = 0 "
                                 f"WHERE owner = %s", (self._owner,))
                    conn.commit()
            except Exception:  # the server is gone: the lease lapses by itself
                pass
            finally:
                if conn is not None:
                    conn.close()

    def __enter__(self) -> "PostgresStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.identity!r}, lease={self.lease})"


def _durability(conn: Any) -> str:
    fsync = conn.execute("SHOW fsync").fetchone()[0]
    sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
    # synchronous_commit=off acknowledges before the WAL flush: a server crash may lose it
    return "process-crash" if "off" in (fsync, sync) else "power-loss"


def _close_or_rollback(conn: Any) -> None:
    if conn is None or conn.closed:
        return
    try:
        conn.rollback()
    except Exception:
        conn.close()
