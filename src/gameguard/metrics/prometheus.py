"""The Prometheus exporter: a ``prometheus_client`` collector read at scrape time.

    from prometheus_client import REGISTRY, start_http_server
    from gameguard.metrics import PrometheusCollector
    REGISTRY.register(PrometheusCollector())
    start_http_server(9100)

Nothing is bumped for it on the per-call path: each scrape reads the counters the guards
keep anyway (see ``docs/operations.md`` for every family).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError("gameguard.metrics.PrometheusCollector needs prometheus_client: "
                      "pip install gameguard[prometheus]") from exc

from ._collect import FAMILIES, Family, collect

__all__ = ["PrometheusCollector"]


def _metric(f: Family) -> Metric:
    cls = CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily
    m = cls(f.name, f.help, labels=list(f.labels))
    for labels, value in f.samples:
        m.add_metric(list(labels), value)
    return m


class PrometheusCollector(Collector):
    """Exports gameguard's guards, limiters, caches, sagas, backends and rules sets.

    ``registry``: a zero-argument callable returning the objects to export (default:
    ``gameguard.registry``, every live object). Register it with a
    ``prometheus_client`` ``CollectorRegistry`` (``REGISTRY.register(...)``).
    """

    def __init__(self, registry: Optional[Callable[[], Iterable[object]]] = None) -> None:
        if registry is not None and not callable(registry):
            from ..errors import ConfigurationError
            raise ConfigurationError(
                f"registry must be a zero-argument callable returning objects, got {registry!r}")
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        objects = None if self._registry is None else self._registry()
        for family in collect(objects):
            yield _metric(family)

    def describe(self) -> Iterator[Metric]:
        """The families without samples (what registering checks for clashes)."""
        for s in FAMILIES:
            yield _metric(Family(s.name, s.kind, s.help, s.labels, []))
