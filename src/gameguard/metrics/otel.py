"""The OpenTelemetry exporter: the same families as observable instruments.

Names are the Prometheus names with dots for underscores and no ``_total``
(``gameguard.calls``, ``gameguard.circuit.breaker.state``), attributes the label names
prefixed with ``gameguard.`` (``gameguard.guard``, ``gameguard.outcome``). Counters are
observable counters (cumulative), the rest observable gauges; every callback reads the
registry when the SDK collects, so nothing is paid per call.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional

try:
    from opentelemetry import metrics as _otel
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError("gameguard.metrics.instrument needs opentelemetry-api: "
                      "pip install gameguard[otel]") from exc

from .. import __version__
from ._collect import FAMILIES, Spec, collect

__all__ = ["instrument", "otel_name"]


def otel_name(prometheus_name: str) -> str:
    """``gameguard_calls`` -> ``gameguard.calls``."""
    return prometheus_name.replace("_", ".")


def _callback(spec: Spec, source: Optional[Callable[[], Iterable[object]]]
              ) -> Callable[[CallbackOptions], List[Observation]]:
    keys = tuple(f"gameguard.{label}" for label in spec.labels)

    def observe(options: CallbackOptions) -> List[Observation]:
        family = next(f for f in collect(None if source is None else source())
                      if f.name == spec.name)
        return [Observation(value, dict(zip(keys, labels))) for labels, value in family.samples]
    return observe


def instrument(meter_provider: Any = None,
               registry: Optional[Callable[[], Iterable[object]]] = None) -> List[Any]:
    """Create gameguard's observable instruments on ``meter_provider`` (default: the
    global one) and return them. ``registry``: what to export, as for
    :class:`~gameguard.metrics.PrometheusCollector`. Call it once per provider."""
    if registry is not None and not callable(registry):
        from ..errors import ConfigurationError
        raise ConfigurationError(
            f"registry must be a zero-argument callable returning objects, got {registry!r}")
    provider = meter_provider if meter_provider is not None else _otel.get_meter_provider()
    meter = provider.get_meter("gameguard", __version__)
    made = []
    for spec in FAMILIES:
        make = (meter.create_observable_counter if spec.kind == "counter"
                else meter.create_observable_gauge)
        made.append(make(otel_name(spec.name), callbacks=[_callback(spec, registry)],
                         description=spec.help, unit="1"))
    return made
