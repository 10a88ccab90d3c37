"""The exporters: exact families and labels through prometheus_client's text parser and the
OpenTelemetry SDK's in-memory reader; duck-typed backends and rules sets; the Grafana
dashboard only queries exported families; names are stable across processes."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import gameguard as gg
from gameguard._registry import register
from gameguard.metrics import PrometheusCollector, instrument
from gameguard.metrics._collect import collect

ROOT = Path(__file__).resolve().parents[1]


class Backend:
    """A stand-in shared backend: what the exporters read of one."""

    def __init__(self, name: str, available: bool, fallback_decisions: int) -> None:
        self.name, self.available, self._fallbacks = name, available, fallback_decisions
        register(self)

    def stats(self) -> Dict[str, int]:
        return {"decisions": 10, "fallback_decisions": self._fallbacks, "errors": 1,
                "leases": 0}


class Rules:
    """A stand-in rules set."""

    def __init__(self, ok: int, failed: int, last: bool) -> None:
        self.reloads_succeeded, self.reloads_failed, self.last_reload_successful = ok, failed, last
        register(self)


def build() -> List[Any]:
    """One of everything, driven a little, on a ManualClock."""
    clock = gg.ManualClock()
    breaker = gg.CircuitBreaker("db", consecutive_failures=1, minimum_calls=2, clock=clock)
    call = breaker(fallback=lambda: "cached")(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        call()
    assert call() == "cached"
    throttle = gg.AdaptiveThrottle("sre", clock=clock)
    bulkhead = gg.Bulkhead(4, name="pool", clock=clock)
    bucket = gg.TokenBucket(10, 20, clock=clock, name="tb")
    bucket.try_acquire(5)
    leaky = gg.LeakyBucket(5, 10, clock=clock, name="lb")
    leaky.try_acquire(4)
    hybrid = gg.HybridLimiter(clock=clock, name="moba")
    players = gg.KeyedLimiter(1, 1, max_keys=4, clock=clock, name="casts")
    for p in range(12):
        players.try_acquire(p)
    cache: gg.HotKeyCache[int] = gg.HotKeyCache(maxsize=8, clock=clock, name="profiles")
    cache.get_or_load(1, lambda k: k)
    cache.get(1)
    saga = gg.Saga("trade", store=gg.SQLiteStore(":memory:"))
    saga.step(lambda ctx: None, name="only")
    saga.run({})
    return [breaker, throttle, bulkhead, bucket, leaky, hybrid, players, cache, saga,
            Backend("redis", False, 7), Rules(3, 1, False), Rules(2, 0, True)]


def scrape(objects: List[Any]) -> Dict[str, Dict[Tuple[Tuple[str, str], ...], float]]:
    """Samples by sample name, then by sorted label pairs, as Prometheus would parse them."""
    reg = CollectorRegistry()
    reg.register(PrometheusCollector(lambda: objects))
    text = generate_latest(reg).decode()
    out: Dict[str, Dict[Tuple[Tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def labels(**kw: str) -> Tuple[Tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_prometheus_families_and_labels_are_exactly_the_documented_ones() -> None:
    objects = build()
    got = scrape(objects)
    guards = [("db", "circuit_breaker"), ("sre", "adaptive_throttle"), ("pool", "bulkhead"),
              ("tb", "token_bucket"), ("lb", "leaky_bucket"), ("moba", "hybrid_limiter"),
              ("casts", "keyed_limiter")]
    outcomes = ("successful", "failed", "ignored", "rejected")
    assert set(got["gameguard_calls_total"]) == {
        labels(guard=g, type=t, outcome=o) for g, t in guards for o in outcomes}
    assert set(got["gameguard_fallback_calls_total"]) == {labels(guard=g, type=t)
                                                          for g, t in guards}
    states = ("closed", "open", "half_open", "forced_open", "disabled")
    assert got["gameguard_circuit_breaker_state"] == {
        labels(guard="db", state=s): float(s == "open") for s in states}
    assert got["gameguard_circuit_breaker_failure_rate"] == {labels(guard="db"): -1.0}
    assert got["gameguard_circuit_breaker_slow_call_rate"] == {labels(guard="db"): -1.0}
    assert got["gameguard_bulkhead_in_flight"] == {labels(guard="pool"): 0.0}
    assert got["gameguard_bulkhead_max_concurrent"] == {labels(guard="pool"): 4.0}
    assert got["gameguard_rate_limiter_available_tokens"] == {
        labels(guard="tb"): 15.0, labels(guard="lb"): 6.0, labels(guard="moba"): 100.0}
    assert got["gameguard_keyed_limiter_keys"] == {labels(guard="casts"): 4.0}
    assert got["gameguard_keyed_limiter_evictions_total"] == {labels(guard="casts"): 8.0}
    assert got["gameguard_cache_requests_total"] == {
        labels(cache="profiles", result="hit"): 1.0, labels(cache="profiles", result="miss"): 1.0,
        labels(cache="profiles", result="stale"): 0.0}
    assert got["gameguard_cache_loads_total"] == {
        labels(cache="profiles", outcome="success"): 1.0,
        labels(cache="profiles", outcome="failure"): 0.0}
    assert got["gameguard_cache_size"] == {labels(cache="profiles"): 1.0}
    assert got["gameguard_cache_evictions_total"] == {labels(cache="profiles"): 0.0}
    assert got["gameguard_saga_transactions_total"] == {
        labels(saga="trade", status="committed"): 1.0,
        labels(saga="trade", status="compensated"): 0.0,
        labels(saga="trade", status="failed"): 0.0}
    assert got["gameguard_backend_available"] == {labels(backend="redis"): 0.0}
    assert got["gameguard_backend_fallback_decisions_total"] == {labels(backend="redis"): 7.0}
    assert got["gameguard_rules_reloads_total"] == {labels(result="success"): 5.0,
                                                    labels(result="failure"): 1.0}
    assert got["gameguard_rules_last_reload_successful"] == {(): 0.0}
    assert set(got) == EXPORTED
    # the counters are the guards' own
    calls = got["gameguard_calls_total"]
    assert calls[labels(guard="db", type="circuit_breaker", outcome="failed")] == 1.0
    assert calls[labels(guard="db", type="circuit_breaker", outcome="rejected")] == 1.0
    assert got["gameguard_fallback_calls_total"][labels(guard="db", type="circuit_breaker")] == 1
    assert calls[labels(guard="casts", type="keyed_limiter", outcome="successful")] == 12.0


#: every sample name the Prometheus exporter writes
EXPORTED: Set[str] = {
    "gameguard_calls_total", "gameguard_fallback_calls_total",
    "gameguard_circuit_breaker_state", "gameguard_circuit_breaker_failure_rate",
    "gameguard_circuit_breaker_slow_call_rate", "gameguard_bulkhead_in_flight",
    "gameguard_bulkhead_max_concurrent", "gameguard_rate_limiter_available_tokens",
    "gameguard_keyed_limiter_keys", "gameguard_keyed_limiter_evictions_total",
    "gameguard_cache_requests_total", "gameguard_cache_loads_total", "gameguard_cache_size",
    "gameguard_cache_evictions_total", "gameguard_saga_transactions_total",
    "gameguard_backend_available", "gameguard_backend_fallback_decisions_total",
    "gameguard_rules_reloads_total", "gameguard_rules_last_reload_successful"}


def test_the_default_collector_reads_the_live_registry() -> None:
    breaker = gg.CircuitBreaker("live-registry-check")
    breaker(lambda: None)()
    got = scrape_default()
    key = labels(guard="live-registry-check", type="circuit_breaker", outcome="successful")
    assert got["gameguard_calls_total"][key] == 1.0
    breaker(lambda: None)()  # read at scrape time: the next scrape sees the new call
    assert scrape_default()["gameguard_calls_total"][key] == 2.0


def scrape_default() -> Dict[str, Dict[Tuple[Tuple[str, str], ...], float]]:
    reg = CollectorRegistry()
    reg.register(PrometheusCollector())
    out: Dict[str, Dict[Tuple[Tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_an_object_that_fails_to_read_is_left_out_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Backend):
        def stats(self) -> Dict[str, int]:
            raise RuntimeError("backend stats broke")

    with caplog.at_level(logging.WARNING, logger="gameguard"):
        got = scrape([Broken("flaky", True, 0), Backend("fine", True, 2)])
    assert got["gameguard_backend_fallback_decisions_total"] == {labels(backend="fine"): 2.0}
    assert "backend stats broke" in caplog.text


def test_two_objects_with_one_name_are_one_series() -> None:
    clock = gg.ManualClock()
    a, b = gg.Bulkhead(1, name="same", clock=clock), gg.Bulkhead(1, name="same", clock=clock)
    a(lambda: None)()
    b(lambda: None)()
    got = scrape([a, b])
    assert got["gameguard_calls_total"][
        labels(guard="same", type="bulkhead", outcome="successful")] == 2.0
    assert got["gameguard_bulkhead_max_concurrent"] == {labels(guard="same"): 1.0}


def test_opentelemetry_instruments_give_the_same_families() -> None:
    objects = build()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        instrument(provider, registry=lambda: objects)
        data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    points: Dict[str, Dict[Tuple[Tuple[str, Any], ...], float]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "gameguard"
            for m in sm.metrics:
                points[m.name] = {tuple(sorted(p.attributes.items())): p.value
                                  for p in m.data.data_points}
    want = scrape(objects)
    assert set(points) == {re.sub(r"_total$", "", n).replace("_", ".") for n in want}
    for name, samples in want.items():
        otel = points[re.sub(r"_total$", "", name).replace("_", ".")]
        assert otel == {tuple(sorted((f"gameguard.{k}", v) for k, v in key)): value
                        for key, value in samples.items()}, name
    calls = points["gameguard.calls"]
    assert calls[(("gameguard.guard", "db"), ("gameguard.outcome", "failed"),
                  ("gameguard.type", "circuit_breaker"))] == 1


def test_the_grafana_dashboard_queries_only_exported_families() -> None:
    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v.get("query", "") if isinstance(v.get("query"), str)
              else v.get("query", {}).get("query", "")
              for v in dashboard.get("templating", {}).get("list", [])]
    names = {n for e in exprs for n in re.findall(r"\bgameguard_[a-z_]+", e)}
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("breaker state", "rejections", "hit ratio", "saga"):
        assert topic in titles
    assert len(exprs) >= 6 and names
    assert names <= EXPORTED, names - EXPORTED


STABLE = """
import gameguard as gg
from gameguard.metrics._collect import collect
# kept: the registry is weak, so an object nobody holds leaves it
kept = [gg.CircuitBreaker(), gg.CircuitBreaker(), gg.Bulkhead(2), gg.TokenBucket(5),
        gg.KeyedLimiter(rate=1), gg.HotKeyCache(maxsize=4), gg.AdaptiveThrottle(),
        gg.LeakyBucket(1), gg.HybridLimiter()]
