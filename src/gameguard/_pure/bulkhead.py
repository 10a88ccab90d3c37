"""Concurrency-limit kernel (pure twin of ``_fast/bulkhead.pyx``)."""
from __future__ import annotations

from .kernel import PENDING_WAKE, REJECT, GuardKernel
from .window import MAX_EPOCH, clock_error

__all__ = ["BulkheadKernel"]

_BELOW = -MAX_EPOCH  # negated once, not per call


class BulkheadKernel(GuardKernel):
    """At most ``limit`` admitted calls in flight. ``waiters`` is kept by the public layer;
    while it is non-zero every exit asks it (``pending``) to wake one.

    ``limit`` changes live through :meth:`set_limit`: below the calls in flight, those
    finish and new ones are refused until the count is under the new limit (no slot is
    lost or minted). ``limit`` and ``in_flight`` are read-only.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.precise = False  # counts calls in flight: time plays no part
        self._limit = limit
        self._in_flight = 0
        self.waiters = 0
        # bound once and read into locals by enter/exit, as in BreakerKernel (why: there)
        self._acquire, self._release = self._lock.acquire, self._lock.release

    limit = property(lambda self: self._limit)
    in_flight = property(lambda self: self._in_flight)

    def set_limit(self, limit: int) -> None:
        """A new bound from the next ``enter`` on (>= 1)."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._limit = limit

    def enter(self, now: float) -> int:
        if not _BELOW < now < MAX_EPOCH:  # time plays no part here, but the contract is one
            raise clock_error(now, MAX_EPOCH)
        acquire, release = self._acquire, self._release  # see BreakerKernel.__init__
        acquire()
        try:
            if self._in_flight < self._limit:
                self._in_flight += 1
                return 0
            return REJECT
        finally:
            release()

    def exit(self, token: int, now: float, duration: float, outcome: int) -> None:
        if token < 0:
            return
        acquire, release = self._acquire, self._release  # see BreakerKernel.__init__
        acquire()
        try:
            self._in_flight -= 1
            if self.waiters:
                self.pending |= PENDING_WAKE
        finally:
            release()
