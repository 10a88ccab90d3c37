"""Retries with exponential backoff and jitter: :class:`Retry`, :class:`RetryBudget` and
the delay formula :func:`backoff_delay`.

A retry is a second load on a dependency that may already be failing; the budget keeps the
sum of them bounded (Finagle's and Envoy's retry budgets): over any window, retries stay
within ``ratio`` of the calls plus a floor, so a failing dependency never sees a storm.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, Optional

from . import _impl
from ._checks import (check_callable, check_clock, check_int, check_name, check_non_negative,
                      check_positive)
from ._loop import warn_if_loop_thread
from ._pure.kernel import SplitMix64
from .clock import Clock, async_sleeper, monotonic, sleeper
from .errors import ConfigurationError, RejectedError
from .guard import Classifier, ExceptionSpec, WrappingGuard

__all__ = ["Retry", "RetryBudget", "backoff_delay"]

JITTERS = ("full", "equal", "none")


def backoff_delay(retry: int, base: float, cap: float, u: float,
                  exc: Optional[BaseException] = None) -> float:
    """Seconds to wait before retry number ``retry`` (1: the first retry).

    Exponential backoff with jitter: ``u * min(cap, base * 2**(retry - 1))``, where ``u`` in
    [0, 1] is the jitter draw (full jitter: uniform; none: 1). A :class:`RejectedError`
    ``exc`` (an inner guard refused, and says when it could admit) waits at least its
    ``retry_after``, capped at ``cap`` too: retrying earlier would be refused again.
    """
    delay = u * min(cap, base * 2.0 ** min(retry - 1, 1023))  # 2**1023: no overflow
    if isinstance(exc, RejectedError) and exc.retry_after:
        delay = max(delay, min(float(exc.retry_after), cap))
    return delay


class RetryBudget:
    """Retries allowed as a share of calls: over the last ``window`` seconds,
    ``retries <= ratio * calls + min_per_second * window``.

    Every call through a :class:`Retry` using this budget deposits once; every retry
    withdraws one, and a retry the budget cannot pay for is not made (the failure
    propagates). ``min_per_second`` keeps retries possible for a dependency that sees few
    calls. Share one budget between every ``Retry`` in front of the same dependency.
    Counts live in ``buckets`` buckets, so they expire in steps of ``window / buckets``.
    """

    def __init__(self, ratio: float = 0.2, min_per_second: float = 10.0, *,
                 window: float = 10.0, buckets: int = 10, clock: Optional[Clock] = None,
                 name: Optional[str] = None) -> None:
        self._ratio = check_non_negative("ratio", ratio)
        self._min_per_second = check_non_negative("min_per_second", min_per_second)
        self._window = check_positive("window", window)
        self._buckets = check_int("buckets", buckets, 1, 10_000)
        self._clock = check_clock(clock)
        self.name = check_name(name, "retry-budget")
        self._kernels = _impl.kernel("retry")  # the twin: a Retry using this budget uses it too
        self._kernel = self._kernels.Budget(
            self._ratio, self._min_per_second * self._window, self._window, self._buckets)
        self._refused = 0
        from ._registry import register
        register(self)

    ratio = property(lambda self: self._ratio, doc="Retries allowed per call.")
    min_per_second = property(lambda self: self._min_per_second,
                              doc="Retries allowed per second whatever the calls.")
    window = property(lambda self: self._window, doc="Seconds the counts cover.")

    def _now(self) -> float:
        return self._clock() if self._clock is not None else monotonic()

    def deposit(self) -> None:
        """Count one call (``Retry`` does this for every call it runs)."""
        self._kernel.deposit(self._now())

    def try_withdraw(self) -> bool:
        """Take one retry if the budget allows it now (``Retry`` does this per retry)."""
        if self._kernel.withdraw(self._now()):
            return True
        self._refused += 1  # an approximate count under threads, never a decision
        return False

    @property
    def balance(self) -> float:
        """Retries the budget would allow now."""
        return float(self._kernel.balance(self._now()))

    def snapshot(self) -> Dict[str, Any]:
        calls, retries = self._kernel.counts(self._now())
        return {"name": self.name, "calls": calls, "retries": retries,
                "balance": self._kernel.balance(self._now()), "refused": self._refused,
                "config": {"ratio": self._ratio, "min_per_second": self._min_per_second,
                           "window": self._window, "buckets": self._buckets}}

    def __repr__(self) -> str:
        return f"<RetryBudget {self.name!r} ratio={self._ratio} floor={self._min_per_second}/s>"


class Retry(WrappingGuard):
    """Re-run a failing call: at most ``attempts`` calls in all, the first included.

    Before retry ``n`` it waits :func:`backoff_delay` ``(n, backoff, max_backoff, u)``
    with ``u`` drawn per ``jitter``: ``"full"`` (uniform in [0, 1), the default: spreads
    clients best), ``"equal"`` (in [0.5, 1)) or ``"none"`` (1). ``retry_on`` (exception
    types or a predicate) says which exceptions are retried; others, and non-``Exception``
    ones (cancellation, KeyboardInterrupt), propagate at once. A :class:`RejectedError`
    from an inner guard (a pipeline's breaker or limiter) is retried after at least its
    ``retry_after`` (capped at ``max_backoff``), unless ``retry_on`` excludes it. With a
    ``budget``, a retry it cannot pay for is not made. When no retry is made the last
    failure propagates unchanged.

    A decorator for sync and async functions, and a :func:`~gameguard.pipeline` member:
    ``pipeline(retry, breaker)`` re-runs the breaker-guarded call, so the breaker counts
    every attempt. A ``with`` block cannot be re-run: ``with retry:`` is a ``TypeError``.
    Backoff sleeps follow ``clock`` (a ``ManualClock`` advances instead of sleeping);
    cancelling an async caller cancels its backoff sleep. ``rng`` (returning floats in
    [0, 1)) or ``seed`` makes the jitter reproducible.
    """

    def __init__(self, attempts: int = 3, *, backoff: float = 0.1, max_backoff: float = 2.0,
                 jitter: str = "full", retry_on: ExceptionSpec = Exception,
                 budget: Optional[RetryBudget] = None, clock: Optional[Clock] = None,
                 name: Optional[str] = None, rng: Optional[Callable[[], float]] = None,
                 seed: Optional[int] = None) -> None:
        self._attempts = check_int("attempts", attempts, 1)
        self._backoff = check_non_negative("backoff", backoff)
        self._max_backoff = check_non_negative("max_backoff", max_backoff)
        if jitter not in JITTERS:
            raise ConfigurationError(f"jitter must be one of {JITTERS}, got {jitter!r}")
        self._jitter = jitter
        self._retry_on = Classifier._spec("retry_on", retry_on)
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError(f"budget must be a RetryBudget or None, got {budget!r}")
        self._budget = budget
        self._kernels = _impl.kernel("retry") if budget is None else budget._kernels
        check_callable("rng", rng)
        if rng is None:
            s = int.from_bytes(os.urandom(8), "little") if seed is None else \
                check_int("seed", seed, 0, (1 << 64) - 1)
            rng = SplitMix64(s).next_float
        self._rng = rng
        self._init_wrapping(check_name(name, "retry"), clock)
        self._sleep = sleeper(self._clock)
        self._sleep_async = async_sleeper(self._clock)
        self._lock = threading.Lock()
        self._counts = {"retries": 0, "recovered": 0, "exhausted": 0, "not_retried": 0,
                        "budget_refused": 0}

    attempts = property(lambda self: self._attempts, doc="Calls at most, the first included.")
    backoff = property(lambda self: self._backoff, doc="Base delay of the first retry.")
    max_backoff = property(lambda self: self._max_backoff, doc="Cap on any delay.")
    jitter = property(lambda self: self._jitter, doc="``full``, ``equal`` or ``none``.")
    budget = property(lambda self: self._budget, doc="The RetryBudget, or None.")

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
        return {"name": self.name, **counts,
                "config": {"attempts": self._attempts, "backoff": self._backoff,
                           "max_backoff": self._max_backoff, "jitter": self._jitter,
                           "budget": None if self._budget is None else self._budget.name}}

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def _delay_after(self, attempt: int, exc: Exception) -> Optional[float]:
        """Seconds to wait before the next attempt after ``attempt`` failed with ``exc``;
        None: no retry (``exc`` propagates)."""
        if not Classifier._matches(self._retry_on, exc):
            self._count("not_retried")
            return None
        if attempt >= self._attempts:
            self._count("exhausted")
            return None
        if self._budget is not None and not self._budget.try_withdraw():
            self._count("budget_refused")
            return None
        u = 1.0 if self._jitter == "none" else self._rng()
        if self._jitter == "equal":
            u = 0.5 + 0.5 * u
        self._count("retries")
        return backoff_delay(attempt, self._backoff, self._max_backoff, u, exc)

    # -- the wrapping-guard hooks ----------------------------------------------------------
    def _wrap_sync(self, call: Callable[..., Any]) -> Callable[..., Any]:
        budget = self._budget

        def again(args: tuple[Any, ...], kwargs: Dict[str, Any], exc: Exception) -> Any:
            return self._retry_sync(call, args, kwargs, exc)

        return self._kernels.wrap_sync(  # type: ignore[no-any-return]
            call, again, None if budget is None else budget._kernel,
            None if budget is None else budget._clock)

    def _retry_sync(self, call: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: Dict[str, Any], exc: Exception) -> Any:
        """Attempts 2.. of a call whose first attempt raised ``exc``."""
        attempt = 1
        while True:
            delay = self._delay_after(attempt, exc)
            if delay is None:
                raise exc
            if delay > 0.0:
                try:
                    warn_if_loop_thread("Retry's backoff sleep", "an async function")
                except Warning as w:  # warnings raised as errors: the failure stays attached
                    raise w from exc
                self._sleep(delay)
            attempt += 1
            try:
                result = call(*args, **kwargs)
            except Exception as e:  # handled outside the except block: no __context__ chain
                exc = e
                continue
            self._count("recovered")
            return result

    def _wrap_async(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """One coroutine per call: the first attempt awaited in it directly, the retries
        (rare) in :meth:`_retry_async`."""
        import functools

        budget = self._budget
        # the budget's kernel and clock directly, as the sync path does
        deposit = None if budget is None else budget._kernel.deposit
        read = monotonic if budget is None or budget._clock is None else budget._clock
        retry_async = self._retry_async

        async def retried(*args: Any, **kwargs: Any) -> Any:
            if deposit is not None:
                deposit(read())
            try:
                return await call(*args, **kwargs)
            except Exception as e:  # retried outside the except block: no __context__
                exc = e
            return await retry_async(call, args, kwargs, exc)

        functools.update_wrapper(retried, call)
        return retried

    async def _retry_async(self, call: Callable[..., Any], args: tuple[Any, ...],
                           kwargs: Dict[str, Any], exc: Exception) -> Any:
        """Attempts 2.. of a call whose first attempt raised ``exc``."""
        attempt = 1
        while True:
            delay = self._delay_after(attempt, exc)
            if delay is None:
                raise exc
            if delay > 0.0:
                await self._sleep_async(delay)  # cancellation ends the call here
            attempt += 1
            try:
                result = await call(*args, **kwargs)
            except Exception as e:
                exc = e
                continue
            self._count("recovered")
            return result

    def __repr__(self) -> str:
        return f"<Retry {self.name!r} attempts={self._attempts}>"
