"""Adaptive concurrency limits: :class:`AdaptiveLimiter`, a bulkhead whose limit follows
measured latency (Netflix concurrency-limits' Gradient2, Vegas and AIMD)."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

from . import _impl
from ._checks import check_int, check_name, check_non_negative, check_positive
from ._registry import register
from .clock import Clock
from .errors import BulkheadFullError, ConfigurationError, RejectedError
from .guard import FAILURE, IGNORED, SUCCESS, Classifier, ExceptionSpec, Guard

__all__ = ["AdaptiveLimiter", "DropClassifier"]

ALGORITHMS = ("gradient2", "vegas", "aimd")

#: each algorithm's own knobs and concurrency-limits' defaults for them, but one:
#: gradient2's rtt_tolerance is 1.0 here, not 1.5. At 1.5 the limit settles above the knee
#: and, under demand that never lets up, drifts upwards for ever (its long-term RTT
#: averages loaded RTTs; Netflix/concurrency-limits#134): 2x the knee after 300 s in
#: tests/test_adaptive_simulation.py, where 1.0 holds 56-58 against a knee of 50.
_KNOBS: Dict[str, Dict[str, float]] = {
    "gradient2": {"smoothing": 0.2, "queue_size": 4.0, "long_window": 600,
                  "rtt_tolerance": 1.0},
    "vegas": {"smoothing": 1.0, "probe_multiplier": 30.0},
    "aimd": {"backoff_ratio": 0.9, "timeout": 5.0},
}


class DropClassifier:
    """Sorts how a call ended for a latency-driven guard: ``SUCCESS`` (a latency sample),
    ``FAILURE`` (a drop: the call timed out or was refused downstream) or ``IGNORED``.

    ``ignore`` wins, then ``drop``; a ``RejectedError`` not listed in ``drop`` (an inner
    guard refused, so the call took no real time) and a non-``Exception`` (cancellation)
    are ignored; any other exception means the service answered: a sample.
    """

    __slots__ = ("_drop", "_ignore")

    def __init__(self, drop: ExceptionSpec, ignore: Any) -> None:
        self._drop = Classifier._spec("drop", drop)
        self._ignore = Classifier._spec("ignore", ignore)

    def __call__(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception) or Classifier._matches(self._ignore, exc):
            return IGNORED
        if Classifier._matches(self._drop, exc):
            return FAILURE
        return IGNORED if isinstance(exc, RejectedError) else SUCCESS


def _knobs(algorithm: str, given: Dict[str, Any]) -> Dict[str, float]:
    """The algorithm's knobs: defaults, overridden by those given (checked); a knob of
    another algorithm is a ``ConfigurationError`` rather than silently unused."""
    own = _KNOBS[algorithm]
    knobs = dict(own)
    for key, value in given.items():
        if value is None:
            continue
        if key not in own:
            users = [a for a, k in _KNOBS.items() if key in k]
            raise ConfigurationError(
                f"{key}={value!r} is a knob of {' and '.join(users)}, not of {algorithm!r}")
        if key == "long_window":
            knobs[key] = check_int(key, value, 1)
        elif key == "queue_size":
            knobs[key] = check_non_negative(key, value)
        else:
            knobs[key] = check_positive(key, value)
    if not 0.0 < knobs.get("smoothing", 1.0) <= 1.0:
        raise ConfigurationError(f"smoothing must be in (0, 1], got {knobs['smoothing']!r}")
    if knobs.get("rtt_tolerance", 1.0) < 1.0:
        raise ConfigurationError(f"rtt_tolerance must be >= 1, got {knobs['rtt_tolerance']!r}")
    if not 0.5 <= knobs.get("backoff_ratio", 0.9) < 1.0:
        raise ConfigurationError(
            f"backoff_ratio must be in [0.5, 1), got {knobs['backoff_ratio']!r}")
    return knobs


class AdaptiveLimiter(Guard):
    """At most ``limit`` calls in flight, where ``limit`` follows measured latency; a call
    over it is refused at once with :class:`BulkheadFullError`.

    ``algorithm`` is one of Netflix concurrency-limits' (with its defaults):

    - ``"gradient2"`` (default): ``gradient = clamp(rtt_tolerance * long_rtt / rtt, 0.5,
      1)``, ``limit = limit * (1 - smoothing) + (limit * gradient + queue_size) *
      smoothing``, where ``long_rtt`` is an exponential average over ``long_window``
      samples; ``smoothing=0.2, queue_size=4, long_window=600, rtt_tolerance=1.0``
      (concurrency-limits has 1.5, which lets the limit drift upwards under sustained
      overload; pass it to get their behaviour).
    - ``"vegas"``: from the no-load RTT (the smallest seen, re-probed every
      ``probe_multiplier * limit`` samples with jitter), ``queue = ceil(limit * (1 -
      rtt_noload / rtt))``; no queue grows the limit fast, a long one shrinks it, a drop
      shrinks it; ``smoothing=1.0, probe_multiplier=30``.
    - ``"aimd"``: a drop, or an RTT over ``timeout``, multiplies the limit by
      ``backoff_ratio``; otherwise +1 while at least half the limit is in use;
      ``backoff_ratio=0.9, timeout=5.0``.

    Every algorithm holds the limit while less than half of it is used (the RTT of an
    app-limited service says nothing about its capacity), and the limit stays within
    ``[min_limit, max_limit]``. With ``window > 0`` (seconds, default 1) samples are pooled
    as concurrency-limits' ``WindowedLimit`` does: when a window with at least
    ``window_samples`` samples ends, the algorithm sees their mean RTT, the largest in-flight
    count and whether any dropped; samples under ``min_rtt`` are skipped. ``window=0``
    updates on every call.

    How a call ended: an exception matching ``drop`` (default ``TimeoutError``; add
    ``RejectedError`` to treat a downstream's refusal as overload) is a drop; one matching
    ``ignore``, a cancellation, or a ``RejectedError`` from an inner guard counts as
    nothing; any other outcome is a latency sample. ``seed`` fixes Vegas' probe jitter.
    On the default clock the compiled kernel times calls with the CPU's time-stamp counter
    where Linux trusts it (cheaper than two precise clock reads); an injected ``clock``
    (a ``ManualClock``) times them itself.
    """

    def __init__(self, algorithm: str = "gradient2", *, initial: int = 20, min_limit: int = 1,
                 max_limit: int = 1000, window: float = 1.0, window_samples: int = 10,
                 min_rtt: float = 100e-6, smoothing: Optional[float] = None,
                 queue_size: Optional[float] = None, long_window: Optional[int] = None,
                 rtt_tolerance: Optional[float] = None,
                 probe_multiplier: Optional[float] = None,
                 backoff_ratio: Optional[float] = None, timeout: Optional[float] = None,
                 drop: ExceptionSpec = TimeoutError, ignore: Any = (),
                 seed: Optional[int] = None, fallback: Optional[Callable[..., Any]] = None,
                 clock: Optional[Clock] = None, name: Optional[str] = None) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
        min_limit = check_int("min_limit", min_limit, 1)
        max_limit = check_int("max_limit", max_limit, min_limit)
        initial = check_int("initial", initial, min_limit, max_limit)
        knobs = _knobs(algorithm, dict(
            smoothing=smoothing, queue_size=queue_size, long_window=long_window,
            rtt_tolerance=rtt_tolerance, probe_multiplier=probe_multiplier,
            backoff_ratio=backoff_ratio, timeout=timeout))
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self._classifier = DropClassifier(drop, ignore)
        self._init_guard(check_name(name, "adaptive"), clock, fallback)
        self._kernel = _impl.kernel("adaptive").AdaptiveKernel(
            ALGORITHMS.index(algorithm), float(initial), float(min_limit), float(max_limit),
            check_non_negative("window", window), check_int("window_samples", window_samples, 1),
            check_non_negative("min_rtt", min_rtt), knobs.get("smoothing", 1.0),
            knobs.get("queue_size", 0.0), int(knobs.get("long_window", 600)),
            knobs.get("rtt_tolerance", 1.0), knobs.get("probe_multiplier", 30.0),
            knobs.get("backoff_ratio", 0.9), knobs.get("timeout", float("inf")),
            check_int("seed", seed, 0, (1 << 64) - 1))
        if clock is None:  # the compiled kernel times calls with the CPU's counter if it can
            self._kernel.time_calls(True)
        self._settings = dict(algorithm=algorithm, initial=initial, min_limit=min_limit,
                              max_limit=max_limit, window=float(window),
                              window_samples=window_samples, min_rtt=float(min_rtt), **knobs)
        register(self)

    @property
    def algorithm(self) -> str:
        """``"gradient2"``, ``"vegas"`` or ``"aimd"`` (fixed at construction)."""
        return str(self._settings["algorithm"])

    @property
    def limit(self) -> int:
        """Calls allowed in flight now (what the algorithm has settled on)."""
        return int(self._kernel.limit)

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return int(self._kernel.in_flight)

    def snapshot(self) -> Dict[str, Any]:
        k = self._kernel
        return {"name": self.name, "algorithm": self.algorithm, "limit": int(k.limit),
                "estimate": float(k.estimate), "in_flight": int(k.in_flight),
                "samples": int(k.samples), "drops": int(k.drops), "rejected": int(k.rejected),
                "config": dict(self._settings)}

    def _classify(self, exc: BaseException) -> int:
        return self._classifier(exc)

    def _rejection(self, now: float) -> BulkheadFullError:
        return BulkheadFullError(
            f"adaptive limiter {self.name!r} is at its limit ({self.in_flight} in flight, "
            f"limit {self.limit})", retry_after=None, name=self.name)
