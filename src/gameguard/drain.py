"""Graceful shutdown: :class:`Drain`, a guard that stops admitting and waits out the rest."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import _impl
from .clock import Clock
from .errors import ConfigurationError, DrainingError
from ._checks import check_name, check_non_negative
from ._log import logger
from ._loop import warn_if_loop_thread
from ._registry import register
from .guard import Guard

if TYPE_CHECKING:
    import asyncio

__all__ = ["Drain"]


def _check_timeout(timeout: Any) -> Optional[float]:
    return None if timeout is None else check_non_negative("timeout", timeout)


class Drain(Guard):
    """Admits every call until :meth:`start`, then rejects new ones with
    :class:`DrainingError` while the calls already admitted finish.

    Put it outermost on every handler (``@drain``, ``with drain:``, ``async with drain:``,
    or first in ``pipeline(drain, ...)``); on shutdown call :meth:`start` (or let
    :meth:`install_signal_handlers` do it on SIGTERM/SIGINT), then :meth:`wait` /
    :meth:`wait_async` until nothing admitted is in flight. ``state`` is ``"serving"`` or
    ``"draining"``; :func:`gameguard.health.health` reports a draining process not ready.

    Per call: one counter up and down (a C integer in the compiled build).
    """

    #: a drain never waits for admission: draining is final
    _waits = False

    def __init__(self, name: Optional[str] = None, *, clock: Optional[Clock] = None) -> None:
        self._init_guard(check_name(name, "drain"), clock, None)
        self._kernel = _impl.kernel("drain").DrainKernel()
        self._cond = threading.Condition(threading.Lock())
        self._async_waiters: List[Tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._message = f"{self.name!r} is draining: the process is shutting down"
        register(self)

    @property
    def state(self) -> str:
        """``"serving"`` until :meth:`start`, then ``"draining"``."""
        return "draining" if self._kernel.draining else "serving"

    @property
    def in_flight(self) -> int:
        """Calls admitted and not finished yet."""
        return int(self._kernel.in_flight)

    def start(self) -> None:
        """Stop admitting (idempotent). Calls in flight finish; new ones get
        :class:`DrainingError`."""
        self._kernel.start()
        self._wake()

    # -- waiting for the calls in flight ---------------------------------------------------
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until nothing admitted is in flight: ``True``, or ``False`` once
        ``timeout`` seconds (``None``: no limit) ran out first. Real seconds: in-flight
        work finishes in real time whatever clock the guards read."""
        timeout = _check_timeout(timeout)
        kernel = self._kernel
        with self._cond:
            kernel.waiters += 1  # from now on the exit that empties the drain flags a wake-up
            try:
                if kernel.in_flight == 0:
                    return True
                warn_if_loop_thread(f"{self!r}.wait()", "await drain.wait_async()")
                import time

                deadline = None if timeout is None else time.monotonic() + timeout
                while kernel.in_flight:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(None if remaining is None
                                    else min(remaining, threading.TIMEOUT_MAX))
                return True
            finally:
                kernel.waiters -= 1

    async def wait_async(self, timeout: Optional[float] = None) -> bool:
        """:meth:`wait` for asyncio: the loop keeps running the work being waited for.
        Cancellation leaves nothing behind."""
        import asyncio

        timeout = _check_timeout(timeout)
        kernel = self._kernel
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._cond:
            kernel.waiters += 1  # before looking: the exit that empties the drain flags it
            if kernel.in_flight == 0:
                kernel.waiters -= 1
                return True
            self._async_waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except asyncio.TimeoutError:
            return bool(kernel.in_flight == 0)
        finally:
            with self._cond:
                if entry in self._async_waiters:
                    self._async_waiters.remove(entry)
                kernel.waiters -= 1
            if not fut.done():
                fut.cancel()

    def _service(self) -> None:
        self._kernel.pending = 0
        self._wake()

    def _wake(self) -> None:
        """Nothing is in flight: wake every waiter (threads and tasks)."""
        with self._cond:
            if self._kernel.in_flight:
                return
            self._cond.notify_all()
            woken, self._async_waiters = self._async_waiters, []
        for loop, fut in woken:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_set_if_pending, fut)

    # -- signals ----------------------------------------------------------------------------
    def install_signal_handlers(self, signals: Sequence[int] = (), *,
                                loop: Optional[asyncio.AbstractEventLoop] = None,
                                then: Optional[Callable[[int], Any]] = None) -> Callable[[], None]:
        """Start draining on SIGTERM or SIGINT (or the ``signals`` given).

        Without ``loop``: ``signal.signal`` handlers (main thread only; the right form for
        sync servers). With ``loop``: the loop's own ``add_signal_handler`` (asyncio
        servers; the handler runs as a loop callback). ``then(signum)`` runs after
        :meth:`start` (e.g. to stop accepting connections). Returns a function that puts
        the previous handlers back.
        """
        import signal as _signal

        sigs = tuple(signals) or (_signal.SIGTERM, _signal.SIGINT)
        if then is not None and not callable(then):
            raise ConfigurationError(f"then must be callable or None, got {then!r}")

        def on_signal(signum: int, frame: Any = None) -> None:
            self.start()
            if then is not None:
                try:
                    then(signum)
                except Exception:  # raised here it would surface in whatever code runs
                    logger().exception("gameguard: %s: then(%d) raised", self.name, signum)

        if loop is not None:
            for s in sigs:
                loop.add_signal_handler(s, on_signal, s)

            def restore_loop() -> None:
                for s in sigs:
                    loop.remove_signal_handler(s)
            return restore_loop
        if threading.current_thread() is not threading.main_thread():
            raise ConfigurationError(
                "install_signal_handlers() without loop= must run on the main thread "
                "(signal.signal's rule); pass loop= from inside an asyncio server")
        previous: Dict[int, Any] = {s: _signal.signal(s, on_signal) for s in sigs}

        def restore() -> None:
            for s, handler in previous.items():
                _signal.signal(s, handler)
        return restore

    # -- the guard protocol ---------------------------------------------------------------
    def snapshot(self) -> Dict[str, Any]:
        return {"name": self.name, "state": self.state, "in_flight": self.in_flight}

    def _rejection(self, now: float) -> DrainingError:
        return DrainingError(self._message, retry_after=None, name=self.name)


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
