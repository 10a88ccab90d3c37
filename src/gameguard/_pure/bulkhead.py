"""Concurrency-limit kernel (pure twin of ``_fast/bulkhead.pyx``)."""
from __future__ import annotations

from .kernel import PENDING_WAKE, REJECT, GuardKernel

__all__ = ["BulkheadKernel"]


class BulkheadKernel(GuardKernel):
    """At most ``limit`` admitted calls in flight. ``waiters`` is kept by the public layer;
    while it is non-zero every exit asks it (``pending``) to wake one."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.precise = False  # counts calls in flight: time plays no part
        self.in_flight = 0
        self.waiters = 0

    def enter(self, now: float) -> int:
        with self._lock:
            if self.in_flight < self.limit:
                self.in_flight += 1
                return 0
            return REJECT

    def exit(self, token: int, now: float, duration: float, outcome: int) -> None:
        if token < 0:
            return
        with self._lock:
            self.in_flight -= 1
            if self.waiters:
                self.pending |= PENDING_WAKE
