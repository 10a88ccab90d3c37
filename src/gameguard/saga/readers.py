"""What the stores share besides group commit: a bounded pool of read connections, and the
fork counter that tells a store its connections are its parent's."""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, List, Tuple, TypeVar

from ..errors import StoreError

__all__ = ["Readers", "forks"]
T = TypeVar("T")

forks = [0]  # bumped in a forked child: stores then reopen their connections
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: forks.__setitem__(0, forks[0] + 1))


class Readers:
    """At most ``cap`` read connections, shared by every thread (one at a time each), opened
    on demand. Per-thread connections would pile up with thread churn: nothing closes a
    dead thread's connection reliably. A connection whose read raised is closed, not
    reused (a PostgreSQL connection may be broken)."""

    def __init__(self, connect: Callable[[], Any], cap: int, wait: float) -> None:
        self._connect = connect
        self._cap = cap
        self._wait = wait  # seconds a read waits for a free connection before failing
        self._cv = threading.Condition(threading.Lock())
        self._idle: List[Any] = []
        self._open = 0
        self._closed = False

    def read(self, sql: str, params: Tuple[Any, ...]) -> List[Tuple[Any, ...]]:
        return self.use(lambda conn: list(conn.execute(sql, params).fetchall()))

    def use(self, fn: Callable[[Any], T]) -> T:
        """``fn(connection)`` on a pooled connection (autocommit where the store opens them
        so)."""
        conn = self._take()
        try:
            out = fn(conn)
        except BaseException:
            self._drop(conn)
            raise
        self._give(conn)
        return out

    def _take(self) -> Any:
        with self._cv:
            while not self._idle:
                if self._closed:
                    raise StoreError("the store is closed")
                if self._open < self._cap:
                    self._open += 1
                    break
                if not self._cv.wait(self._wait):
                    raise StoreError(f"no read connection came free within {self._wait}s")
            else:
                return self._idle.pop()
        try:
            return self._connect()  # outside the lock: opening may take a while
        except BaseException:
            with self._cv:
                self._open -= 1
                self._cv.notify()
            raise

    def _give(self, conn: Any) -> None:
        with self._cv:
            if not self._closed:
                self._idle.append(conn)
                self._cv.notify()
                return
        self._drop(conn)

    def _drop(self, conn: Any) -> None:
        with self._cv:
            self._open -= 1
            self._cv.notify()
        try:
            conn.close()
        except Exception:  # pragma: no cover - closing a broken connection
            pass

    @property
    def open(self) -> int:
        """Read connections open now (idle or in use)."""
        return self._open

    def close(self) -> None:
        """Close the idle connections now, the busy ones when their read ends."""
        with self._cv:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cv.notify_all()
        for c in idle:
            c.close()
