"""A game server calling a flaky, slow matchmaking service, with and without a breaker.

Seeded and simulated (a :class:`ManualClock`, no sleeping): 240 requests per simulated
second for 40 s. The dependency is healthy, then from t=10 s times out and errors for
15 s, then recovers. Unguarded, every request waits for the sick service (up to the 1 s
timeout) and holds a worker; with the breaker, calls fail fast to a fallback while it is
open, a few probes find the recovery, and worker time is spent on players instead.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Tuple

from ..breaker import CircuitBreaker
from ..clock import ManualClock
from . import fold_changes, header

RATE = 240          # requests per simulated second
SECONDS = 40
TIMEOUT = 1.0       # the client's call timeout: a sick dependency costs this much


def _dependency(t: float, rng: random.Random) -> tuple[bool, float]:
    """(ok, latency) of one call to the matchmaking service at time ``t``."""
    if 10.0 <= t < 25.0:  # incident: mostly timeouts
        if rng.random() < 0.85:
            return False, TIMEOUT
        return True, rng.uniform(0.2, 0.6)
    return rng.random() > 0.01, rng.uniform(0.004, 0.012)


def _simulate(seed: int, guarded: bool, out: Callable[[str], Any]) -> Dict[str, Any]:
    rng = random.Random(seed)
    clock = ManualClock()
    breaker = CircuitBreaker("matchmaking", failure_rate=0.5, slow_call_duration=0.5,
                             slow_call_rate=0.5, minimum_calls=20, window=5.0, buckets=5,
                             open_duration=2.0, half_open_calls=3, clock=clock)
    states: List[Tuple[float, str, str]] = []
    breaker.on_state_change(lambda b, old, new: states.append((clock(), old, new)))
    totals: Dict[str, Any] = {"requests": 0, "dependency_calls": 0, "failed": 0, "fallbacks": 0,
              "worker_seconds": 0.0}
    step = 1.0 / RATE
    for second in range(SECONDS):
        calls = rejected = failed = 0
        for i in range(RATE):
            t = second + i * step
            clock.advance(t - clock())
            totals["requests"] += 1
            if guarded and not breaker.allow():
                rejected += 1  # fail fast: cached matchmaking estimate, no worker blocked
                totals["fallbacks"] += 1
                continue
            ok, latency = _dependency(t, rng)
            calls += 1
            totals["worker_seconds"] += latency
            if not ok:
                failed += 1
            if guarded:
                (breaker.record_success if ok else breaker.record_failure)(latency)
        totals["dependency_calls"] += calls
        totals["failed"] += failed
        if guarded and (second % 2 == 1 or 9 <= second <= 13 or 24 <= second <= 28):
            out(f"  {second + 1:>3d} s {calls:>6d} {rejected:>9d} {failed:>7d}   {breaker.state}")
    totals["transitions"] = states
    return totals


def run(seed: int = 7, out: Callable[[str], Any] = print) -> Dict[str, Any]:
    """Run both simulations, print the guarded one live and a comparison; return totals."""
    header(out, "Circuit breaker: the matchmaking service is sick from 10 s to 25 s into the run",
           f"{RATE} requests a second for {SECONDS} s through the breaker. Each row is a simulated",
           "second (every other one away from the incident): t its end, calls that reached the",
           "service, calls rejected at once (the fallback answered, no worker blocked), calls",
           "that failed, and the breaker's state at t.")
    out(f"  {'t':>5s} {'calls':>6s} {'rejected':>9s} {'failed':>7s}   state")
    guarded = _simulate(seed, True, out)
    unguarded = _simulate(seed, False, lambda line: None)
    out("  state changes:")
    for step in fold_changes(guarded["transitions"]):
        out(f"    {step}")
    out("  the whole run, without and with the breaker:")
    out(f"  {'':28s}{'unguarded':>12s}{'with breaker':>14s}")
    for key, label in (("dependency_calls", "calls to the sick service"),
                       ("failed", "player requests failed"),
                       ("fallbacks", "answered by fallback"),
                       ("worker_seconds", "worker-seconds blocked")):
        a, b = unguarded[key], guarded[key]
        fmt = "{:>12.0f}{:>14.0f}" if isinstance(a, float) else "{:>12d}{:>14d}"
        out(f"  {label:28s}" + fmt.format(a, b))
    saved = 1 - guarded["worker_seconds"] / unguarded["worker_seconds"]
    out(f"  the breaker saved {saved:.0%} of the worker time and "
        f"{unguarded['failed'] - guarded['failed']} failed requests")
    return {"guarded": guarded, "unguarded": unguarded}
