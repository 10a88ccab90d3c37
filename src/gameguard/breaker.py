"""Circuit breaking: :class:`CircuitBreaker` (a state machine over a rolling window) and
:class:`AdaptiveThrottle` (Google SRE client-side throttling, as go-zero does it)."""
from __future__ import annotations

import collections
import logging
import math
import os
import threading
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import _impl
from .clock import Clock
from .errors import CircuitOpenError, ConfigurationError
from ._checks import check_callable, check_int, check_name, check_positive
from .guard import Classifier, ExceptionSpec, Guard

__all__ = ["CircuitBreaker", "AdaptiveThrottle", "BreakerListener"]

log = logging.getLogger("gameguard")

BreakerListener = Callable[["CircuitBreaker", str, str], Any]


def _check_rate(param: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigurationError(f"{param} must be a rate in (0, 1], got {value!r}")
    return float(value)


def _check_window(window: Any, buckets: Any) -> tuple[float, int]:
    window = check_positive("window", window)
    buckets = check_int("buckets", buckets, 1, 1 << 20)
    if window / buckets < 1e-6:
        raise ConfigurationError(
            f"buckets must leave each bucket at least 1 µs of the window, got window={window!r}, "
            f"buckets={buckets!r}")
    return window, buckets


class CircuitBreaker(Guard):
    """Stops calling a dependency that is failing or slow, and probes it back to health.

    Closed, it lets calls through and counts outcomes over the last ``window`` seconds (in
    ``buckets`` buckets). It opens when, with at least ``minimum_calls`` calls in the window,
    failures/calls ≥ ``failure_rate`` or slow/calls ≥ ``slow_call_rate`` (a call is slow when
    it lasts ≥ ``slow_call_duration``); or when failures in the window reach
    ``failure_count``; or after ``consecutive_failures`` failures in a row. Open, it rejects
    with :class:`CircuitOpenError` for ``open_duration`` seconds, then lets
    ``half_open_calls`` probes through: all succeed → closed with a fresh window, any
    failure → open again. Which exceptions are failures: ``record`` (types or a predicate),
    minus ``ignore``; see DESIGN §4.1.

    Per call: O(1) amortised, no allocation in the compiled build.
    """

    def __init__(self, name: Optional[str] = None, *, failure_rate: float = 0.5,
                 slow_call_rate: float = 1.0, slow_call_duration: Optional[float] = None,
                 minimum_calls: int = 20, window: float = 10.0, buckets: int = 10,
                 consecutive_failures: Optional[int] = None,
                 failure_count: Optional[int] = None, open_duration: float = 5.0,
                 half_open_calls: int = 1, record: ExceptionSpec = Exception,
                 ignore: Any = (), fallback: Optional[Callable[..., Any]] = None,
                 clock: Optional[Clock] = None) -> None:
        failure_rate = _check_rate("failure_rate", failure_rate)
        slow_call_rate = _check_rate("slow_call_rate", slow_call_rate)
        slow = math.inf if slow_call_duration is None else check_positive(
            "slow_call_duration", slow_call_duration)
        minimum_calls = check_int("minimum_calls", minimum_calls, 1)
        window, buckets = _check_window(window, buckets)
        consecutive = 0 if consecutive_failures is None else check_int(
            "consecutive_failures", consecutive_failures, 1)
        count = 0 if failure_count is None else check_int("failure_count", failure_count, 1)
        open_duration = check_positive("open_duration", open_duration)
        half_open_calls = check_int("half_open_calls", half_open_calls, 1, 1 << 16)
        self._classify = Classifier(record, ignore)  # type: ignore[method-assign]
        self._init_guard(check_name(name, "breaker"), clock, fallback)
        self._module = _impl.kernel("breaker")
        self._kernel = self._module.BreakerKernel(
            failure_rate, slow_call_rate, slow, minimum_calls, window, buckets, consecutive,
            count, open_duration, half_open_calls)
        self._config = dict(
            failure_rate=failure_rate, slow_call_rate=slow_call_rate,
            slow_call_duration=slow_call_duration, minimum_calls=minimum_calls, window=window,
            buckets=buckets, consecutive_failures=consecutive_failures,
            failure_count=failure_count, open_duration=open_duration,
            half_open_calls=half_open_calls)
        self._forced_open = self._module.FORCED_OPEN
        self._messages = tuple(f"circuit {self.name!r} is {state}"
                               for state in self._module.STATE_NAMES)
        self._listeners: List[BreakerListener] = []
        self._events_lock = threading.Lock()
        self._seen = 0
        self._queue: Deque[Tuple[int, int]] = collections.deque()  # (old, new) to deliver
        self._delivering = False

    # -- state --------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``"closed" | "open" | "half_open" | "forced_open" | "disabled"`` at this moment."""
        state = self._kernel.poll(self._now())
        if self._kernel.pending:
            self._service()
        return self._module.STATE_NAMES[state]  # type: ignore[no-any-return]

    def allow(self) -> bool:
        """Admission without a call: ``True`` takes a permit, which must be returned with
        :meth:`record_success` or :meth:`record_failure`. Prefer ``@breaker`` or ``with``."""
        now = self._now()
        token = self._kernel.enter(now)
        if self._kernel.pending:
            self._service()
        if token < 0:
            return False
        tokens = self._manual_tokens.setdefault(threading.get_ident(), [])
        tokens.append(token)
        return True

    @property
    def _manual_tokens(self) -> Dict[int, List[int]]:
        try:
            return self.__dict__["_manual"]  # type: ignore[no-any-return]
        except KeyError:
            return self.__dict__.setdefault("_manual", {})  # type: ignore[no-any-return]

    def _manual_record(self, outcome: int, duration: float) -> None:
        tokens = self._manual_tokens.get(threading.get_ident())
        token = tokens.pop() if tokens else self._other_threads_permit()
        if token is None:
            # without a permit from allow(), record against the current state epoch
            token = self._kernel.enter(self._now())
        if token < 0:
            return
        self._kernel.exit(token, self._now(), float(duration), outcome)
        if self._kernel.pending:
            self._service()

    def _other_threads_permit(self) -> Optional[int]:
        """The oldest permit another thread took with :meth:`allow`: outcomes are often
        reported from a callback or completion thread. Leaving that permit behind would
        leak it (and, half-open, keep its probe slot busy for ``open_duration``)."""
        for tokens in list(self._manual_tokens.values()):  # a copy: others may add threads
            try:
                return tokens.pop(0)  # atomic under the GIL; another reporter may win
            except IndexError:
                continue
        return None

    def record_success(self, duration: float = 0.0) -> None:
        """Report a successful call (taken with :meth:`allow`) that lasted ``duration`` s."""
        self._manual_record(0, duration)

    def record_failure(self, duration: float = 0.0) -> None:
        """Report a failed call (taken with :meth:`allow`) that lasted ``duration`` s."""
        self._manual_record(1, duration)

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` (``retry_after`` is ``None``)."""
        self._set(self._module.FORCED_OPEN)

    def disable(self) -> None:
        """Let every call through and record nothing, until :meth:`reset`."""
        self._set(self._module.DISABLED)

    def reset(self) -> None:
        """Back to closed with a fresh window."""
        self._set(self._module.CLOSED)

    def _set(self, state: int) -> None:
        self._kernel.force(state, self._now())
        self._service()

    def snapshot(self) -> Dict[str, Any]:
        """State and window counters at this moment, plus the configuration."""
        now = self._now()
        state = self.state
        calls, failures, slow, duration = self._kernel.totals(now)
        retry = self._kernel.retry_after(now)
        return {
            "name": self.name, "state": state, "calls": calls, "failures": failures,
            "slow_calls": slow,
            "failure_rate": failures / calls if calls else 0.0,
            "slow_call_rate": slow / calls if calls else 0.0,
            "mean_duration": duration / calls if calls else 0.0,
            "consecutive_failures": self._kernel.consecutive,
            "retry_after": retry if retry >= 0 and state != "forced_open" else None,
            "config": dict(self._config),
        }

    # -- events -------------------------------------------------------------------------
    def on_state_change(self, callback: BreakerListener) -> BreakerListener:
        """Call ``callback(breaker, old_state, new_state)`` after every change. Usable as a
        decorator; a listener that raises is logged and never breaks the call."""
        check_callable("callback", callback)
        self._listeners.append(callback)
        return callback

    def _service(self) -> None:
        """Report new transitions to the listeners, in order.

        One thread delivers at a time; a transition made meanwhile (by another thread, or
        by a listener itself, e.g. one that calls :meth:`force_open`) is queued and
        delivered by that same loop after the event in hand, so every listener sees the
        changes in the order they happened.
        """
        kernel = self._kernel
        kernel.pending = 0  # clear first, then drain from the transition counter: no loss
        names = self._module.STATE_NAMES
        size = self._module.LOG_SIZE
        with self._events_lock:
            end = kernel.transitions
            start = max(self._seen, end - size)
            if start > self._seen:
                log.warning("gameguard: %s: %d state changes happened too fast to report",
                            self.name, start - self._seen)
            entries = kernel.log
            self._queue.extend(divmod(entries[i % size], 8) for i in range(start, end))
            self._seen = end
            if self._delivering or not self._queue:
                return
            self._delivering = True
        try:
            while True:
                with self._events_lock:
                    if not self._queue:
                        self._delivering = False
                        return
                    old, new = self._queue.popleft()
                for listener in tuple(self._listeners):
                    try:
                        listener(self, names[old], names[new])
                    except Exception:
                        log.exception("gameguard: state listener %r of %s raised", listener,
                                      self.name)
        except BaseException:
            with self._events_lock:
                self._delivering = False
            raise

    # -- the guard protocol -------------------------------------------------------------
    def _rejection(self, now: float) -> CircuitOpenError:
        kernel = self._kernel
        state = kernel.state
        retry = None if state == self._forced_open else kernel.retry_after(now)
        err: CircuitOpenError = self._call.new_rejection(
            CircuitOpenError, self._messages[state], retry, self.name)
        return err


class AdaptiveThrottle(Guard):
    """Google SRE client-side throttling (SRE book ch. 21; go-zero's ``googleBreaker``).

    Over the last ``window`` seconds it counts ``requests`` (every attempt, dropped ones
    too) and ``accepts`` (calls the dependency answered), and drops a new call with
    probability ``max(0, (requests - protection - k * accepts) / (requests + 1))``.
    Healthy, ``accepts ≈ requests`` and nothing is dropped; as the dependency fails, the
    throttle sheds load smoothly instead of flipping open. Dropped calls raise
    :class:`CircuitOpenError` with ``retry_after=None``. ``rng`` (a zero-argument callable
    returning [0, 1)) makes the drops reproducible; by default a splitmix64 stream in the
    kernel is used (no Python call).
    """

    def __init__(self, name: Optional[str] = None, *, k: float = 1.5, protection: float = 5,
                 window: float = 10.0, buckets: int = 40, record: ExceptionSpec = Exception,
                 ignore: Any = (), fallback: Optional[Callable[..., Any]] = None,
                 clock: Optional[Clock] = None, rng: Optional[Callable[[], float]] = None,
                 seed: Optional[int] = None) -> None:
        k = check_positive("k", k)
        if k < 1.0:
            raise ConfigurationError(f"k must be >= 1 (k < 1 sheds healthy traffic), got {k!r}")
        if isinstance(protection, bool) or not isinstance(protection, (int, float)) or \
                not 0 <= protection < math.inf:
            raise ConfigurationError(f"protection must be a finite number >= 0, got {protection!r}")
        window, buckets = _check_window(window, buckets)
        check_callable("rng", rng)
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigurationError(f"seed must be an int or None, got {seed!r}")
        self._classify = Classifier(record, ignore)  # type: ignore[method-assign]
        self._init_guard(check_name(name, "throttle"), clock, fallback)
        self._kernel = _impl.kernel("breaker").ThrottleKernel(
            k, float(protection), window, buckets, seed, rng)

    def drop_probability(self) -> float:
        """The probability that a call made now is dropped."""
        return float(self._kernel.drop_probability(self._now()))

    def allow(self) -> bool:
        """Admission without a call; report the outcome with ``record_success``/``_failure``."""
        return bool(self._kernel.enter(self._now()) >= 0)

    def record_success(self, duration: float = 0.0) -> None:
        self._kernel.exit(0, self._now(), float(duration), 0)

    def record_failure(self, duration: float = 0.0) -> None:
        self._kernel.exit(0, self._now(), float(duration), 1)

    def snapshot(self) -> Dict[str, Any]:
        now = self._now()
        requests, not_accepted, _, _ = self._kernel.totals(now)
        return {"name": self.name, "requests": requests, "accepts": requests - not_accepted,
                "drop_probability": float(self._kernel.drop_probability(now))}

    def _rejection(self, now: float) -> CircuitOpenError:
        return CircuitOpenError(f"throttle {self.name!r} dropped the call (adaptive throttling)",
                                retry_after=None, name=self.name)
