"""Deadlines for coroutines: :class:`Timeout`."""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional

from ._checks import check_name, check_positive
from .clock import Clock, async_sleeper
from .guard import WrappingGuard

__all__ = ["Timeout"]

if sys.version_info >= (3, 11):  # Task.cancelling()/uncancel() tell whose cancel it was
    def _cancelling(task: Any) -> int:
        return int(task.cancelling())

    def _only_ours(task: Any, before: int) -> bool:
        """Our cancellation was the only one since ``before`` (as ``asyncio.timeout``)."""
        return int(task.uncancel()) <= before
else:
    def _cancelling(task: Any) -> int:
        return 0

    def _only_ours(task: Any, before: int) -> bool:
        return True  # Python 3.10 cannot tell: the timer fired, so it is a timeout


class Timeout(WrappingGuard):
    """Cancel an async call still running ``seconds`` after it started and raise the
    builtin ``TimeoutError`` in its place (an outer breaker counts it as a failure).

    A coroutine is cancelled at its current ``await``, so everything it holds (permits,
    connections) is released as on any cancellation. Sync functions cannot be pre-empted:
    decorating one (alone or in a pipeline) is a ``TypeError``; bound such work inside the
    function instead. A caller cancelled from outside still gets ``CancelledError``, not
    ``TimeoutError``. The deadline is a timer on the running loop; with a ``clock`` of its
    own (``ManualClock``) it is that clock's ``sleep_async``, so tests never wait.

    In a pipeline, put one outermost for the whole call (retries included) and one
    innermost for each attempt: ``pipeline(Timeout(1.0), retry, breaker, Timeout(0.3))``.
    """

    def __init__(self, seconds: float, *, clock: Optional[Clock] = None,
                 name: Optional[str] = None) -> None:
        self._seconds = check_positive("seconds", seconds)
        self._init_wrapping(check_name(name, "timeout"), clock)
        self._sleep_async = async_sleeper(self._clock)
        self._timeouts = 0

    seconds = property(lambda self: self._seconds, doc="The deadline after the call starts.")

    def snapshot(self) -> Dict[str, Any]:
        return {"name": self.name, "timeouts": self._timeouts,
                "config": {"seconds": self._seconds}}

    async def _run_async(self, call: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: Dict[str, Any]) -> Any:
        import asyncio

        task = asyncio.current_task()
        if task is None:
            raise RuntimeError(f"{self!r} needs to run in an asyncio task")
        cancelling = _cancelling(task)
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        timer: Any
        if self._clock is None:
            timer = asyncio.get_running_loop().call_later(self._seconds, expire)
        else:
            timer = asyncio.ensure_future(self._watch(expire))
        try:
            return await call(*args, **kwargs)
        except asyncio.CancelledError:
            if fired and _only_ours(task, cancelling):
                self._timeouts += 1
                raise TimeoutError(f"{self.name}: no answer within {self._seconds} s") from None
            raise
        finally:
            timer.cancel()

    async def _watch(self, expire: Callable[[], None]) -> None:
        await self._sleep_async(self._seconds)
        expire()

    def __repr__(self) -> str:
        return f"<Timeout {self.name!r} {self._seconds} s>"
