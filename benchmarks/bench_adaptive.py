"""The adaptive limiter and the load shedder per call, against a bulkhead in the same run.

Same no-op handler everywhere; each round makes 1000 calls. The adaptive cases differ in
how much of the algorithm each call runs: ``pooled`` adds every call to the window (the
default's path for calls of 100 us or more; the algorithm itself runs once per window),
``default`` skips the sample (a no-op call is under ``min_rtt``), ``per_call`` runs the
algorithm on every call (``window=0``). Read ``adaptive_*`` against ``bulkhead``.
"""
from __future__ import annotations

import pytest

import gameguard as gg
from gameguard.adaptive import AdaptiveLimiter
from gameguard.shedder import CpuSampler, LoadShedder

from bench_breaker import _twin, handler


@pytest.mark.benchmark(group="adaptive-sync")
def test_bare_call(benchmark, loop_calls):
    benchmark(loop_calls(handler))


@pytest.mark.benchmark(group="adaptive-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_bulkhead(benchmark, loop_calls, kind):
    with _twin(kind):
        f = gg.Bulkhead(10_000)(handler)
    benchmark(loop_calls(f))


CASES = {
    "default": {},
    "pooled": {"min_rtt": 0.0},
    "per_call": {"window": 0.0},
}


@pytest.mark.benchmark(group="adaptive-sync")
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("algorithm", ["gradient2", "vegas", "aimd"])
def test_adaptive(benchmark, loop_calls, algorithm, case):
    with _twin("fast"):
        f = AdaptiveLimiter(algorithm, initial=10_000, max_limit=10_000, seed=1,
                            **CASES[case])(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="adaptive-sync")
def test_adaptive_pure(benchmark, loop_calls):
    with _twin("pure"):
        f = AdaptiveLimiter(min_rtt=0.0)(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="adaptive-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_shedder_cool(benchmark, loop_calls, kind):
    """The CPU is under the threshold: the common case, no window scan."""
    with _twin(kind):
        f = LoadShedder(cpu=CpuSampler(lambda: (0.0, 1.0)))(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="adaptive-sync")
def test_shedder_hot(benchmark, loop_calls):
    """The CPU is over the threshold: every call scans the 50 buckets."""
    with _twin("fast"):
        f = LoadShedder(cpu=lambda: 0.95)(handler)
    benchmark(loop_calls(f))
