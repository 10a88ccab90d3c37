"""Group commit: many callers' writes, one commit (one fsync) per batch.

A caller (thread) that finds no commit in progress becomes the leader: it takes every
queued write (up to ``max_batch``), has them executed in one transaction, wakes their
callers, and goes on until its own write is done; then it hands leadership to a queued
thread, or to the writer thread when only async callers wait. Callers arriving meanwhile
queue up for the next batch. A lone caller pays one commit per write (no hand-off). Async
callers never lead: the writer thread commits for them, so an event loop never waits on an
fsync. Each caller returns only after the commit that holds its own write.

Interruptions (KeyboardInterrupt, a cancelled task) never strand anyone: a thread
interrupted while queued takes its write back out of the queue (it is not recorded), and
if leadership had just been handed to it, passes it on; a leader interrupted mid-commit
fails that batch's writes with an error saying they may or may not be recorded, wakes
their callers, and passes leadership on. A cancelled async caller's write stays queued and
commits or not; either row state is consistent.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from ..errors import StoreError

if TYPE_CHECKING:
    import asyncio

__all__ = ["Op", "GroupCommit"]


class Op:
    """One queued write and how its caller is told it is done."""

    __slots__ = ("kind", "params", "tx_id", "error", "result", "lead", "done", "waiter", "loop",
                 "fut")

    def __init__(self, kind: int, params: Tuple[Any, ...], tx_id: str) -> None:
        self.kind = kind
        self.params = params
        self.tx_id = tx_id
        self.error: Optional[BaseException] = None
        self.result: Any = None
        self.lead = False   # this op's thread holds leadership (set under the queue lock)
        self.done = False
        self.waiter: Any = None  # a held threading lock, released when done (sync callers)
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.fut: Optional[asyncio.Future[None]] = None


def _wake_futures(futs: List[asyncio.Future[None]]) -> None:
    for f in futs:
        if not f.done():  # a cancelled caller's future; its write still committed or not
            f.set_result(None)


#: longest a queued sync writer sleeps before it looks at pending signals again
_SIGNAL_POLL = 0.25


class GroupCommit:
    """The write queue of one store. ``execute(batch)`` runs a batch in one transaction and
    sets each op's ``error``/``result``; it may raise only for a non-database failure."""

    def __init__(self, execute: Callable[[List[Op]], None], max_batch: int, name: str) -> None:
        self.execute = execute
        self.max_batch = max_batch
        self.name = name
        self.closed = False
        self._mu = threading.Lock()
        self._queue: List[Op] = []
        self._leading = False
        self._writer_go = False
        self._writer_cv = threading.Condition(self._mu)
        self._writer: Optional[threading.Thread] = None

    # -- sync callers -----------------------------------------------------------------------
    def write(self, op: Op) -> None:
        """Queue ``op`` and return once it is committed (raise its error, if any)."""
        waiter = threading.Lock()
        waiter.acquire()
        op.waiter = waiter
        try:  # everything from queueing on, so an interrupt anywhere is settled below
            with self._mu:
                self._queue.append(op)
                if not self._leading:
                    self._leading = op.lead = True
            if not op.lead:
                # released when our write is committed, or leadership is ours. Waited for in
                # slices: a signal (Ctrl-C) that lands just before a wait blocks is handled
                # at the loop's next turn, never lost with the thread asleep for good
                while not waiter.acquire(timeout=_SIGNAL_POLL):
                    pass
            while op.lead and not op.done:
                self._commit_next()
        finally:
            self._settle(op)
        if op.error is not None:
            raise op.error

    def _settle(self, op: Op) -> None:
        """After a sync caller is done or interrupted: take its write back if still queued
        (nobody hands leadership to a caller that left), and pass leadership on if held."""
        with self._mu:
            if not op.done:
                try:
                    self._queue.remove(op)
                except ValueError:  # in a batch being committed: its leader wakes it
                    pass
            if not op.lead:
                return
            op.lead = False
            nxt = self._next_leader()
        if nxt is not None:
            nxt.waiter.release()

    def _next_leader(self) -> Optional[Op]:  # called with self._mu held
        if not self._queue:
            self._leading = False
            return None
        for nxt in self._queue:
            if nxt.waiter is not None:  # a blocked thread: it leads the next batch
                nxt.lead = True
                return nxt
        self._writer_go = True  # only async writes wait: the writer thread leads
        self._ensure_writer()
        self._writer_cv.notify()
        return None

    # -- async callers ----------------------------------------------------------------------
    async def write_async(self, op: Op) -> None:
        import asyncio
        loop = asyncio.get_running_loop()
        op.loop = loop
        op.fut = fut = loop.create_future()
        with self._mu:
            if not self._leading:
                self._ensure_writer()  # first: a thread that cannot start leaves no trace
                self._leading = self._writer_go = True
                self._writer_cv.notify()
            self._queue.append(op)
        # A cancellation here leaves the write queued: it commits or not, and either row
        # state is consistent; the version fence stops anything stale afterwards.
        await fut
        if op.error is not None:
            raise op.error

    def _ensure_writer(self) -> None:  # called with self._mu held
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._writer_main, daemon=True,
                                            name=f"gameguard-saga-writer:{self.name}")
            self._writer.start()

    def _writer_main(self) -> None:
        while True:
            with self._mu:
                while not self._writer_go:
                    if self.closed:
                        return
                    self._writer_cv.wait()
                self._writer_go = False
            try:
                while self._commit_next():  # lead until the queue is empty
                    pass
            except BaseException:  # pragma: no cover - its callers got a StoreError
                import logging
                logging.getLogger("gameguard.saga").exception("saga store %r: writer thread",
                                                              self.name)
                with self._mu:
                    nxt = self._next_leader()
                if nxt is not None:
                    nxt.waiter.release()

    # -- committing -------------------------------------------------------------------------
    def _commit_next(self) -> bool:
        """Commit the next batch and tell its callers; ``False`` (and leadership given up)
        when the queue was empty. Only the leader calls this."""
        batch: List[Op] = []
        try:
            with self._mu:
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
                if not batch:
                    self._leading = False
                    return False
            self.execute(batch)
            return True
        except BaseException as exc:  # not a database error: KeyboardInterrupt, MemoryError
            for op in batch:
                if op.error is None:
                    op.error = StoreError(f"saga store {self.name!r}: the commit was "
                                          f"interrupted ({type(exc).__name__}); this write "
                                          f"may or may not be recorded")
            raise
        finally:
            _wake(batch)

    def close(self, timeout: float) -> None:
        """Stop the writer thread once it is idle (waiting at most ``timeout`` seconds)."""
        with self._mu:
            self.closed = True
            self._writer_cv.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=timeout)


def _wake(batch: List[Op]) -> None:
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
