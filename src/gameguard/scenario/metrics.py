"""The guarded run's guards, seen the way an operator sees them: through their metrics.

Each guarded node serves :class:`gameguard.metrics.PrometheusCollector` on a loopback port
(:func:`serve`), so ``python -m gameguard top --url ...`` works against it while the
scenario runs. The parent scrapes every node with :func:`gameguard.top.read_url` when the
run starts and at the end of each phase (:class:`Scrapes`), and the report gives, per node
and phase, the calls each guard refused and why, the breakers' open spells, the shedder's
drops and the hot-key cache's hit ratio.
"""
from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional

from ..top import Reading, read_url
from .plan import PHASES

#: why a guard of this type (the exporter's ``type`` label) refuses a call
REASONS = {"circuit_breaker": "open", "bulkhead": "full", "keyed_limiter": "over budget",
           "load_shedder": "overloaded"}
#: the one family the scenario adds to gameguard's: the exporter has the breaker's state
#: now, not how often it opened, and a phase can hold several open spells
OPENS = "scenario_breaker_opens"
START = "process_start_time_seconds"


def serve(port: int) -> None:
    """Serve this process's guards on ``http://127.0.0.1:port/metrics``, with a count of
    each breaker's openings. Call once the node's guards exist (it hooks their breakers)."""
    from prometheus_client import CollectorRegistry, Counter, ProcessCollector
    from prometheus_client import start_http_server

    from .._registry import registry
    from ..breaker import CircuitBreaker
    from ..metrics import PrometheusCollector

    reg = CollectorRegistry()
    reg.register(PrometheusCollector())
    ProcessCollector(registry=reg)  # its start time tells a restarted process apart
    opens = Counter(OPENS, "Times a breaker opened (closed or half-open to open).",
                    ["guard"], registry=reg)

    def opened(breaker: Any, old: str, new: str) -> None:
        if new == "open":
            opens.labels(breaker.name).inc()
    for obj in registry():
        if isinstance(obj, CircuitBreaker):
            opens.labels(obj.name)  # the series exists (at 0) before the first open
            obj.on_state_change(opened)
    try:
        start_http_server(port, addr="127.0.0.1", registry=reg)
    except OSError as e:
        raise SystemExit(f"metrics port {port} is taken: {e.strerror}") from None


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


class Scrapes:
    """Readings of every node's endpoint, by moment (``"start"`` or a phase's name)."""

    def __init__(self, urls: Dict[str, str]) -> None:
        self.urls = urls
        self.readings: Dict[str, Dict[str, Optional[Reading]]] = {}
        self._tasks: List[asyncio.Task[None]] = []

    def take(self, moment: str) -> None:
        """Scrape every node now, in the background (the schedule does not wait on it)."""
        if self.urls and moment not in self.readings:
            self.readings[moment] = {}
            self._tasks.append(asyncio.get_running_loop().create_task(self._take(moment)))

    async def _take(self, moment: str) -> None:
        loop = asyncio.get_running_loop()

        async def one(label: str, url: str) -> None:
            try:
                self.readings[moment][label] = await loop.run_in_executor(
                    None, read_url, url, 2.0)
            except OSError:  # a node that is down (killed, not yet back) has no reading
                self.readings[moment][label] = None
        await asyncio.gather(*(one(label, u) for label, u in self.urls.items()))

    def tick(self, frac: float) -> None:
        """Take the reading of every phase that has ended by ``frac``."""
        for p in PHASES:
            if p.end <= frac:
                self.take(p.name)

    async def finish(self) -> None:
        self.tick(1.0)
        await asyncio.gather(*self._tasks)


def summary(readings: Dict[str, Dict[str, Optional[Reading]]]
            ) -> Optional[Dict[str, Dict[str, Any]]]:
    """Per node: each phase's guard figures (``None`` where a reading is missing) and the
    run's totals (the phases that have figures, added up)."""
    if not readings:
        return None
    moments = ["start"] + [p.name for p in PHASES]
    nodes = sorted({n for r in readings.values() for n in r})
    out: Dict[str, Dict[str, Any]] = {}
    for node in nodes:
        phases: Dict[str, Optional[Dict[str, Any]]] = {}
        total: Reading = {}
        for before, now in zip(moments, moments[1:]):
            a, b = readings.get(before, {}).get(node), readings.get(now, {}).get(node)
            delta = None if a is None or b is None else _delta(a, b)
            phases[now] = None if delta is None else figures(delta)
            for k, v in (delta or {}).items():
                total[k] = total.get(k, 0.0) + v
        out[node] = {"phases": phases, "total": figures(total)}
    return out


def _delta(a: Reading, b: Reading) -> Reading:
    """Counts from ``a`` to ``b``; all of ``b`` if the process restarted in between."""
    start = [v for (name, _), v in b.items() if name == START]
    if start != [v for (name, _), v in a.items() if name == START]:
        a = {}
    return {k: v - a.get(k, 0.0) for k, v in b.items()
            if k[0].endswith("_total") and v - a.get(k, 0.0) > 0}


def figures(counts: Reading) -> Dict[str, Any]:
    """What a phase's counts say: refusals by guard and reason, breaker openings, shedder
    drops, each cache's hit ratio (percent, for the caches read in the phase)."""
    rejected: Dict[str, Dict[str, int]] = {}
    opens: Dict[str, int] = {}
    shed = 0
    cache: Dict[str, List[float]] = {}
    for (name, pairs), v in counts.items():
        labels = dict(pairs)
        if name == "gameguard_calls_total" and labels.get("outcome") == "rejected":
            kind = labels.get("type", "")
            reason = REASONS.get(kind, kind)
            by = rejected.setdefault(labels.get("guard", "?"), {})
            by[reason] = by.get(reason, 0) + int(v)
            if kind == "load_shedder":
                shed += int(v)
        elif name == OPENS + "_total":
            opens[labels.get("guard", "?")] = int(v)
        elif name == "gameguard_cache_requests_total":
            hits_reads = cache.setdefault(labels.get("cache", "?"), [0.0, 0.0])
            hits_reads[0] += v if labels.get("result") == "hit" else 0.0
            hits_reads[1] += v
    return {"rejected": rejected, "breaker_opens": opens, "shed": shed,
            "cache_hit_pct": {c: round(100.0 * h / n, 1) for c, (h, n) in cache.items()}}



def rows(guards: Optional[Dict[str, Dict[str, Any]]]) -> List[List[str]]:
    """The table's guard section: a row per node and phase where a guard did something,
    and each node's whole run."""
    out = [["node", "phase", "refused (guard reason count)", "breaker opens", "shed",
            "cache hit %"]]
    for node, data in (guards or {}).items():
        moments = list(data["phases"].items()) + [("whole run", data["total"])]
        for phase, f in moments:
            if f is None:
                out.append([node, phase, "(no reading: the node was down)", "", "", ""])
                continue
            if not (f["rejected"] or f["breaker_opens"] or f["cache_hit_pct"]):
                continue
            out.append([node, phase,
                        ", ".join(f"{g} {r} {n}" for g, by in sorted(f["rejected"].items())
                                  for r, n in sorted(by.items())) or "-",
                        ", ".join(f"{g} {n}" for g, n in sorted(f["breaker_opens"].items()))
                        or "-", str(f["shed"]) if f["shed"] else "-",
                        ", ".join(f"{c} {pct:.1f}" for c, pct in
                                  sorted(f["cache_hit_pct"].items())) or "-"])
    return out
