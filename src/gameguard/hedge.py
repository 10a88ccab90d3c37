"""Hedged requests for coroutines: :class:`Hedge`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Set

from ._checks import check_int, check_name, check_non_negative
from .clock import Clock, async_sleeper
from .guard import WrappingGuard

if TYPE_CHECKING:
    import asyncio

__all__ = ["Hedge"]

MAX_EXTRA = 10


class Hedge(WrappingGuard):
    """Cut tail latency: when an async call has not answered ``delay`` seconds after the
    last attempt started, start another copy, up to ``max_extra`` extra; the first
    attempt to *return* wins and every other is cancelled (and awaited, so whatever it
    held is back before the caller goes on).

    An attempt that raises does not end the call while another is running or may still
    start (the next one starts at once); when every attempt has failed, the last failure
    propagates. ``delay=0`` starts them all together. Cancelling the caller cancels every
    attempt. Only for idempotent calls: the losers may have had effects. In a pipeline,
    guards inside the hedge (``pipeline(hedge, breaker, bulkhead)``) are entered by each
    attempt. Sync functions cannot be raced: decorating one is a ``TypeError``. The delay
    is timed on the running loop, or with a ``clock`` of its own (``ManualClock``) by
    that clock's ``sleep_async``.
    """

    def __init__(self, delay: float, max_extra: int = 1, *, clock: Optional[Clock] = None,
                 name: Optional[str] = None) -> None:
        self._delay = check_non_negative("delay", delay)
        self._max_extra = check_int("max_extra", max_extra, 1, MAX_EXTRA)
        self._init_wrapping(check_name(name, "hedge"), clock)
        self._sleep_async = async_sleeper(self._clock)
        self._hedges = 0      # extra attempts started
        self._hedge_wins = 0  # calls an extra attempt answered

    delay = property(lambda self: self._delay, doc="Seconds before each extra attempt.")
    max_extra = property(lambda self: self._max_extra, doc="Extra attempts at most.")

    def snapshot(self) -> Dict[str, Any]:
        return {"name": self.name, "hedges": self._hedges, "hedge_wins": self._hedge_wins,
                "config": {"delay": self._delay, "max_extra": self._max_extra}}

    async def _run_async(self, call: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: Dict[str, Any]) -> Any:
        import asyncio

        pending: Set[asyncio.Future[Any]] = set()
        first: Optional[asyncio.Future[Any]] = None
        extra = self._max_extra
        failure: Optional[BaseException] = None
        try:
            first = asyncio.ensure_future(call(*args, **kwargs))
            pending.add(first)
            while True:
                done = await self._first_done(pending, self._delay if extra else None)
                if not done:  # nobody answered within the delay: hedge
                    extra -= 1
                    self._hedges += 1
                    pending.add(asyncio.ensure_future(call(*args, **kwargs)))
                    continue
                pending -= done
                winner: Optional[asyncio.Future[Any]] = None
                fatal: Optional[BaseException] = None
                for attempt in done:  # every outcome read: none "never retrieved"
                    if attempt.cancelled():
                        failure = asyncio.CancelledError()
                        continue
                    exc = attempt.exception()
                    if exc is None:
                        winner = winner or attempt
                    elif isinstance(exc, Exception):
                        failure = exc
                    else:
                        fatal = exc  # KeyboardInterrupt, SystemExit: not a failed attempt
                if fatal is not None:
                    raise fatal
                if winner is not None:
                    if winner is not first:
                        self._hedge_wins += 1
                    return winner.result()
                if not pending:
                    if not extra:
                        assert failure is not None
                        raise failure
                    extra -= 1  # every attempt so far failed: the next one starts now
                    self._hedges += 1
                    pending.add(asyncio.ensure_future(call(*args, **kwargs)))
        finally:
            if pending:
                await _cancel_all(pending)

    async def _first_done(self, pending: Set[asyncio.Future[Any]],
                          delay: Optional[float]) -> Set[asyncio.Future[Any]]:
        """The attempts done once one is, or an empty set after ``delay`` (None: no limit)."""
        import asyncio

        if delay is None or self._clock is None:
            done, _ = await asyncio.wait(pending, timeout=delay,
                                         return_when=asyncio.FIRST_COMPLETED)
            return set(done)
        timer = asyncio.ensure_future(self._sleep_async(delay))
        try:
            done, _ = await asyncio.wait(pending | {timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        return set(done) - {timer}

    def __repr__(self) -> str:
        return f"<Hedge {self.name!r} delay={self._delay} max_extra={self._max_extra}>"


async def _cancel_all(attempts: Set[asyncio.Future[Any]]) -> None:
    """Cancel the losing attempts and wait until each has unwound (its permits are back);
    their outcomes are read so none is reported as never retrieved."""
    import asyncio

    for attempt in attempts:
        attempt.cancel()
    try:
        await asyncio.wait(attempts)
    finally:
        for attempt in attempts:
            if attempt.done() and not attempt.cancelled():
                attempt.exception()
