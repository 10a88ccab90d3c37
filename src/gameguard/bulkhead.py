"""Concurrency limiting: :class:`Bulkhead`."""
from __future__ import annotations

import collections
import math
import threading
from ._hints import TYPE_CHECKING
from . import _impl
from .clock import Clock
from .errors import BulkheadFullError, ConfigurationError
from .guard import REJECT as _REJECT
from ._checks import check_int, check_name
from ._loop import warn_if_loop_thread
from ._settings import live_setting, merge
from .guard import Guard
from ._registry import register

if TYPE_CHECKING:
    from typing import Any, Callable, Deque, Dict, Optional, Tuple
    import asyncio

__all__ = ["Bulkhead"]

REJECT: int = _REJECT
_LIVE = ("max_concurrent", "max_wait")


def _check_max_wait(value: Any) -> Optional[float]:
    """``None`` (wait as long as it takes) or a finite number of seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0.0 <= value < math.inf:
        raise ConfigurationError(
            f"max_wait must be None (no limit) or a finite number >= 0, got {value!r}")
    return float(value)


def _bulkhead_settings(max_concurrent: Any, max_wait: Any) -> Dict[str, Any]:
    """The bulkhead's settings, checked: the one routine for the constructor and configure()."""
    return dict(max_concurrent=check_int("max_concurrent", max_concurrent, 1),
                max_wait=_check_max_wait(max_wait))


def _clock_method(clock: Optional[Clock], name: str) -> Any:
    """A sleep the clock provides itself (``ManualClock``): waits then follow that clock."""
    method = getattr(clock, name, None)
    return method if callable(method) else None