for f in collect():
    print(f.name, sorted(f.samples))
"""


def test_series_are_the_same_in_two_fresh_processes() -> None:
    runs = [subprocess.run([sys.executable, "-c", STABLE], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1]
    assert "'breaker-2', 'circuit_breaker'" in runs[0]
    assert "0x" not in runs[0]


def test_importing_the_metrics_package_loads_no_client_library() -> None:
    code = ("import sys, gameguard.metrics as m; assert callable(m.__getattr__); "
            "print(sorted(n for n in sys.modules "
            "if n.startswith(('prometheus', 'opentelemetry'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_a_bad_registry_argument_is_refused() -> None:
    with pytest.raises(gg.ConfigurationError, match="registry"):
        PrometheusCollector(registry=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(gg.ConfigurationError, match="registry"):
        instrument(MeterProvider(), registry=[1])  # type: ignore[arg-type]


def test_every_guard_limiter_cache_and_saga_registers_itself(twin: str) -> None:
    clock = gg.ManualClock()
    made = [gg.CircuitBreaker(clock=clock), gg.AdaptiveThrottle(clock=clock),
            gg.Bulkhead(1, clock=clock), gg.TokenBucket(1, clock=clock),
            gg.LeakyBucket(1, clock=clock), gg.HybridLimiter(clock=clock),
            gg.KeyedLimiter(1, clock=clock), gg.HotKeyCache(clock=clock),
            gg.Saga("registered", store=gg.SQLiteStore(":memory:"))]
    live = gg.registry()
    assert all(any(o is m for o in live) for m in made)
    assert [o for o in live if any(o is m for m in made)] == made  # in order of creation
    names = {f.name: f for f in collect(made)}
    series = {labels[:2] for labels, _ in names["gameguard_calls"].samples}
    assert len(series) == 7  # the seven guards and limiters; cache and saga have their own
