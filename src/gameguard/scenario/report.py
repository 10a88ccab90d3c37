"""The scenario's figures, its table, its JSON and its HTML report with charts."""
from __future__ import annotations

import html
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from . import metrics
from .load import ABUSERS, Outcome
from .plan import PHASES
from .gateway import HOT_TTL
from .run import audit, outcomes_in

#: the seed's targets, for the "target" column
TARGETS = {"fault_isolation_pct": (">=", 99.3), "p99_ms": ("<=", 8.0),
           "cold_start_ms": ("<=", 120.0), "sagas_lost": ("<=", 0),
           "effects_applied_twice": ("<=", 0)}
#: ops that do not touch battle, whose CPU the cpu fault saturates
OTHERS = ("chat", "auction")
BUDGET_RATE, BUDGET_CAPACITY = 5.0, 10.0
OPS = ("match", "teleport", "chat", "auction")


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def success(outcomes: List[Outcome], ops: Sequence[str]) -> Optional[float]:
    mine = [o for o in outcomes if o.op in ops and not abuser(o)]
    return None if not mine else sum(o.code == "OK" for o in mine) / len(mine)


def abuser(o: Outcome) -> bool:
    """One of the players who send far over their budget (apart in every success rate)."""
    return o.player.startswith("abuser")


def failures(players: List[Outcome], op: str) -> Dict[str, int]:
    """Failed ``op`` requests by gRPC status: ``RESOURCE_EXHAUSTED`` is a gateway with no
    worker left (or a budget), ``DEADLINE_EXCEEDED`` a player who gave up, ``UNAVAILABLE``
    a guard's refusal or a dependency down."""
    out: Dict[str, int] = {}
    for o in players:
        if o.op == op and o.code != "OK":
            out[o.code] = out.get(o.code, 0) + 1
    return out


def figures(run: Dict[str, Any]) -> Dict[str, Any]:
    """The headline figures of one run (the JSON's keys) and the per-phase table."""
    outs: List[Outcome] = run["outcomes"]
    d = run["duration"]
    phases = {}
    for p in PHASES:
        inside = outcomes_in(outs, p.start, p.end, d)
        players = [o for o in inside if not abuser(o)]
        phases[p.name] = {op: {"success": success(inside, (op,)),
                               "p50_ms": percentile([o.ms for o in inside
                                                     if o.op == op and o.code == "OK"], 0.5),
                               "p99_ms": percentile([o.ms for o in inside
                                                     if o.op == op and o.code == "OK"], 0.99),
                               "n": sum(o.op == op for o in players),
                               "failures": failures(players, op)} for op in OPS}
    base = outcomes_in(outs, PHASES[0].start, PHASES[0].end, d)
    cpu = next((p for p in PHASES if p.fault == "cpu"), None)
    isolation = None
    if cpu is not None and "cpu" in run["windows"]:
        before, during = success(base, OTHERS), success(
            outcomes_in(outs, cpu.start, cpu.end, d), OTHERS)
        if before and during is not None:
            isolation = 100.0 * min(1.0, during / before)
    sagas = audit(run["ledger"])
    hot_loads = run["stats"].get("payment", {}).get("item_loads", {}).get("hot", 0)
    admitted: Dict[str, int] = {}
    for o in outs:
        if abuser(o) and o.code == "OK":
            admitted[o.player] = admitted.get(o.player, 0) + 1
    bound = BUDGET_CAPACITY + BUDGET_RATE * d
    over = sum(max(0, n - int(bound)) for n in admitted.values())
    cold = [ms[0] for ms in run["cold_start_ms"].values() if ms]
    restarts = [ms[-1] for ms in run["cold_start_ms"].values() if len(ms) > 1]
    return {
        "fault_isolation_pct": isolation,
        "p99_ms": percentile([o.ms for o in base if o.code == "OK"], 0.99),
        "p50_ms": percentile([o.ms for o in base if o.code == "OK"], 0.5),
        "cold_start_ms": percentile(cold, 0.5),
        "cold_start_max_ms": max(cold) if cold else None,
        "restart_cold_start_ms": max(restarts) if restarts else None,
        "sagas_started": sagas["started"], "sagas_committed": sagas["committed"],
        "sagas_compensated": sagas["compensated"], "sagas_lost": sagas["lost"],
        "effects_applied_twice": sagas["applied_twice"],
        "loads_per_hot_key_expiry": hot_loads / max(1.0, d / HOT_TTL),
        "over_budget_admitted": over, "abusers": ABUSERS,
        "requests": len(outs), "phases": phases, "redis": run["redis"],
        "guards": metrics.summary(run.get("scrapes") or {}),
        # where the host's CPU went (battle's since its restart)
        "cpu_seconds": {label: round(float(s.get("cpu_seconds", 0.0)), 2)
                        for label, s in run["stats"].items()},
    }


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


