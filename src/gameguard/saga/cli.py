"""``python -m gameguard sagas``: look at the transactions a saga store holds, retry one.

    python -m gameguard sagas --db PATH | --dsn DSN [--schema S] list [--saga NAME]
    python -m gameguard sagas ... show TX
    python -m gameguard sagas ... retry TX --saga-object MODULE:ATTR [--include-failed]

``list`` shows unfinished and failed transactions (step, attempt, last error, owner and
whether it is alive); ``show`` one transaction's steps, payload, results and every recorded
error. ``retry`` needs the saga's code (its steps are functions), so it imports the
``Saga`` object named by ``--saga-object`` and drives the transaction through
``saga.retry(tx, include_failed=...)``, the same path ``recover()`` takes. A missing file, a
file that is not a saga store, or an unreachable database is a one-line error (exit 2),
never a new empty store.

Exit codes: 0 done; 1 the transaction is unknown or could not be retried; 2 bad usage or
no usable store.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, List, Optional, TextIO, Tuple

from ..errors import SagaError
from .store import FAILED, UNFINISHED

if TYPE_CHECKING:
    from .store import SagaStore, TxRecord

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sagas`` subcommand to ``python -m gameguard``'s subparsers."""
    p = subparsers.add_parser(
        "sagas", help="list, show and retry saga transactions in a store",
        description="Inspect the unfinished and failed transactions of a saga store "
                    "(SQLite file or PostgreSQL) and retry one.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", metavar="PATH", help="a SQLite saga store file")
    where.add_argument("--dsn", metavar="DSN", help="a PostgreSQL connection string")
    p.add_argument("--schema", default="gameguard", help="PostgreSQL schema (default: gameguard)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="unfinished and failed transactions")
    ls.add_argument("--saga", metavar="NAME", help="only this saga's transactions")
    show = sub.add_parser("show", help="one transaction in full")
    show.add_argument("tx", metavar="TX")
    retry = sub.add_parser("retry", help="drive one transaction to its end, as recover() would")
    retry.add_argument("tx", metavar="TX")
    retry.add_argument("--saga-object", metavar="MODULE:ATTR", required=True,
                       help="where your code defines the Saga (its steps are needed)")
    retry.add_argument("--include-failed", action="store_true",
                       help="also retry a 'failed' transaction (once the cause is fixed)")
    return p  # type: ignore[no-any-return]


def run(args: argparse.Namespace, out: Optional[TextIO] = None,
        err: Optional[TextIO] = None) -> int:
    """Carry out a parsed ``sagas`` command; the exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        store = open_store(args.db, args.dsn, args.schema)
    except SagaError as exc:
        print(f"error: {exc}", file=err)
        return 2
    try:
        if args.action == "list":
            return _list(store, args.saga, out)
        if args.action == "show":
            return _show(store, args.tx, out, err)
        return _retry(store, args, out, err)
    except SagaError as exc:
        print(f"error: {exc}", file=err)
        return 1
    finally:
        store.close()


def open_store(db: Optional[str], dsn: Optional[str], schema: str) -> SagaStore:
    """The store named on the command line, refusing to create one where there is none."""
    if dsn is not None:
        from .postgres import PostgresStore
        store = PostgresStore(dsn, schema=schema)
        store.get("")  # connect and check the schema now: a bad DSN fails here, clearly
        return store
    assert db is not None
    from .sqlite import SQLiteStore
    _check_sqlite_file(db)
    return SQLiteStore(db)


def _check_sqlite_file(path: str) -> None:
    import sqlite3
    from ..errors import StoreError
    if not os.path.exists(path):
        raise StoreError(f"no saga store at {path!r} (no such file)")
    if not os.path.isfile(path):
        raise StoreError(f"{path!r} is not a file")
    try:
        conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                 "AND name = 'saga_tx'").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path!r} is not a SQLite database ({exc})") from None
    if found is None:
        raise StoreError(f"{path!r} is a SQLite database but not a gameguard saga store "
                         f"(it has no saga_tx table)")


def _age(at: float) -> str:
    s = max(0.0, time.time() - at)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 \
        else f"{s / 3600:.1f}h ago"


def _where(rec: TxRecord) -> str:
    names = rec.steps
    return names[rec.step] if 0 <= rec.step < len(names) else "-"


def _owner(store: SagaStore, rec: TxRecord) -> str:
    return f"{rec.owner} ({'alive' if store.owner_alive(rec.owner) else 'gone'})"


def _list(store: SagaStore, saga: Optional[str], out: TextIO) -> int:
    rows = store.scan(saga, UNFINISHED + (FAILED,))
    if not rows:
        print(f"no unfinished or failed transactions in {store.identity}", file=out)
        return 0
    print(f"{len(rows)} unfinished or failed transaction(s) in {store.identity}", file=out)
    head = ("TX", "SAGA", "STATUS", "STEP", "ATTEMPT", "ERRORS", "UPDATED", "OWNER")
    table: List[Tuple[str, ...]] = [head]
    for r in rows:
        table.append((r.tx_id, r.saga, r.status, _where(r), str(r.attempt),
                      str(len(r.errors)), _age(r.updated_at), _owner(store, r)))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
    last = [(r.tx_id, r.errors[-1]) for r in rows if r.errors]
    for tx, e in last:
        print(f"{tx}: last error at {e['step']}/{e['phase']} attempt {e['attempt']}: "
              f"{e['error']}", file=out)
    return 0


def _show(store: SagaStore, tx: str, out: TextIO, err: TextIO) -> int:
    rec = store.get(tx)
    if rec is None:
        print(f"error: no transaction {tx!r} in {store.identity}", file=err)
        return 1
    print(f"transaction {rec.tx_id} of saga {rec.saga!r}: {rec.status}", file=out)
    print(f"  trace {rec.trace_id}; owner {_owner(store, rec)}; version {rec.version}; "
          f"created {_age(rec.created_at)}, updated {_age(rec.updated_at)}", file=out)
    results = rec.results
    backward = rec.status not in ("preparing", "executing", "committed")
    for i, name in enumerate(rec.steps):
        if name in results:
            mark = "done" if not backward or i < rec.step else "done, undone"
        else:
            mark = "pending"
        if i == rec.step and rec.status in UNFINISHED + (FAILED,):
            phase = "compensation" if backward else "action"
            mark = f"{phase} in flight or next, attempt {rec.attempt}"
        print(f"  step {i} {name}: {mark}", file=out)
    print(f"  payload {json.dumps(rec.payload)}", file=out)
    print(f"  results {json.dumps(results)}", file=out)
    for e in rec.errors:
        print(f"  error {e['step']}/{e['phase']} attempt {e['attempt']} "
              f"({_age(e['at'])}): {e['error']}", file=out)
    return 0


def _retry(store: SagaStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .core import Saga
    saga = _load(args.saga_object)
    if not isinstance(saga, Saga):
        raise SagaError(f"{args.saga_object} is {type(saga).__name__}, not a Saga")
    if saga.store.identity != store.identity:
        raise SagaError(f"saga {saga.name!r} from {args.saga_object} records in "
                        f"{saga.store.identity}, not in {store.identity}")
    if saga._has_async:
        import asyncio
        res = asyncio.run(saga.retry_async(args.tx, include_failed=args.include_failed))
    else:
        res = saga.retry(args.tx, include_failed=args.include_failed)
    print(f"transaction {res.tx_id}: {res.status}", file=out)
    if res.error is not None:
        print(f"  {type(res.error).__name__}: {res.error}", file=out)
    return 0 if res.finished else 1


def _load(spec: str) -> Any:
    import importlib
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise SagaError(f"--saga-object must be MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's own modules
    try:
        obj: Any = importlib.import_module(mod)
    except ImportError as exc:
        raise SagaError(f"cannot import {mod!r} for --saga-object: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SagaError(f"{mod!r} has no attribute {attr!r}") from None
    return obj
