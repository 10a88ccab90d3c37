"""What a run is made of: its processes, its ports and its phases. No grpc here, so the
command line can describe the scenario (``--help``, bad arguments) without it installed."""
from __future__ import annotations

from typing import NamedTuple, Tuple

DOMAINS = ("matchmaking", "battle", "social", "payment")
GATEWAYS = 2
#: listening ports of a run: the four domains and the gateways, then (guarded) each one's
#: metrics endpoint
PORTS = 2 * (len(DOMAINS) + GATEWAYS)


class Phase(NamedTuple):
    name: str
    start: float  # fraction of the run
    end: float
    fault: str  # what the orchestrator injects in it ("" for none)


PHASES = (
    Phase("baseline", 0.00, 0.14, ""),
    Phase("pvp-burst", 0.14, 0.28, "burst"),
    Phase("cpu-saturated", 0.28, 0.42, "cpu"),
    Phase("dependency-slow-then-failing", 0.42, 0.56, "slow-fail"),
    Phase("service-killed", 0.56, 0.72, "kill"),
    Phase("redis-down", 0.72, 0.86, "redis"),
    Phase("recovery", 0.86, 1.00, ""),
)
FAULTS = tuple(p.fault for p in PHASES if p.fault)


def phase_at(frac: float, phases: Tuple[Phase, ...] = PHASES) -> Phase:
    for p in phases:
        if p.start <= frac < p.end:
            return p
    return phases[-1]
