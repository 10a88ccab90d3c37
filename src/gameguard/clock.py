"""Clocks: the default monotonic clock and ``ManualClock`` for exact tests.

A clock is any zero-argument callable returning monotonic seconds as a float. Guards that
wait (``acquire``) sleep through :func:`sleeper`/:func:`async_sleeper`, so with a
``ManualClock`` waiting advances the clock instead of blocking the test.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from ._hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Awaitable, Optional

__all__ = ["Clock", "ManualClock", "monotonic", "sleeper", "async_sleeper"]

Clock = Callable[[], float]

#: The default clock. The compiled call wrappers recognise it and read CLOCK_MONOTONIC
#: directly in C (the same source ``time.monotonic`` uses on Linux), with no Python call.
monotonic: Clock = time.monotonic


class ManualClock:
    """A clock that moves only when told to: ``clock()`` reads it, ``advance(s)`` moves it.

    ``sleep(s)`` advances it too, so code that waits on a ``ManualClock`` finishes at once
    with the time it would have waited accounted for. Thread-safe.
    """

    __slots__ = ("_now", "_lock")

    def __init__(self, start: float = 0.0) -> None:
        if isinstance(start, bool) or not isinstance(start, (int, float)) or \
                not math.isfinite(start):
            from .errors import ConfigurationError
            raise ConfigurationError(f"start must be a finite number, got {start!r}")
        start = float(start)
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0) and return the new time."""
        seconds = float(seconds)
        if not seconds >= 0.0 or not math.isfinite(seconds):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """What a waiting guard calls: advance instead of blocking."""
        if seconds > 0:
            self.advance(seconds)

    async def sleep_async(self, seconds: float) -> None:
        """Advance, then yield once to the event loop so other tasks see the new time."""
        import asyncio  # here, not at the top: a sync server never pays for asyncio

        if seconds > 0:
            self.advance(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"


def sleeper(clock: Optional[Clock]) -> Callable[[float], None]:
    """The blocking sleep that matches ``clock`` (``time.sleep`` for real clocks)."""
    sleep = getattr(clock, "sleep", None)
    return sleep if callable(sleep) else time.sleep


def async_sleeper(clock: Optional[Clock]) -> Callable[[float], Awaitable[None]]:
    """The asyncio sleep that matches ``clock`` (``asyncio.sleep`` for real clocks)."""
    sleep = getattr(clock, "sleep_async", None)
    return sleep if callable(sleep) else _asyncio_sleep


async def _asyncio_sleep(seconds: float) -> None:
    """``asyncio.sleep``, imported on first use: building a guard never imports asyncio."""
    import asyncio

    await asyncio.sleep(seconds)