HEADLINES = (("fault isolation % (CPU fault)", "fault_isolation_pct", 2),
             ("P50 latency, baseline (ms)", "p50_ms", 1),
             ("P99 latency, baseline (ms)", "p99_ms", 1),
             ("cold start to first RPC, median (ms)", "cold_start_ms", 0),
             ("cold start after SIGKILL (ms)", "restart_cold_start_ms", 0),
             ("sagas started", "sagas_started", 0), ("sagas committed", "sagas_committed", 0),
             ("sagas compensated", "sagas_compensated", 0), ("sagas lost", "sagas_lost", 0),
             ("effects applied twice", "effects_applied_twice", 0),
             ("loads per hot-key expiry", "loads_per_hot_key_expiry", 1),
             ("admitted over the player budget", "over_budget_admitted", 0))


def table(g: Dict[str, Any], u: Dict[str, Any]) -> str:
    rows = [("figure", "guarded", "unguarded", "seed's target")]
    for label, key, digits in HEADLINES:
        t = TARGETS.get(key)
        rows.append((label, _fmt(g.get(key), digits), _fmt(u.get(key), digits),
                     f"{t[0]} {t[1]}" if t else ""))
    lines = _columns(rows)
    lines.append("")
    rows = [("phase", "op", "success g/u", "p99 ms g/u")]
    for p in PHASES:
        for op in OPS:
            a, b = g["phases"][p.name][op], u["phases"][p.name][op]
            rows.append((p.name, op, f"{_pct(a['success'])} / {_pct(b['success'])}",
                         f"{_fmt(a['p99_ms'], 0)} / {_fmt(b['p99_ms'], 0)}"))
    lines += _columns(rows)
    lines += ["", "guards of the guarded run, read off each node's /metrics at the end of "
                  "each phase (the unguarded run has no guards):"]
    if g.get("guards"):
        lines += _columns(metrics.rows(g["guards"]))
    else:
        lines.append("(no readings)")
    return "\n".join(lines)


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _columns(rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def write_json(path: str, g: Dict[str, Any], u: Dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({"guarded": g, "unguarded": u}, f, indent=2, sort_keys=True)


def write_html(directory: str, runs: Dict[str, Dict[str, Any]], g: Dict[str, Any],
               u: Dict[str, Any], notes: List[str]) -> str:
    """``index.html`` with two PNG charts: success rate and P99 over time per op."""
    os.makedirs(directory, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for metric in ("success", "p99"):
        fig, axes = plt.subplots(len(OPS), 1, figsize=(10, 2.2 * len(OPS)), sharex=True)
        for ax, op in zip(axes, OPS):
            for mode, style in (("guarded", "-"), ("unguarded", "--")):
                xs, ys = _series(runs[mode], op, metric)
                ax.plot(xs, ys, style, label=mode)
            run = runs["guarded"]
            for fault, (a, b) in run["windows"].items():
                ax.axvspan(a * run["duration"], b * run["duration"], alpha=0.12, color="red")
                ax.text(a * run["duration"], ax.get_ylim()[1], fault, fontsize=7, va="top")
            ax.set_ylabel(op + (" success" if metric == "success" else " P99 ms"))
            if metric == "p99":
                ax.set_yscale("log")
        axes[0].legend(loc="lower left", fontsize=8)
        axes[-1].set_xlabel("seconds into the run (faults shaded)")
        fig.tight_layout()
        fig.savefig(os.path.join(directory, f"{metric}.png"), dpi=90)
        plt.close(fig)
    body = html.escape(table(g, u))
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = (f"<!doctype html><meta charset='utf-8'><title>gameguard scenario</title>"
            f"<h1>gameguard scenario: guarded vs unguarded, same seed</h1>"
            f"<pre>{body}</pre><ul>{note_items}</ul>"
            f"<h2>Success rate over time</h2><img src='success.png' alt='success rate'>"
            f"<h2>P99 latency over time</h2><img src='p99.png' alt='p99 latency'>")
    path = os.path.join(directory, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path


def _series(run: Dict[str, Any], op: str, metric: str) -> tuple[list[float], list[float]]:
    bins: Dict[int, List[Outcome]] = {}
    for o in run["outcomes"]:
        if o.op == op and not abuser(o):
            bins.setdefault(int(o.t), []).append(o)
    xs, ys = [], []
    for second in sorted(bins):
        outs = bins[second]
        if metric == "success":
            ys.append(sum(o.code == "OK" for o in outs) / len(outs))
        else:
            ok = [o.ms for o in outs if o.code == "OK"]
            if not ok:
                continue
            ys.append(percentile(ok, 0.99) or 0.0)
        xs.append(second + 0.5)
    return xs, ys
