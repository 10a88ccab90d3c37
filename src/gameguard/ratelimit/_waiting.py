"""The waiting machinery shared by the token and leaky buckets: reservations in the kernel,
then a sleep that follows the guard's clock; argument checks shared by every limiter."""
from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any, List, Optional

from ..clock import async_sleeper, sleeper
from ..errors import ConfigurationError, RateLimitExceeded
from .._checks import check_non_negative, check_positive
from ..guard import Guard

if TYPE_CHECKING:
    import asyncio

_EPS = 2.220446049250313e-16


def _check_cost(cost: Any, capacity: float) -> float:
    c = check_positive("cost", cost)
    if c > capacity:
        raise ConfigurationError(
            f"cost must be at most capacity={capacity!r} (it could never be admitted), "
            f"got {cost!r}")
    return c


def _check_timeout(timeout: Any) -> float:
    if timeout is None:
        return math.inf
    return check_non_negative("timeout", timeout)


def _retry(seconds: float) -> Optional[float]:
    return None if math.isinf(seconds) else max(0.0, float(seconds))


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


class _PacedGuard(Guard):
    """Reservation-and-wait shared by :class:`TokenBucket` and :class:`LeakyBucket`.

    ``acquire`` reserves in the kernel (taking budget on credit), then sleeps until its
    deadline. Waiters are kept in reservation order; one that leaves without being granted
    (cancellation, KeyboardInterrupt) refunds its reservation, and every waiter behind it
    moves up by ``cost / rate`` (as in aiolimiter), so nobody is delayed by it.
    """

    rate: float
    capacity: float

    def _init_waiting(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._waiters: List[_Waiter] = []
        self._sleep = sleeper(self._clock)
        self._asleep = async_sleeper(self._clock)

    def _cost(self, cost: Any) -> float:
        return _check_cost(cost, self.capacity)

    def _wait_needed(self, now: float, cost: float) -> float:
        raise NotImplementedError

    def _reserve(self, cost: Any, timeout: Any) -> Optional[_Waiter]:
        c = self._cost(cost)
        max_wait = _check_timeout(timeout)
        with self._cond:
            now = self._now()
            delay = self._kernel.reserve(now, c, max_wait)
            if delay < 0.0:
                wait = self._wait_needed(now, c)
                raise RateLimitExceeded(
                    f"{self.name!r}: cost {c!r} needs a wait of {wait:.6g}s, more than "
                    f"timeout={timeout!r}", retry_after=_retry(wait), name=self.name)
            if delay == 0.0:
                return None
            w = _Waiter(now + delay, c, c / self.rate)
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
        while True:
            now = self._now()
            if self._reached(w, now):
                return
            remaining = w.deadline - now
            if real:
                with self._cond:  # a waiter ahead that leaves wakes us early
                    self._cond.wait(remaining)
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
                handle = loop.call_later(remaining, _set_if_pending, fut)
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
        if self.capacity < 1.0:
            return ConfigurationError(
                f"{self.name!r}: a guarded call costs 1 but capacity={self.capacity!r}; "
                "use try_acquire(cost) with smaller costs or raise capacity")
        return RateLimitExceeded(
            f"rate limit {self.name!r} exceeded", retry_after=_retry(
                self._kernel.retry_after(now)), name=self.name)
