"""Metrics, pulled: :class:`PrometheusCollector` (extra ``gameguard[prometheus]``) and
:func:`instrument` for OpenTelemetry (extra ``gameguard[otel]``).

Guards keep cumulative C counters on their per-call path anyway; these exporters read them
(through the process registry, ``gameguard.registry()``) only when scraped, so a process
nobody scrapes pays nothing more. Importing this package imports neither client library:
each loads on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["PrometheusCollector", "instrument"]

if TYPE_CHECKING:
    from .otel import instrument as instrument
    from .prometheus import PrometheusCollector as PrometheusCollector
else:
    def __getattr__(name: str) -> Any:
        if name == "PrometheusCollector":
            from .prometheus import PrometheusCollector
            return PrometheusCollector
        if name == "instrument":
            from .otel import instrument
            return instrument
        raise AttributeError(f"module 'gameguard.metrics' has no attribute {name!r}")
