"""Drain kernel (pure twin of ``_fast/drain.pyx``): admits until started, counts in flight."""
from __future__ import annotations

from .kernel import PENDING_WAKE, REJECT, GuardKernel
from .window import MAX_EPOCH, clock_error

__all__ = ["DrainKernel"]

_BELOW = -MAX_EPOCH


class DrainKernel(GuardKernel):
    """Admits every call until :meth:`start`, then none; counts admitted calls in flight.

    ``waiters`` is kept by the public layer: while it is non-zero, the exit that leaves
    nothing in flight asks it (``pending``) to wake them. ``draining`` and ``in_flight``
    are read-only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.precise = False  # counts calls in flight: time plays no part
        self._draining = False
        self._in_flight = 0
        self.waiters = 0

    draining = property(lambda self: self._draining)
    in_flight = property(lambda self: self._in_flight)

    def start(self) -> None:
        """Refuse every ``enter`` from now on (calls in flight finish)."""
        self._draining = True

    def enter(self, now: float) -> int:
        if not _BELOW < now < MAX_EPOCH:  # time plays no part here, but the contract is one
            raise clock_error(now, MAX_EPOCH)
        with self._lock:
            if self._draining:
                return REJECT
            self._in_flight += 1
            return 0

    def exit(self, token: int, now: float, duration: float, outcome: int) -> None:
        if token < 0:
            return
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0 and self.waiters:
                self.pending |= PENDING_WAKE
