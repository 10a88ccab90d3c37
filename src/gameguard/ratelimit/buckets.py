"""Single buckets: :class:`TokenBucket` and :class:`LeakyBucket`."""
from __future__ import annotations

from .._hints import TYPE_CHECKING
from .. import _impl
from ..clock import Clock
from ..errors import ConfigurationError
from .._checks import check_name, check_non_negative
from ._common import check_rate_capacity
from ._waiting import _PacedGuard
from .._registry import register

if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional


class TokenBucket(_PacedGuard):
    """Token bucket: ``rate`` tokens per second, at most ``capacity`` stored (bursts).

    ``capacity=None`` holds one second of budget, at least one call:
    ``max(rate, 1.0)``; ``initial=None`` starts full. Costs and rates may be fractional;
    a ``cost`` above ``capacity`` could never be admitted and is a
    :class:`ConfigurationError`. Over any interval T the admitted cost is at most
    ``capacity + rate*T``.

    * ``try_acquire(cost=1) -> bool`` takes the tokens if they are there, never waits
      (O(1), the compiled kernel's method; ~the cost of a bare Python call).
    * ``acquire(cost=1, timeout=None)`` / ``await acquire_async(...)`` wait their turn
      (first come, first served; later ``try_acquire`` callers do not overtake waiters).
    * ``@bucket``, ``with bucket:``, ``async with bucket:`` take 1 token or raise
      :class:`RateLimitExceeded` with ``retry_after``.
    * ``configure(rate=..., capacity=...)`` changes the limits live.
    """

    _default_capacity = True

    def __init__(self, rate: float, capacity: Optional[float] = None, *,
                 initial: Optional[float] = None, clock: Optional[Clock] = None,
                 name: Optional[str] = None,
                 fallback: Optional[Callable[..., Any]] = None) -> None:
        self._rate, self._capacity = check_rate_capacity(rate, capacity, True)
        if initial is None:
            start = self._capacity
        else:
            start = check_non_negative("initial", initial)
            if start > self._capacity:
                raise ConfigurationError(
                    f"initial must be at most capacity={self._capacity!r}, got {initial!r}")
        self._init_guard(check_name(name, "token_bucket"), clock, fallback)
        self._kernel = _impl.kernel("bucket").TokenBucketKernel(
            self._rate, self._capacity, start, self._now(), self._clock)
        #: ``try_acquire(cost=1) -> bool``: the kernel's own method (one lookup, one C call)
        self.try_acquire = self._kernel.try_acquire  # type: ignore[method-assign]
        self._init_waiting()
        register(self)

    def try_acquire(self, cost: float = 1) -> bool:  # replaced per instance by the kernel's
        """Take ``cost`` tokens if there are that many now; never waits."""
        return bool(self._kernel.try_acquire(cost))

    def retry_after(self, cost: float = 1) -> float:
        """Seconds until ``try_acquire(cost)`` would succeed (0.0 if now). Exact: after
        waiting exactly this long (with no other caller in between) it succeeds."""
        return float(self._kernel.delay_at(self._now(), self._cost(cost)))

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while ``acquire`` waiters hold reservations)."""
        return float(self._kernel.level_at(self._now()))

    def _wait_needed(self, now: float, cost: float) -> float:
        return float(self._kernel.delay_at(now, cost))

    def snapshot(self) -> Dict[str, Any]:
        """The settings in force, tokens now and waiters."""
        return {**self._snapshot(), "tokens": self.tokens}

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate!r}, capacity={self.capacity!r}, name={self.name!r})"


class LeakyBucket(_PacedGuard):
    """Leaky bucket draining at ``rate`` per second, holding up to ``capacity``.

    As a **meter**, ``try_acquire(cost=1)`` admits while the level plus ``cost`` fits in
    ``capacity`` (GCRA kept as a level; with ``capacity=1`` calls are admitted at most one
    per ``1/rate`` seconds). As a **shaper**, ``acquire``/``acquire_async`` let every call
    through, evenly spaced: a call leaves when the bucket has drained everything before it,
    so consecutive shaped calls are at least ``cost/rate`` apart (Sentinel's uniform-rate
    queue). A call whose wait would pass ``timeout`` is refused at once, taking nothing.
    ``configure(rate=..., capacity=...)`` changes the limits live.
    """

    def __init__(self, rate: float, capacity: float = 1, *, clock: Optional[Clock] = None,
                 name: Optional[str] = None,
                 fallback: Optional[Callable[..., Any]] = None) -> None:
        self._rate, self._capacity = check_rate_capacity(rate, capacity, False)
        self._init_guard(check_name(name, "leaky_bucket"), clock, fallback)
        self._kernel = _impl.kernel("bucket").LeakyBucketKernel(
            self._rate, self._capacity, self._now(), self._clock)
        #: ``try_acquire(cost=1) -> bool``: the kernel's own method (one lookup, one C call)
        self.try_acquire = self._kernel.try_acquire  # type: ignore[method-assign]
        self._init_waiting()
        register(self)

    def try_acquire(self, cost: float = 1) -> bool:  # replaced per instance by the kernel's
        """Meter: admit ``cost`` if it fits in the bucket now; never waits."""
        return bool(self._kernel.try_acquire(cost))

    def retry_after(self, cost: float = 1) -> float:
        """Seconds until the meter would admit ``cost`` (0.0 if now); exact."""
        return float(self._kernel.delay_at(self._now(), self._cost(cost)))

    @property
    def level(self) -> float:
        """The bucket's level now (0 = empty)."""
        return float(self._kernel.level_at(self._now()))

    def _wait_needed(self, now: float, cost: float) -> float:
        return float(self._kernel.level_at(now)) / self._rate

    def snapshot(self) -> Dict[str, Any]:
        """The settings in force, the level now and waiters."""
        return {**self._snapshot(), "level": self.level}

    def __repr__(self) -> str:
        return f"LeakyBucket(rate={self.rate!r}, capacity={self.capacity!r}, name={self.name!r})"
