"""Circuit breaking: :class:`CircuitBreaker` (a state machine over a rolling window) and
:class:`AdaptiveThrottle` (Google SRE client-side throttling, as go-zero does it)."""
from __future__ import annotations

import collections
import collections.abc
import math
import os
import threading
from ._hints import TYPE_CHECKING
from . import _impl
from .clock import Clock
from .errors import CircuitOpenError, ConfigurationError
from ._checks import check_callable, check_int, check_name, check_positive
from ._settings import fixed_setting, live_setting, merge
from .guard import Classifier, ExceptionSpec, Guard
from ._registry import register
from ._log import logger

if TYPE_CHECKING:
    from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

__all__ = ["CircuitBreaker", "AdaptiveThrottle", "BreakerListener"]


#: ``listener(breaker, old_state, new_state)``; its result is ignored
BreakerListener = collections.abc.Callable[["CircuitBreaker", str, str], object]
_REJECTED: int = _impl.kernel("kernel").REJECTED


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


def _check_record(record: Any) -> Any:
    if isinstance(record, (tuple, list)) and not record:
        raise ConfigurationError(
            f"record must name at least one exception type or be a predicate (with none, the "
            f"breaker can never trip), got {record!r}")
    return record


def _breaker_settings(failure_rate: Any, slow_call_rate: Any, slow_call_duration: Any,
                      minimum_calls: Any, window: Any, buckets: Any, consecutive_failures: Any,
                      failure_count: Any, open_duration: Any,
                      half_open_calls: Any) -> Dict[str, Any]:
    """The breaker's settings, checked: the one routine for the constructor and configure()."""
    window, buckets = _check_window(window, buckets)
    return dict(
        failure_rate=_check_rate("failure_rate", failure_rate),
        slow_call_rate=_check_rate("slow_call_rate", slow_call_rate),
        slow_call_duration=None if slow_call_duration is None else check_positive(
            "slow_call_duration", slow_call_duration),
        minimum_calls=check_int("minimum_calls", minimum_calls, 1),
        window=window, buckets=buckets,
        consecutive_failures=None if consecutive_failures is None else check_int(
            "consecutive_failures", consecutive_failures, 1),
        failure_count=None if failure_count is None else check_int(
            "failure_count", failure_count, 1),
        open_duration=check_positive("open_duration", open_duration),
        half_open_calls=check_int("half_open_calls", half_open_calls, 1, 1 << 16))


def _kernel_thresholds(c: Dict[str, Any]) -> tuple[Any, ...]:
    """Settings as ``BreakerKernel.configure`` takes them (off is inf or 0), minus ``now``."""
    slow = math.inf if c["slow_call_duration"] is None else c["slow_call_duration"]
    return (c["failure_rate"], c["slow_call_rate"], slow, c["minimum_calls"],
            c["consecutive_failures"] or 0, c["failure_count"] or 0, c["open_duration"],
            c["half_open_calls"])


