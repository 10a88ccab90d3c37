"""A seeded simulation: a server whose latency grows with concurrency beyond a knee.

The server has ``KNEE`` workers shared by every call in it (processor sharing): up to the
knee a call takes its own work (``BASE`` x U(0.8, 1.2)); beyond it every call slows by
``in_flight / KNEE``. Calls arrive as a Poisson stream at twice what the server can finish.
Time is a ``ManualClock`` moved from event to event; each admitted call enters and exits
the guard's kernel at the clock's readings (calls overlap, so no ``with`` block can carry
them). The measure is the p99 latency of the second half of the run and the limit there.
"""
from __future__ import annotations

import heapq
import math
import random
from typing import Any, List, Tuple

import pytest

import gameguard as gg
from gameguard.adaptive import AdaptiveLimiter
from gameguard.guard import FAILURE, SUCCESS

KNEE = 50
BASE = 0.010  # seconds of work per call


def simulate(guard: Any, clock: gg.ManualClock, *, load: float = 2.0, seconds: float = 60.0,
             seed: int = 1, deadline: float = math.inf) -> Tuple[float, List[int]]:
    """Run the server behind ``guard`` (None: no guard); returns (p99 latency, limits).
    A call over ``deadline`` ends as a drop (its caller timed out)."""
    rng = random.Random(seed)
    rate = load * KNEE / BASE
    kernel = guard._kernel if guard is not None else None
    virtual = 0.0  # work done per call so far: every call in service progresses alike
    calls: List[Tuple[float, float, int]] = []  # (virtual finish, start, token)
    next_arrival = clock() + rng.expovariate(rate)
    latencies: List[float] = []
    limits: List[int] = []
    half = clock() + seconds / 2
    end = clock() + seconds
    while clock() < end:
        now = clock()
        speed = min(1.0, KNEE / len(calls)) if calls else 1.0
        departure = now + (calls[0][0] - virtual) / speed if calls else math.inf
        at = min(next_arrival, departure)
        virtual += (at - now) * speed if calls else 0.0
        clock.advance(at - now)
        now = clock()
        if next_arrival <= departure:
            next_arrival = now + rng.expovariate(rate)
            token = kernel.enter(now) if kernel is not None else 0
            if token >= 0:
                heapq.heappush(calls, (virtual + BASE * rng.uniform(0.8, 1.2), now, token))
            continue
        virtual, start, token = heapq.heappop(calls)
        if kernel is not None:
            kernel.exit(token, now, now - start, FAILURE if now - start > deadline else SUCCESS)
        if now >= half:
            latencies.append(now - start)
            limits.append(int(kernel.limit) if kernel is not None else 0)
    latencies.sort()
    return latencies[int(0.99 * len(latencies))], limits


@pytest.fixture(scope="module")
def no_load_p99() -> float:
    p99, _ = simulate(None, gg.ManualClock(), load=0.2, seconds=20.0)
    assert BASE * 1.1 < p99 <= BASE * 1.2  # the work's own spread, nothing queued
    return p99


def test_a_fixed_bulkhead_at_four_times_the_knee_lets_latency_run_away(no_load_p99):
    clock = gg.ManualClock()
    p99, _ = simulate(gg.Bulkhead(4 * KNEE, clock=clock), clock)
    assert p99 > 2 * no_load_p99


def test_vegas_settles_near_the_knee_and_keeps_p99_within_twice_no_load(twin, no_load_p99):
    clock = gg.ManualClock()
    limiter = AdaptiveLimiter("vegas", clock=clock, seed=7)
    p99, limits = simulate(limiter, clock, seconds=60.0)
    assert all(0.8 * KNEE <= limit <= 1.2 * KNEE for limit in limits), (min(limits),
                                                                          max(limits))
    assert p99 <= 2 * no_load_p99


def test_gradient2_at_upstreams_tolerance_keeps_p99_within_twice_no_load(twin, no_load_p99):
    """concurrency-limits' ``rtt_tolerance=1.5`` tolerates RTTs up to 1.5x its long-term
    average, so on this server it holds the limit above the knee, and under demand that
    never lets up the long-term average follows the loaded RTT upwards (the drift discussed
    upstream, Netflix/concurrency-limits#134): over this run latency stays bounded, the
    limit far under the bulkhead's."""
    clock = gg.ManualClock()
    limiter = AdaptiveLimiter(rtt_tolerance=1.5, clock=clock)
    p99, limits = simulate(limiter, clock, seconds=60.0)
    assert p99 <= 2 * no_load_p99
    assert max(limits) < 2 * KNEE


def test_gradient2_default_settles_near_the_knee(twin, no_load_p99):
    """The default (``rtt_tolerance=1.0``): any rise over the long-term RTT backs the limit
    off, so it settles within 20 % of the knee and keeps p99 within 2x no-load."""
    clock = gg.ManualClock()
    limiter = AdaptiveLimiter(clock=clock)
    assert limiter.algorithm == "gradient2"
    p99, limits = simulate(limiter, clock)
    assert all(0.8 * KNEE <= limit <= 1.2 * KNEE for limit in limits), (min(limits),
                                                                          max(limits))
    assert p99 <= 2 * no_load_p99


def test_aimd_backs_off_on_callers_timing_out(twin, no_load_p99):
    """AIMD only hears drops: with callers giving up at 1.5x the work, it holds the limit
    where calls start to time out; without, it climbs a step a window."""
    clock = gg.ManualClock()
    limiter = AdaptiveLimiter("aimd", clock=clock)
    p99, limits = simulate(limiter, clock, deadline=1.5 * BASE)
    assert limiter.snapshot()["drops"] > 0
    assert max(limits) <= 1.3 * KNEE and p99 <= 2 * no_load_p99  # without drops: 79


if __name__ == "__main__":  # the table in docs/edge.md: python <this file> [seconds]
    import sys

    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    base, _ = simulate(None, gg.ManualClock(), load=0.2, seconds=20.0)
    cases = [("Bulkhead(200)", lambda c: gg.Bulkhead(4 * KNEE, clock=c)),
             ("vegas", lambda c: AdaptiveLimiter("vegas", clock=c, seed=7)),
             ("gradient2 (rtt_tolerance=1.0)", lambda c: AdaptiveLimiter(clock=c)),
             ("gradient2 rtt_tolerance=1.5", lambda c: AdaptiveLimiter(rtt_tolerance=1.5,
                                                                       clock=c)),
             ("aimd", lambda c: AdaptiveLimiter("aimd", clock=c)),
             ("aimd, callers give up at 15 ms", lambda c: AdaptiveLimiter("aimd", clock=c))]
    for label, make in cases:
        clock = gg.ManualClock()
        p99, limits = simulate(make(clock), clock, seconds=seconds,
                               deadline=1.5 * BASE if "give up" in label else math.inf)
        print(f"{label:30s} limit {min(limits)}-{max(limits)}  p99/no-load {p99 / base:.2f}")
