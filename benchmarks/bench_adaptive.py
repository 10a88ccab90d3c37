"""The adaptive limiter and the load shedder per call, against a bulkhead in the same run.

Same no-op handler everywhere; each round makes 1000 calls. The adaptive cases differ in
how much of the algorithm each call runs: ``pooled`` adds every call to the window (the
default's path for calls of 100 us or more; the algorithm itself runs once per window),
``default`` skips the sample (a no-op call is under ``min_rtt``), ``per_call`` runs the
algorithm on every call (``window=0``). Read ``adaptive_*`` against ``bulkhead``.

``test_interleaved`` runs bare, bulkhead and the adaptive limiter in turn, ``REPS`` times
(one group per turn, so each turn has its own bare baseline); for the medians and spread of
the ratios across turns:

    .venv/bin/python -m pytest benchmarks/bench_adaptive.py -p no:cacheprovider -k interleaved \
        --benchmark-min-rounds=30 --benchmark-json=/tmp/adaptive.json
    .venv/bin/python benchmarks/bench_adaptive.py /tmp/adaptive.json   # x the bulkhead
"""
from __future__ import annotations

import json
import statistics
import sys

import pytest

import gameguard as gg
from gameguard.adaptive import AdaptiveLimiter
from gameguard.shedder import CpuSampler, LoadShedder

from bench_breaker import _twin, handler
from conftest import LOOP


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


REPS = 10
INTERLEAVED = {
    "bare": lambda: handler,
    "bulkhead": lambda: gg.Bulkhead(10_000)(handler),
    "adaptive": lambda: AdaptiveLimiter(initial=10_000, max_limit=10_000)(handler),
    "adaptive_pooled": lambda: AdaptiveLimiter(initial=10_000, max_limit=10_000,
                                               min_rtt=0.0)(handler),
    "shedder": lambda: LoadShedder(cpu=CpuSampler(lambda: (0.0, 1.0), interval=3600.0))(handler),
}


@pytest.mark.parametrize("case,rep", [(c, r) for r in range(REPS) for c in INTERLEAVED])
def test_interleaved(benchmark, loop_calls, case, rep):
    benchmark.group = f"adaptive-interleaved-{rep}"
    with _twin("fast"):
        f = INTERLEAVED[case]()
    benchmark(loop_calls(f))


def report(path: str, baseline: str = "bulkhead") -> None:
    """For every ``test_interleaved`` case in a ``--benchmark-json`` file: its per-call
    median as a multiple of ``baseline``'s in the same turn, the median over turns and the
    range, and its median time per call."""
    medians: dict[tuple[str, str], float] = {}
    for b in json.load(open(path))["benchmarks"]:
        if b["name"].startswith("test_interleaved"):
            medians[(b["group"], b["params"]["case"])] = b["stats"]["median"]
    groups = sorted({g for g, _ in medians})
    for case in dict.fromkeys(c for _, c in medians):
        ratios = [medians[(g, case)] / medians[(g, baseline)] for g in groups]
        ns = statistics.median(medians[(g, case)] for g in groups) * 1e9 / LOOP
        print(f"{case:16s} x {baseline}: median {statistics.median(ratios):.3f} (range "
              f"{min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} turns); {ns:.1f} ns/call")


if __name__ == "__main__":  # bench_adaptive.py JSON [BASELINE]
    report(*sys.argv[1:3])