_BREAKER_LIVE = frozenset(("failure_rate", "slow_call_rate", "slow_call_duration",
                           "minimum_calls", "consecutive_failures", "failure_count",
                           "open_duration", "half_open_calls"))


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
    minus ``ignore`` (``ignore`` wins); see docs/breaker.md.

    Every setting but ``window`` and ``buckets`` can change live, with :meth:`configure` or
    by assigning the attribute of the same name; the window's counts are kept.

    Per call: O(1) amortised, no allocation in the compiled build.
    """

    failure_rate = live_setting("failure_rate", "Failure rate that trips, in (0, 1].")
    slow_call_rate = live_setting("slow_call_rate", "Slow-call rate that trips, in (0, 1].")
    slow_call_duration = live_setting("slow_call_duration",
                                      "Seconds from which a call is slow (None: not tracked).")
    minimum_calls = live_setting("minimum_calls", "Calls in the window before a rate trips.")
    consecutive_failures = live_setting("consecutive_failures",
                                        "Failures in a row that trip (None: off).")
    failure_count = live_setting("failure_count", "Failures in the window that trip (None: off).")
    open_duration = live_setting("open_duration", "Seconds open before probing.")
    half_open_calls = live_setting("half_open_calls", "Probes let through at a time, half open.")
    window = fixed_setting("window", "Seconds the rolling window covers (fixed).")
    buckets = fixed_setting("buckets", "Buckets in the window (fixed).")

    def __init__(self, name: Optional[str] = None, *, failure_rate: float = 0.5,
                 slow_call_rate: float = 1.0, slow_call_duration: Optional[float] = None,
                 minimum_calls: int = 20, window: float = 10.0, buckets: int = 10,
                 consecutive_failures: Optional[int] = None,
                 failure_count: Optional[int] = None, open_duration: float = 5.0,
                 half_open_calls: int = 1, record: ExceptionSpec = Exception,
                 ignore: Any = (), fallback: Optional[Callable[..., Any]] = None,
                 clock: Optional[Clock] = None) -> None:
        config = _breaker_settings(
            failure_rate, slow_call_rate, slow_call_duration, minimum_calls, window, buckets,
            consecutive_failures, failure_count, open_duration, half_open_calls)
        self._classify = Classifier(_check_record(record), ignore)  # type: ignore[method-assign]
        self._init_guard(check_name(name, "breaker"), clock, fallback)
        self._module = _impl.kernel("breaker")
        t = _kernel_thresholds(config)
        self._kernel = self._module.BreakerKernel(*t[:4], window, buckets, *t[4:])
        self._config = config
        self._config_lock = threading.Lock()
        self._manual_lock = threading.Lock()
        self._probes: List[Tuple[int, int]] = []  # (thread, token) of allow()ed probes
        self._forced_open = self._module.FORCED_OPEN
        self._messages = tuple(f"circuit {self.name!r} is {state}"
                               for state in self._module.STATE_NAMES)
        self._listeners: List[BreakerListener] = []
        self._events_lock = threading.Lock()
        self._seen = 0
        self._queue: Deque[Tuple[int, int]] = collections.deque()  # (old, new) to deliver
        self._delivering = False
        register(self)

    # -- state --------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``"closed" | "open" | "half_open" | "forced_open" | "disabled"`` at this moment."""
        state = self._kernel.poll(self._now())
        if self._kernel.pending:
            self._service()
        return self._module.STATE_NAMES[state]  # type: ignore[no-any-return]

    def configure(self, **changes: Any) -> None:
        """Change settings live, e.g. ``configure(failure_rate=0.9, open_duration=30)``.

        The constructor's checks run on the merged settings and all apply at once from the
        next outcome, or none does (``ConfigurationError``; so is an unknown name, and
        ``window``/``buckets``, fixed at construction). The window's counts and the state
        are kept; an open breaker's deadline becomes ``opened_at + open_duration``. Turning
        slow-call tracking on or off is refused: wrappers chose their clock for it when
        they were made.
        """
        with self._config_lock:
            config = _breaker_settings(**merge(self, self._config, changes, _BREAKER_LIVE))
            if (config["slow_call_duration"] is None) != \
                    (self._config["slow_call_duration"] is None):
                raise ConfigurationError(
                    f"slow_call_duration cannot switch slow-call tracking on or off on a live "
                    f"breaker (got {config['slow_call_duration']!r}, was "
                    f"{self._config['slow_call_duration']!r}); set it at construction")
            self._kernel.configure(*_kernel_thresholds(config), self._now())
            self._config = config
        if self._kernel.pending:
            self._service()

    def allow(self) -> bool:
        """Admission without a call: ``True`` takes a permit; report its outcome with
        :meth:`record_success` or :meth:`record_failure`. Prefer ``@breaker`` or ``with``.

        Bookkeeping is bounded: only half-open probes are remembered (at most
        ``half_open_calls`` hold a slot), and a probe that lost its slot is forgotten.
        """
        kernel = self._kernel
        token = kernel.enter(self._now())
        if kernel.pending:
            self._service()
        if token < 0:
            kernel.bump(_REJECTED)
            return False
        if token & 1:  # a half-open probe: its slot waits for this outcome
            with self._manual_lock:
                self._probes = self._held(self._probes)
                self._probes.append((threading.get_ident(), token))
        return True

    def _held(self, probes: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
        held = self._kernel.probe_owner
        return [p for p in probes if p[1] >> 1 in held]

    def _manual_record(self, outcome: int, duration: float) -> None:
        """An outcome goes to an outstanding probe that still holds its slot (this thread's
        first, else the oldest: outcomes are often reported from a completion thread);
        with none, to the current state epoch, which counts it only while closed. It never
        takes a probe slot of its own."""
        kernel = self._kernel
        token = kernel.generation * 2
        with self._manual_lock:
            probes = self._held(self._probes)
            if probes:
                me = threading.get_ident()
                mine = [i for i, (thread, _) in enumerate(probes) if thread == me]
                token = probes.pop(mine[0] if mine else 0)[1]
            self._probes = probes
        kernel.exit(token, self._now(), float(duration), outcome)
        kernel.bump(outcome)
        if kernel.pending:
            self._service()

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
            "config": dict(self._config), "counters": self._counters(),
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
                logger().warning("gameguard: %s: %d state changes happened too fast to report",
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
                        logger().exception("gameguard: state listener %r of %s raised", listener,
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


def _throttle_settings(k: Any, protection: Any, window: Any, buckets: Any) -> Dict[str, Any]:
    """The throttle's settings, checked: the one routine for the constructor and configure()."""
    k = check_positive("k", k)
    if k < 1.0:
        raise ConfigurationError(f"k must be >= 1 (k < 1 sheds healthy traffic), got {k!r}")
    if isinstance(protection, bool) or not isinstance(protection, (int, float)) or \
            not 0 <= protection < math.inf:
        raise ConfigurationError(f"protection must be a finite number >= 0, got {protection!r}")
    window, buckets = _check_window(window, buckets)
    return dict(k=k, protection=float(protection), window=window, buckets=buckets)


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
        config = _throttle_settings(k, protection, window, buckets)
        check_callable("rng", rng)
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        else:
            seed = check_int("seed", seed, 0, (1 << 64) - 1)
        self._classify = Classifier(_check_record(record), ignore)  # type: ignore[method-assign]
        self._init_guard(check_name(name, "throttle"), clock, fallback)
        self._kernel = _impl.kernel("breaker").ThrottleKernel(
            config["k"], config["protection"], config["window"], config["buckets"], seed, rng)
        self._config = config
        self._config_lock = threading.Lock()
        register(self)

    k = live_setting("k", "Accepts multiplier (>= 1); lower sheds more.")
    protection = live_setting("protection", "Requests in the window never shed.")
    window = fixed_setting("window", "Seconds the rolling window covers (fixed).")
    buckets = fixed_setting("buckets", "Buckets in the window (fixed).")

    def configure(self, **changes: Any) -> None:
        """Change ``k`` and/or ``protection`` live (same checks as the constructor, applied
        together from the next call; the window's counts are kept)."""
        with self._config_lock:
            config = _throttle_settings(**merge(self, self._config, changes, ("k", "protection")))
            self._kernel.configure(config["k"], config["protection"])
            self._config = config

    def drop_probability(self) -> float:
        """The probability that a call made now is dropped."""
        return float(self._kernel.drop_probability(self._now()))

    def allow(self) -> bool:
        """Admission without a call; report the outcome with ``record_success``/``_failure``."""
        if self._kernel.enter(self._now()) >= 0:
            return True
        self._kernel.bump(_REJECTED)
        return False

    def record_success(self, duration: float = 0.0) -> None:
        self._kernel.exit(0, self._now(), float(duration), 0)
        self._kernel.bump(0)

    def record_failure(self, duration: float = 0.0) -> None:
        self._kernel.exit(0, self._now(), float(duration), 1)
        self._kernel.bump(1)

    def snapshot(self) -> Dict[str, Any]:
        now = self._now()
        requests, not_accepted, _, _ = self._kernel.totals(now)
        return {"name": self.name, "requests": requests, "accepts": requests - not_accepted,
                "drop_probability": float(self._kernel.drop_probability(now)),
                "config": dict(self._config), "counters": self._counters()}

    def _rejection(self, now: float) -> CircuitOpenError:
        return CircuitOpenError(f"throttle {self.name!r} dropped the call (adaptive throttling)",
                                retry_after=None, name=self.name)
