"""One run of the scenario (guarded or not): start, load, faults on schedule, collect, stop."""
from __future__ import annotations

import asyncio
import os
import sqlite3
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from .cluster import Cluster, Redis
from .gateway import TELEPORT_STEPS
from .load import Load, Outcome
from .metrics import Scrapes
from .plan import PHASES


Action = Callable[[], Awaitable[Any]]


class Schedule:
    """Each phase's faults at their moments, lifted at the phase's end. A moment the ticks
    passed while the loop was busy (a slow restart on a loaded machine) is caught up at the
    next tick, so no fault is skipped and none left on."""

    def __init__(self, cluster: Cluster, redis: Redis, faults: Tuple[str, ...],
                 duration: float) -> None:
        self.windows = {p.fault: [p.start, p.end] for p in PHASES if p.fault in faults}
        self._events: List[Tuple[float, Action]] = []  # (fraction of the run, what to do)
        for p in PHASES:
            if p.fault in faults:
                span = p.end - p.start
                self._events += [(p.start + share * span, action) for share, action in
                                 self._actions(p.fault, cluster, redis, span * duration)]
        self._events.sort(key=lambda e: e[0])  # stable: a lift before the next injection

    @staticmethod
    def _actions(fault: str, c: Cluster, r: Redis, seconds: float
                 ) -> List[Tuple[float, Action]]:
        """(share of the phase, action): the fault's injection and its lifting."""
        if fault == "cpu":  # battle also stops by itself after ``seconds``, if not told
            return [(0.0, lambda: c.fault("battle", cpu=True, cpu_for=seconds)),
                    (1.0, lambda: c.fault("battle", cpu=False))]
        if fault == "slow-fail":
            return [(0.0, lambda: c.fault("payment", slow_ms=400)),
                    (0.5, lambda: c.fault("payment", slow_ms=0, fail=True)),
                    (1.0, lambda: c.fault("payment", slow_ms=0, fail=False))]
        if fault == "kill":
            return [(0.15, lambda: asyncio.to_thread(c.kill, "battle")),
                    (0.5, lambda: c.restart("battle"))]
        if fault == "redis" and r.binary:  # in threads: the loop keeps sending meanwhile
            return [(0.1, lambda: asyncio.to_thread(r.stop)),
                    (0.6, lambda: asyncio.to_thread(r.start))]
        return []  # the burst is the load's own doing

    async def tick(self, frac: float) -> None:
        while self._events and self._events[0][0] <= frac:
            _, action = self._events.pop(0)
            await action()

    async def finish(self) -> None:
        """Whatever is still due (the last ticks may stop short of a phase's end)."""
        await self.tick(float("inf"))


async def run_mode(guarded: bool, workdir: str, duration: float, seed: int,
                   faults: Tuple[str, ...], dsn: Optional[str] = None,
                   base_port: Optional[int] = None) -> Dict[str, Any]:
    """Run once; the raw material of the report."""
    os.makedirs(workdir, exist_ok=True)
    redis = Redis(workdir)
    redis.start()
    cluster = Cluster(workdir, guarded, redis.url, dsn, base_port)
    load: Optional[Load] = None
    try:
        await cluster.start()
        schedule = Schedule(cluster, redis, faults, duration)
        scrapes = Scrapes(cluster.metrics)
        announce(cluster.metrics)
        scrapes.take("start")
        load = Load(cluster.gateways, duration, seed, faults)

        async def tick(frac: float) -> None:
            scrapes.tick(frac)
            await schedule.tick(frac)
        await load.run(tick)
        await schedule.finish()
        await scrapes.finish()
        recovered = await recover(cluster) if guarded else 0
        stats = {label: await cluster.call(label, "Stats") for label in cluster.procs}
        return {"guarded": guarded, "duration": duration, "outcomes": load.outcomes,
                "windows": schedule.windows, "stats": stats, "recovered": recovered,
                "cold_start_ms": {label: p.cold_start_ms for label, p in cluster.procs.items()},
                "ledger": ledger(workdir), "redis": bool(redis.binary),
                "scrapes": scrapes.readings, "schemas": cluster.schemas}
    finally:
        if load is not None:
            await load.close()
        await cluster.close()
        cluster.stop()
        redis.stop()


def announce(endpoints: Dict[str, str]) -> None:
    """Tell the user how to watch the guards live while the run goes on."""
    if not endpoints:
        return
    first = "gateway-0" if "gateway-0" in endpoints else next(iter(endpoints))
    others = ", ".join(f"{label} {u}" for label, u in endpoints.items() if label != first)
    print(f"scenario: watch the guards live: python -m gameguard top --url "
          f"{endpoints[first]} ({first}; the others: {others})", flush=True)


async def recover(cluster: Cluster, rounds: int = 5) -> int:
    """What an operator does after the outages: recover every gateway's unfinished and
    failed teleports, again a little later while some still cannot finish (a breaker that
    opened in the outage only lets calls through again once its open spell ends)."""
    recovered = 0
    for attempt in range(rounds):
        unfinished = 0
        for label in ("gateway-0", "gateway-1"):
            answer = await cluster.call(label, "Recover")
            recovered += int(answer["recovered"])
            unfinished += int(answer["unfinished"])
        if not unfinished:
            break
        await asyncio.sleep(1.2)
    return recovered


def ledger(workdir: str) -> Dict[str, Dict[str, Dict[str, int]]]:
    """Every participant's effects: tx -> "step/phase" -> times applied."""
    out: Dict[str, Dict[str, Dict[str, int]]] = {}
    for service, _, _ in TELEPORT_STEPS:
        path = os.path.join(workdir, f"{service}-effects.db")
        if not os.path.exists(path):
            continue
        db = sqlite3.connect(path)
        try:
            for tx, step, phase, applied in db.execute("SELECT tx, step, phase, applied "
                                                       "FROM effects"):
                out.setdefault(tx, {}).setdefault(service, {})[phase] = int(applied)
        finally:
            db.close()
    return out


def audit(ledger_: Dict[str, Dict[str, Dict[str, int]]]) -> Dict[str, int]:
    """Teleports by how they ended, read off the participants' own ledgers (the one source
    both runs share): committed (every step applied, nothing undone), compensated (every
    applied step undone), lost (anything else: a player charged but never moved...)."""
    steps = {s for s, _, _ in TELEPORT_STEPS}
    counts = {"started": 0, "committed": 0, "compensated": 0, "lost": 0, "applied_twice": 0}
    for tx, by_service in ledger_.items():
        counts["started"] += 1
        done = {s for s, ph in by_service.items() if ph.get("action", 0) > 0}
        undone = {s for s, ph in by_service.items() if ph.get("compensation", 0) > 0}
        counts["applied_twice"] += sum(1 for ph in by_service.values()
                                       if ph.get("action", 0) > 1 or ph.get("compensation", 0) > 1)
        if done == steps and not undone:
            counts["committed"] += 1
        elif done <= undone:
            counts["compensated"] += 1
        else:
            counts["lost"] += 1
    return counts


def outcomes_in(outcomes: List[Outcome], start: float, end: float,
                duration: float) -> List[Outcome]:
    return [o for o in outcomes if start * duration <= o.t < end * duration]
