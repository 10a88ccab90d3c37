"""The one reader of the registry: what every exported family holds right now.

Both exporters (:mod:`.prometheus`, :mod:`.otel`) and the ``top`` view read through
:func:`collect`, so a family means the same thing everywhere. Objects are read duck-typed
(guards by their kernel's counters, breakers by ``state``, backends by ``available`` and
``stats()``, rules sets by their reload counts), so guards and backends built elsewhere
are exported without a line here. Labels never carry a per-key value: cardinality is the
number of named objects.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

from .._log import logger
from .._registry import registry

__all__ = ["Family", "FAMILIES", "collect", "type_label"]

Labels = Tuple[str, ...]
Samples = Dict[Labels, float]

OUTCOMES = ("successful", "failed", "ignored", "rejected")  # calls_total's outcome label
BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled")


class Spec(NamedTuple):
    name: str            # Prometheus name, without the ``_total`` a counter adds
    kind: str            # "counter" or "gauge"
    help: str
    labels: Labels


class Family(NamedTuple):
    name: str
    kind: str
    help: str
    labels: Labels
    samples: List[Tuple[Labels, float]]


_SPECS = (
    Spec("gameguard_calls", "counter",
         "Calls through a guard by outcome (successful, failed, ignored, rejected).",
         ("guard", "type", "outcome")),
    Spec("gameguard_fallback_calls", "counter",
         "Rejected calls a fallback answered.", ("guard", "type")),
    Spec("gameguard_circuit_breaker_state", "gauge",
         "1 for the breaker's state in force, 0 for the other four.", ("guard", "state")),
    Spec("gameguard_circuit_breaker_failure_rate", "gauge",
         "Failed calls / calls in the window (-1 below minimum_calls).", ("guard",)),
    Spec("gameguard_circuit_breaker_slow_call_rate", "gauge",
         "Slow calls / calls in the window (-1 below minimum_calls).", ("guard",)),
    Spec("gameguard_bulkhead_in_flight", "gauge", "Calls holding a slot now.", ("guard",)),
    Spec("gameguard_bulkhead_max_concurrent", "gauge", "Slots the bulkhead allows.",
         ("guard",)),
    Spec("gameguard_rate_limiter_available_tokens", "gauge",
         "Budget available now (token bucket: tokens; leaky bucket: room; hybrid: burst "
         "tokens).", ("guard",)),
    Spec("gameguard_keyed_limiter_keys", "gauge", "Keys the keyed limiter holds now.",
         ("guard",)),
    Spec("gameguard_keyed_limiter_evictions", "counter",
         "Keys dropped from the table (refilled, idle or stalest).", ("guard",)),
    Spec("gameguard_cache_requests", "counter", "Cache reads by result (hit, miss, stale).",
         ("cache", "result")),
    Spec("gameguard_cache_loads", "counter", "Finished loader calls by outcome.",
         ("cache", "outcome")),
    Spec("gameguard_cache_size", "gauge", "Entries in the cache now.", ("cache",)),
    Spec("gameguard_cache_evictions", "counter", "Entries evicted for capacity.", ("cache",)),
    Spec("gameguard_saga_transactions", "counter",
         "Transactions run or recovered to an end, by status.", ("saga", "status")),
    Spec("gameguard_backend_available", "gauge",
         "1 while the shared backend answers, 0 while deciding on its fallback.",
         ("backend",)),
    Spec("gameguard_backend_fallback_decisions", "counter",
         "Decisions taken by the fallback while the backend was unavailable.", ("backend",)),
    Spec("gameguard_rules_reloads", "counter", "Rules reloads by result.", ("result",)),
    Spec("gameguard_rules_last_reload_successful", "gauge",
         "1 if the last reload of every rules set succeeded.", ()),
)
#: the exported families, in order: (name, kind, help, label names)
FAMILIES: Tuple[Spec, ...] = _SPECS


def type_label(obj: object) -> str:
    """The ``type`` label: the class name in snake case (``CircuitBreaker`` ->
    ``circuit_breaker``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(obj).__name__).lower()


class _Out:
    """Samples being gathered, per family; repeated label sets add up (two objects given
    the same name are one series) except for gauges, where the first wins."""

    def __init__(self) -> None:
        self.samples: Dict[str, Samples] = {s.name: {} for s in _SPECS}
        self.kinds = {s.name: s.kind for s in _SPECS}

    def add(self, family: str, labels: Labels, value: float) -> None:
        samples = self.samples[family]
        if labels in samples:
            if self.kinds[family] == "counter":
                samples[labels] += value
            return
        samples[labels] = value


def _guard(obj: Any, out: _Out) -> None:
    counters = getattr(getattr(obj, "_kernel", None), "counters", None)
    if counters is None:
        return
    name, kind = str(obj.name), type_label(obj)
    successful, failed, ignored, rejected, fallbacks = counters()
    for outcome, n in zip(OUTCOMES, (successful, failed, ignored, rejected)):
        out.add("gameguard_calls", (name, kind, outcome), n)
    out.add("gameguard_fallback_calls", (name, kind), fallbacks)


