"""``python -m gameguard top``: a live terminal view of a process's guards.

Reads either this process's registry (``gameguard.registry()``) or a running process's
Prometheus endpoint (``--url http://host:port/metrics``, the families of
:class:`gameguard.metrics.PrometheusCollector`), and shows per guard its state, calls/s
and rejected/s, and per cache requests/s and hit ratio, refreshing every ``--interval``
seconds. Rates are the difference between two readings, so the first frame shows totals.
Plain text, no dependency: the endpoint's text format is parsed here.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, TextIO, Tuple

__all__ = ["add_arguments", "main", "parse", "read_local", "read_url", "render", "run"]

#: one reading: (sample name, sorted label pairs) -> value
Reading = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse(text: str) -> Reading:
    """The samples of a Prometheus text exposition (comments and timestamps skipped)."""
    out: Reading = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, body, value = m.groups()
        pairs = tuple(sorted(
            (k, re.sub(r'\\[\\"n]', lambda e: _UNESCAPE[e.group()], v))
            for k, v in _LABEL.findall(body or "")))
        try:
            out[(name, pairs)] = float(value)
        except ValueError:
            continue
    return out


def read_local(objects: Optional[Iterable[object]] = None) -> Reading:
    """This process's registry (or just ``objects``), as the Prometheus exporter would
    expose it."""
    from .metrics._collect import collect

    out: Reading = {}
    for f in collect(objects):
        name = f.name + "_total" if f.kind == "counter" else f.name
        for labels, value in f.samples:
            out[(name, tuple(sorted(zip(f.labels, labels))))] = float(value)
    return out


def read_url(url: str, timeout: float = 5.0) -> Reading:
    """A running process's ``/metrics`` endpoint."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode("utf-8", "replace"))


class _Row:
    __slots__ = ("kind", "name", "state", "calls", "rejected", "hits", "misses")

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name, self.state = kind, name, ""
        self.calls = self.rejected = self.hits = self.misses = 0.0


def _rows(reading: Reading) -> Dict[Tuple[str, str], _Row]:
    rows: Dict[Tuple[str, str], _Row] = {}
    for (name, pairs), value in reading.items():
        labels = dict(pairs)
        if name == "gameguard_calls_total":
            row = rows.setdefault((labels["type"], labels["guard"]),
                                  _Row(labels["type"], labels["guard"]))
            if labels["outcome"] == "rejected":
                row.rejected += value
            else:
                row.calls += value
        elif name == "gameguard_cache_requests_total":
            row = rows.setdefault(("cache", labels["cache"]), _Row("cache", labels["cache"]))
            if labels["result"] == "hit":
                row.hits += value
            else:
                row.misses += value
    for (name, pairs), value in reading.items():
        labels = dict(pairs)
        if name == "gameguard_circuit_breaker_state" and value == 1.0:
            # the family has no type label: a bulkhead named as its breaker (a rules
            # resource's guards share its name) has no state of its own
            breaker = rows.get(("circuit_breaker", labels["guard"]))
            if breaker is not None:
                breaker.state = labels["state"]
    return rows


def render(now: Reading, before: Optional[Reading] = None, seconds: float = 1.0) -> str:
    """One frame: a line per guard and cache. With ``before`` (``seconds`` earlier), rates
    per second; without, totals since start."""
    rows, old = _rows(now), _rows(before) if before is not None else {}
    per = "/s" if before is not None else ""
    dt = seconds if before is not None and seconds > 0 else 1.0
    lines = [f"{'TYPE':18} {'NAME':24} {'STATE':11} {'CALLS' + per:>10} "
             f"{'REJECTED' + per:>12} {'HIT %':>6}"]
    for key in sorted(rows):
        r, o = rows[key], old.get(key, _Row(*key))
        reads, hits = (r.hits + r.misses) - (o.hits + o.misses), r.hits - o.hits
        if r.kind == "cache":
            calls, rejected = reads / dt, ""
            ratio = f"{100.0 * hits / reads:5.1f}" if reads > 0 else "-"
        else:
            calls, rejected, ratio = (r.calls - o.calls) / dt, \
                f"{(r.rejected - o.rejected) / dt:12.1f}", ""
        lines.append(f"{r.kind:18} {r.name[:24]:24} {r.state or '-':11} {calls:10.1f} "
                     f"{rejected:>12} {ratio:>6}")
    if len(lines) == 1:
        lines.append("(no guards registered)")
    return "\n".join(lines)


def run(url: Optional[str] = None, interval: float = 1.0, iterations: Optional[int] = None,
        out: TextIO = sys.stdout, sleep: Callable[[float], None] = time.sleep) -> int:
    """Show frames until interrupted, or ``iterations`` of them; returns an exit code."""
    def read() -> Reading:
        return read_url(url) if url else read_local()

    clear = out.isatty()
    before: Optional[Reading] = None
    last = 0.0
    shown = 0
    try:
        while iterations is None or shown < iterations:
            if shown:
                sleep(interval)
            try:
                reading = read()
            except OSError as exc:
                out.write(f"gameguard top: cannot read {url}: {exc}\n")
                return 1
            taken = time.monotonic()
            frame = render(reading, before, taken - last)
            out.write(("\x1b[H\x1b[2J" if clear else ("\n" if shown else "")) + frame + "\n")
            out.flush()
            before, last, shown = reading, taken, shown + 1
    except KeyboardInterrupt:
        pass
    return 0


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def add_arguments(cli: argparse.ArgumentParser) -> None:
    """The ``top`` subcommand's options."""
    cli.add_argument("--url", help="a running process's Prometheus endpoint, e.g. "
                                   "http://127.0.0.1:9100/metrics (default: this process)")
    cli.add_argument("--interval", type=_non_negative, default=1.0,
                     help="seconds between refreshes (default: 1)")
    cli.add_argument("--iterations", type=_positive_int, default=None, metavar="N",
                     help="stop after N frames (default: until Ctrl-C)")
    cli.add_argument("--once", action="store_const", const=1, dest="iterations",
                     help="one frame, totals since start")


def main(argv: Optional[List[str]] = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m gameguard top", description=__doc__)
    add_arguments(cli)
    args = cli.parse_args(argv)
    return run(args.url, args.interval, args.iterations)
