"""The waiting machinery shared by the token and leaky buckets: reservations in the kernel,
then a sleep that follows the guard's clock (a ``ManualClock`` advances instead of blocking;
a real wait is cut into slices of at most ``threading.TIMEOUT_MAX``, so any timeout works)."""
from __future__ import annotations

import threading
import time
from .._hints import TYPE_CHECKING
from ..clock import async_sleeper, sleeper
from ..errors import ConfigurationError, RateLimitExceeded
from .._loop import warn_if_loop_thread
from ._common import (CostOneGuard, Setting, changed, check_cost, check_rate_capacity,
                      check_timeout, guard_cost_error, retry)

if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional
    import asyncio

_EPS = 2.220446049250313e-16


def _set_if_pending(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _Waiter:
    """One caller of ``acquire``: its reservation is already taken from the kernel."""

    __slots__ = ("deadline", "cost", "shift", "fut", "loop")

    def __init__(self, deadline: float, cost: float, shift: float) -> None:
        self.deadline = deadline
        self.cost = cost
        self.shift = shift  # how much earlier every later waiter may go if this one leaves
        self.fut: Optional["asyncio.Future[None]"] = None
        self.loop: Optional["asyncio.AbstractEventLoop"] = None


#: the longest single real wait: a longer one is taken in slices (threading refuses more)
_SLICE = min(threading.TIMEOUT_MAX, 86400.0)


class _PacedGuard(CostOneGuard):
    """Reservation-and-wait shared by :class:`TokenBucket` and :class:`LeakyBucket`.

    ``acquire`` reserves in the kernel (taking budget on credit), then sleeps until its
    deadline. Waiters are kept in reservation order; one that leaves without being granted
    (cancellation, KeyboardInterrupt) refunds its reservation, and every waiter behind it
    moves up by ``cost / rate`` (as in aiolimiter), so nobody is delayed by it.

    ``rate`` and ``capacity`` are live settings: read them, change them with
    :meth:`configure`.
    """

    rate = Setting()
    capacity = Setting()
    _rate: float
    _capacity: float
    _default_capacity = False  # capacity=None means max(rate, 1.0)

    def configure(self, **changes: Any) -> None:
        """Change ``rate`` and/or ``capacity`` live, with the constructor's checks, all or
        nothing (an unknown setting is a :class:`ConfigurationError`).

        The bucket is settled at the old rate up to now, then switched; tokens are clipped
        to a smaller capacity (a leaky level is kept: lowering it would free room). Callers
        queued in ``acquire`` hold reservations made at the old rate: what each still
        waits for is rescaled to the new rate (a cut makes them wait longer, past their
        ``timeout`` if need be; a raise lets them go sooner), so no budget is minted and
        none of them is lost.
        """
        new = changed(self, changes, {"rate": self._rate, "capacity": self._capacity})
        rate, capacity = check_rate_capacity(new["rate"], new["capacity"],
                                             self._default_capacity)
        self._check_bound([("capacity", capacity)])
        with self._cond:
            now = self._now()
            old = self._rate
            self._kernel.configure(now, rate, capacity)
            self._rate, self._capacity = rate, capacity
            for w in self._waiters:
                w.shift = w.cost / rate
                if w.deadline > now:
                    w.deadline = now + (w.deadline - now) * (old / rate)
                self._wake(w)
            self._cond.notify_all()

    def _guard_error(self) -> Optional[ConfigurationError]:
        return guard_cost_error(self.name, "capacity", self._capacity)

    def _init_waiting(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._waiters: List[_Waiter] = []
        self._sleep = sleeper(self._clock)
        self._asleep = async_sleeper(self._clock)

    def _cost(self, cost: Any) -> float:
        return check_cost(cost, self._capacity)

    def _wait_needed(self, now: float, cost: float) -> float:
        raise NotImplementedError

    def _reserve(self, cost: Any, timeout: Any) -> Optional[_Waiter]:
        c = self._cost(cost)
        max_wait = check_timeout(timeout)
        with self._cond:
            now = self._now()
            delay = self._kernel.reserve(now, c, max_wait)
            if delay < 0.0:
                wait = self._wait_needed(now, c)
                raise RateLimitExceeded(
                    f"{self.name!r}: cost {c!r} needs a wait of {wait:.6g}s, more than "
                    f"timeout={timeout!r}", retry_after=retry(wait), name=self.name)
            if delay == 0.0:
                return None
            w = _Waiter(now + delay, c, c / self._rate)
            self._waiters.append(w)
            return w

    def _finish(self, w: _Waiter, granted: bool) -> None:
        with self._cond:
            i = next((j for j, other in enumerate(self._waiters) if other is w), -1)
            if i < 0:  # pragma: no cover - a waiter is removed exactly once
                return
            del self._waiters[i]
            if granted:
                return
            self._kernel.refund(self._now(), w.cost)
            for later in self._waiters[i:]:
                later.deadline -= w.shift
                self._wake(later)
            self._cond.notify_all()

    @staticmethod
    def _wake(w: _Waiter) -> None:
        fut, loop = w.fut, w.loop
        if fut is None or loop is None or fut.done() or loop.is_closed():
            return
        import asyncio  # loaded already: an async waiter set w.fut
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fut.set_result(None)
        else:
            loop.call_soon_threadsafe(_set_if_pending, fut)

    @staticmethod
    def _reached(w: _Waiter, now: float) -> bool:
        # within a few ulps of the deadline counts: a ManualClock advanced by exactly the
        # remaining wait may land one rounding short of it
        return w.deadline - now <= abs(w.deadline) * 4 * _EPS

    def _wait_sync(self, w: _Waiter) -> None:
        real = self._sleep is time.sleep
        warned = False
        while True:
            now = self._now()
            if self._reached(w, now):
                return
            remaining = w.deadline - now
            if real:
                if not warned:  # right before really blocking
                    warned = True
                    warn_if_loop_thread(f"{type(self).__name__}.acquire",
                                        "await acquire_async(...)", stacklevel=4)
                with self._cond:  # a waiter ahead that leaves (or configure) wakes us early
                    self._cond.wait(min(remaining, _SLICE))
            else:
                self._sleep(remaining)

    async def _wait_async(self, w: _Waiter) -> None:
        import asyncio
        loop = asyncio.get_running_loop()
        real = self._asleep is asyncio.sleep
        while True:
            now = self._now()
            if self._reached(w, now):
                return
            remaining = w.deadline - now
            if real:
                fut: asyncio.Future[None] = loop.create_future()
                with self._cond:
                    w.fut, w.loop = fut, loop
                handle = loop.call_later(min(remaining, _SLICE), _set_if_pending, fut)
                try:
                    await fut
                finally:
                    handle.cancel()
                    w.fut = None
            else:
                await self._asleep(remaining)

    def acquire(self, cost: float = 1, timeout: Optional[float] = None) -> None:
        """Wait (blocking the thread) until ``cost`` is granted.

        Raises :class:`RateLimitExceeded` at once, taking nothing, when the wait would be
        longer than ``timeout`` seconds (``None``: wait as long as needed; 0: never wait).
        """
        w = self._reserve(cost, timeout)
        if w is None:
            return
        granted = False
        try:
            self._wait_sync(w)
            granted = True
        finally:
            self._finish(w, granted)

    async def acquire_async(self, cost: float = 1, timeout: Optional[float] = None) -> None:
        """``acquire`` for asyncio. Cancelled while waiting, the reservation is given back
        and the waiters behind move up."""
        w = self._reserve(cost, timeout)
        if w is None:
            return
        granted = False
        try:
            await self._wait_async(w)
            granted = True
        finally:
            self._finish(w, granted)

    @property
    def waiting(self) -> int:
        """Callers of ``acquire``/``acquire_async`` holding a reservation and waiting."""
        return len(self._waiters)

    def _rejection(self, now: float) -> Any:
        err = self._guard_error()
        if err is not None:
            return err
        return RateLimitExceeded(
            f"rate limit {self.name!r} exceeded", retry_after=retry(
                self._kernel.retry_after(now)), name=self.name)

    def _snapshot(self) -> Dict[str, Any]:
        return {"name": self.name, "rate": self._rate, "capacity": self._capacity,
                "waiting": self.waiting, "counters": self._counters()}