class Bulkhead(Guard):
    """At most ``max_concurrent`` calls in flight; a caller waits up to ``max_wait`` seconds
    (``None``: as long as it takes; 0: reject at once) for a slot and then gets
    :class:`BulkheadFullError`.

    Works for threads and asyncio tasks at once. A slot is given back exactly once, on
    return, exception or cancellation; a waiter cancelled right after being woken passes
    the wake-up on, so no slot sits idle while someone waits. Waiters are woken in FIFO
    order, but a newly arriving caller may take a freed slot first (no strict fairness).

    Waits follow ``clock``: the deadline is read on it, and a clock with its own
    ``sleep``/``sleep_async`` (``ManualClock``) is slept on instead of real time. Both
    settings change live (:meth:`configure`, or assign the attribute): below the calls in
    flight, those finish and new ones wait or are refused; growing wakes waiters.
    """

    #: always True: a live ``max_wait`` change must reach wrappers made before it
    _waits = True

    max_concurrent = live_setting("max_concurrent", "Calls allowed in flight at once.")
    max_wait = live_setting("max_wait", "Seconds a caller waits for a slot (None: no limit).")

    def __init__(self, max_concurrent: int, *, max_wait: Optional[float] = 0.0,
                 name: Optional[str] = None, fallback: Optional[Callable[..., Any]] = None,
                 clock: Optional[Clock] = None) -> None:
        self._config = _bulkhead_settings(max_concurrent, max_wait)
        self._init_guard(check_name(name, "bulkhead"), clock, fallback)
        self._sleep = _clock_method(self._clock, "sleep")
        self._sleep_async = _clock_method(self._clock, "sleep_async")
        self._kernel = _impl.kernel("bulkhead").BulkheadKernel(self._config["max_concurrent"])
        self._cond = threading.Condition(threading.Lock())
        self._sync_waiters = 0
        # async waiters: (loop, future), woken in order
        self._async_waiters: Deque[Tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]] = \
            collections.deque()
        register(self)

    def configure(self, **changes: Any) -> None:
        """Change ``max_concurrent`` and/or ``max_wait`` live (the constructor's checks,
        applied together). Calls in flight above a smaller limit finish normally; no slot
        is lost or minted. A larger limit wakes waiters at once."""
        with self._cond:
            config = _bulkhead_settings(**merge(self, self._config, changes, _LIVE))
            self._kernel.set_limit(config["max_concurrent"])
            self._config = config
        self._wake()

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return int(self._kernel.in_flight)

    @property
    def available(self) -> int:
        """Slots free now (0 while a lowered limit is still above the calls in flight)."""
        return max(0, int(self._kernel.limit) - self.in_flight)

    def snapshot(self) -> Dict[str, Any]:
        return {"name": self.name, "in_flight": self.in_flight, "limit": self._kernel.limit,
                "waiting": self._sync_waiters + len(self._async_waiters),
                "config": dict(self._config), "counters": self._counters()}

    def _deadline(self, now: float) -> Optional[float]:
        wait = self._config["max_wait"]
        return None if wait is None else now + wait

    # -- waiting for a slot (threads) ------------------------------------------------------
    def _admit_slow(self, now: float) -> int:
        if self._config["max_wait"] == 0.0:
            return REJECT
        kernel = self._kernel
        deadline = self._deadline(now)
        with self._cond:
            self._sync_waiters += 1
            kernel.waiters += 1  # before retrying: an exit from now on flags a wake-up
            try:
                warned = False
                while True:
                    token = kernel.enter(now)
                    if token >= 0:
                        return int(token)
                    remaining = None if deadline is None else deadline - self._now()
                    if remaining is not None and remaining <= 0:
                        return REJECT
                    if not warned:
                        warn_if_loop_thread(f"waiting for a slot of {self!r}",
                                            "async with / an async def guarded by it")
                        warned = True
                    if remaining is not None and self._sleep is not None:
                        self._cond.release()  # sleep on the guard's clock, then look again
                        try:
                            self._sleep(remaining)
                        finally:
                            self._cond.acquire()
                    else:  # real time: clamped, as Condition.wait overflows past TIMEOUT_MAX
                        self._cond.wait(None if remaining is None
                                        else min(remaining, threading.TIMEOUT_MAX))
            finally:
                self._sync_waiters -= 1
                kernel.waiters -= 1

    # -- waiting for a slot (asyncio) -------------------------------------------------------
    async def _admit_slow_async(self, now: float) -> int:
        if self._config["max_wait"] == 0.0:
            return REJECT
        import asyncio

        kernel = self._kernel
        loop = asyncio.get_running_loop()
        deadline = self._deadline(now)
        while True:
            with self._cond:
                kernel.waiters += 1  # before retrying: an exit from now on flags a wake-up
                try:
                    token = kernel.enter(now)
                    remaining = None if deadline is None else deadline - self._now()
                except BaseException:
                    kernel.waiters -= 1
                    raise
                if token >= 0 or (remaining is not None and remaining <= 0):
                    kernel.waiters -= 1
                    return int(token) if token >= 0 else REJECT
                if remaining is not None and self._sleep_async is not None:
                    kernel.waiters -= 1  # sleeping on the guard's clock; nothing to wake
                    entry = None
                else:
                    fut: asyncio.Future[bool] = loop.create_future()
                    entry = (loop, fut)
                    self._async_waiters.append(entry)
            if entry is None:
                await self._sleep_async(remaining)
                continue
            await self._wait_woken(loop, entry, remaining)

    async def _wait_woken(self, loop: asyncio.AbstractEventLoop,
                          entry: Tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]],
                          remaining: Optional[float]) -> None:
        """Wait until woken or ``remaining`` seconds pass (then the caller looks again).

        The future's result says why it finished: True woken, False timed out. Awaiting it
        directly (not through wait_for) never swallows a cancellation that arrives
        together with the wake-up (3.11's wait_for can).
        """
        fut = entry[1]
        woken = False
        timer = None if remaining is None else loop.call_later(
            remaining, _set_if_pending, fut, False)
        try:
            woken = await fut
        finally:
            if timer is not None:
                timer.cancel()
            with self._cond:
                try:
                    self._async_waiters.remove(entry)
                except ValueError:
                    pass
                self._kernel.waiters -= 1
            if not woken and fut.done() and not fut.cancelled() and fut.result():
                self._wake()  # cancelled right after a wake-up: hand it on
            elif not fut.done():
                fut.cancel()

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
            free = self._kernel.limit - self._kernel.in_flight
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
        import asyncio

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
            f"bulkhead {self.name!r} is full ({self.in_flight} in flight, "
            f"limit {self._kernel.limit})", retry_after=None, name=self.name)


def _set_if_pending(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)

