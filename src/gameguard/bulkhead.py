"""Concurrency limiting: :class:`Bulkhead`."""
from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any, Callable, Deque, Dict, Optional, Tuple

from . import _impl
from .clock import Clock, monotonic
from .errors import BulkheadFullError
from .guard import REJECT as _REJECT
from ._checks import check_int, check_name, check_non_negative
from .guard import Guard

__all__ = ["Bulkhead"]

REJECT: int = _REJECT


class Bulkhead(Guard):
    """At most ``max_concurrent`` calls in flight; a caller waits up to ``max_wait`` seconds
    for a slot (0: reject at once) and then gets :class:`BulkheadFullError`.

    Works for threads and asyncio tasks at once. A slot is given back exactly once, on
    return, exception or cancellation; a waiter cancelled right after being woken passes
    the wake-up on, so no slot sits idle while someone waits. Waiters are woken in FIFO
    order, but a newly arriving caller may take a freed slot first (no strict fairness).
    """

    def __init__(self, max_concurrent: int, *, max_wait: float = 0.0, name: Optional[str] = None,
                 fallback: Optional[Callable[..., Any]] = None,
                 clock: Optional[Clock] = None) -> None:
        self.max_concurrent = check_int("max_concurrent", max_concurrent, 1)
        self.max_wait = check_non_negative("max_wait", max_wait)
        self._waits = self.max_wait > 0.0
        self._init_guard(check_name(name, "bulkhead"), clock, fallback)
        self._kernel = _impl.kernel("bulkhead").BulkheadKernel(self.max_concurrent)
        self._cond = threading.Condition(threading.Lock())
        self._sync_waiters = 0
        # async waiters: (loop, future), woken in order
        self._async_waiters: Deque[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[bool]"]] = \
            collections.deque()

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return int(self._kernel.in_flight)

    @property
    def available(self) -> int:
        return self.max_concurrent - self.in_flight

    def snapshot(self) -> Dict[str, Any]:
        return {"name": self.name, "in_flight": self.in_flight, "limit": self.max_concurrent,
                "waiting": self._sync_waiters + len(self._async_waiters)}

    # -- waiting for a slot (threads) ------------------------------------------------------
    def _admit_slow(self, now: float) -> int:
        if self.max_wait == 0.0:
            return REJECT
        kernel = self._kernel
        deadline = monotonic() + self.max_wait
        with self._cond:
            self._sync_waiters += 1
            kernel.waiters += 1  # before retrying: an exit from now on flags a wake-up
            try:
                while True:
                    token = kernel.enter(now)
                    if token >= 0:
                        return int(token)
                    remaining = deadline - monotonic()
                    if remaining <= 0:
                        return REJECT
                    self._cond.wait(remaining)
            finally:
                self._sync_waiters -= 1
                kernel.waiters -= 1

    # -- waiting for a slot (asyncio) -------------------------------------------------------
    async def _admit_slow_async(self, now: float) -> int:
        if self.max_wait == 0.0:
            return REJECT
        kernel = self._kernel
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while True:
            with self._cond:
                kernel.waiters += 1  # before retrying: an exit from now on flags a wake-up
                token = kernel.enter(now)
                if token >= 0:
                    kernel.waiters -= 1
                    return int(token)
                fut: asyncio.Future[bool] = loop.create_future()
                entry = (loop, fut)
                self._async_waiters.append(entry)
            # The future's result says why it finished: True woken, False timed out.
            # Awaiting it directly (not through wait_for) never swallows a cancellation
            # that arrives together with the wake-up (3.11's wait_for can).
            woken = False
            timer = loop.call_later(max(deadline - loop.time(), 0.0), _set_if_pending, fut, False)
            try:
                woken = await fut
            finally:
                timer.cancel()
                with self._cond:
                    try:
                        self._async_waiters.remove(entry)
                    except ValueError:
                        pass
                    kernel.waiters -= 1
                if not woken and fut.done() and not fut.cancelled() and fut.result():
                    self._wake()  # cancelled right after a wake-up: hand it on
                elif not fut.done():
                    fut.cancel()
            if not woken:
                return REJECT  # timed out

    # -- wake-ups -----------------------------------------------------------------------------
    def _service(self) -> None:
        self._kernel.pending = 0
        self._wake()

    def _wake(self) -> None:
        """Slots were freed: wake as many waiters as there are free slots, threads first,
        then async waiters not yet woken in FIFO order.

        Waking one per call would lose wake-ups: two exits can both flag ``pending`` before
        either services it, and the second then sees nothing to do. A waiter woken for a
        slot someone else took simply waits again.
        """
        woken = []
        with self._cond:
            free = self.max_concurrent - self._kernel.in_flight
            if free <= 0:
                return
            if self._sync_waiters:
                n = min(free, self._sync_waiters)
                self._cond.notify(n)
                free -= n
            while free > 0 and self._async_waiters:
                entry = self._async_waiters.popleft()
                if not entry[1].done():
                    woken.append(entry)
                    free -= 1
        if not woken:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, fut in woken:
            if loop.is_closed():
                continue
            if running is loop:
                fut.set_result(True)
            else:
                loop.call_soon_threadsafe(_set_if_pending, fut, True)

    def _rejection(self, now: float) -> BulkheadFullError:
        return BulkheadFullError(
            f"bulkhead {self.name!r} is full ({self.max_concurrent} in flight)",
            retry_after=None, name=self.name)


def _set_if_pending(fut: "asyncio.Future[bool]", value: bool) -> None:
    if not fut.done():
        fut.set_result(value)