def _breaker(obj: Any, out: _Out) -> None:
    snap = obj.snapshot()
    state = snap.get("state")
    if state not in BREAKER_STATES:
        return
    name = str(obj.name)
    for s in BREAKER_STATES:
        out.add("gameguard_circuit_breaker_state", (name, s), 1.0 if s == state else 0.0)
    if "failure_rate" not in snap:
        return
    minimum = snap.get("config", {}).get("minimum_calls", 0)
    below = snap.get("calls", 0) < minimum
    out.add("gameguard_circuit_breaker_failure_rate", (name,),
            -1.0 if below else float(snap["failure_rate"]))
    out.add("gameguard_circuit_breaker_slow_call_rate", (name,),
            -1.0 if below else float(snap.get("slow_call_rate", 0.0)))


def _bulkhead(obj: Any, out: _Out) -> None:
    name = str(obj.name)
    out.add("gameguard_bulkhead_in_flight", (name,), float(obj.in_flight))
    out.add("gameguard_bulkhead_max_concurrent", (name,), float(obj.max_concurrent))


def _available_tokens(obj: Any) -> Optional[float]:
    if hasattr(obj, "tokens") and not callable(obj.tokens):  # TokenBucket
        return float(obj.tokens)
    if hasattr(obj, "level") and hasattr(obj, "capacity"):   # LeakyBucket: room left
        return float(obj.capacity) - float(obj.level)
    snap = obj.snapshot()
    if "burst_tokens" in snap:                                # HybridLimiter
        return float(snap["burst_tokens"])
    return None


def _limiter(obj: Any, out: _Out) -> None:
    tokens = _available_tokens(obj)
    if tokens is not None:
        out.add("gameguard_rate_limiter_available_tokens", (str(obj.name),), tokens)


def _keyed(obj: Any, out: _Out) -> None:
    snap = obj.snapshot()
    name = str(obj.name)
    out.add("gameguard_keyed_limiter_keys", (name,), float(snap["keys"]))
    out.add("gameguard_keyed_limiter_evictions", (name,), float(sum(snap["evicted"].values())))


def _cache(obj: Any, out: _Out) -> None:
    st = obj.stats()
    name = str(obj.name)
    out.add("gameguard_cache_requests", (name, "hit"), st["hits"])
    out.add("gameguard_cache_requests", (name, "miss"), st["misses"])
    out.add("gameguard_cache_requests", (name, "stale"), st["stale_served"])
    out.add("gameguard_cache_loads", (name, "success"), st["load_successes"])
    out.add("gameguard_cache_loads", (name, "failure"), st["load_failures"])
    out.add("gameguard_cache_size", (name,), float(st["size"]))
    out.add("gameguard_cache_evictions", (name,), st["evictions"])


def _saga(obj: Any, out: _Out) -> None:
    name = str(obj.name)
    for status, n in obj.outcomes().items():
        out.add("gameguard_saga_transactions", (name, status), n)


def _backend(obj: Any, out: _Out) -> None:
    name = str(obj.name)
    out.add("gameguard_backend_available", (name,), 1.0 if obj.available else 0.0)
    out.add("gameguard_backend_fallback_decisions", (name,),
            obj.stats()["fallback_decisions"])


def _rules(objs: List[Any], out: _Out) -> None:
    if not objs:
        return
    out.add("gameguard_rules_reloads", ("success",), sum(r.reloads_succeeded for r in objs))
    out.add("gameguard_rules_reloads", ("failure",), sum(r.reloads_failed for r in objs))
    out.add("gameguard_rules_last_reload_successful", (),
            1.0 if all(r.last_reload_successful for r in objs) else 0.0)


def _is_rules(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in
               ("reloads_succeeded", "reloads_failed", "last_reload_successful"))


def _readers(obj: Any) -> Iterable[Callable[[Any, _Out], None]]:
    """What to read of ``obj``, by what it has."""
    yield _guard
    if hasattr(obj, "state") and hasattr(obj, "snapshot") and hasattr(obj, "allow"):
        yield _breaker
    if hasattr(obj, "in_flight") and hasattr(obj, "max_concurrent"):
        yield _bulkhead
    if getattr(obj, "_needs_key", False) and hasattr(obj, "max_keys"):
        yield _keyed
    elif hasattr(obj, "try_acquire") and hasattr(obj, "snapshot"):
        yield _limiter
    if hasattr(obj, "get_or_load") and hasattr(obj, "stats"):
        yield _cache
    if callable(getattr(obj, "outcomes", None)):
        yield _saga
    if isinstance(getattr(obj, "available", None), bool) and callable(
            getattr(obj, "stats", None)):
        yield _backend


def collect(objects: Optional[Iterable[object]] = None) -> List[Family]:
    """Every family with its samples, read now from ``objects`` (default: the live
    registry). An object that fails to read is logged and left out of this read: a scrape
    never fails because of one guard."""
    out = _Out()
    rules: List[Any] = []
    for obj in registry() if objects is None else objects:
        if _is_rules(obj):
            rules.append(obj)
            continue
        for read in _readers(obj):
            try:
                read(obj, out)
            except Exception:
                logger().warning("gameguard.metrics: reading %r failed; left out of this "
                                 "scrape", obj, exc_info=True)
    _rules(rules, out)
    return [Family(s.name, s.kind, s.help, s.labels, list(out.samples[s.name].items()))
            for s in _SPECS]
