"""The token bucket's coarse-clock path: deciding at a reading that trails the true time.

``take_lagged(now, cost, lag)`` is what the compiled ``try_acquire`` runs at the coarse
clock's reading. Its promise: whatever the lag (up to ``lag``), it never grants a call the
exact clock would have refused, i.e. an exact bucket fed the same admitted calls at their
true times admits every one of them, so admitted <= capacity + rate x elapsed still holds.
"""
from __future__ import annotations

import random
from typing import Any, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import both_twins

LAG = 0.008

steps = st.lists(
    st.tuples(st.floats(0.0, 0.05),             # true time advance
              st.floats(0.0, 1.0),              # fraction of LAG the reading trails by
              st.sampled_from([0.5, 1.0, 2.0, 3.0])),  # cost
    min_size=1, max_size=80)
configs = st.tuples(st.sampled_from([1.0, 10.0, 250.0, 1000.0, 5000.0]),  # rate
                    st.sampled_from([3.0, 5.0, 20.0]))                     # capacity


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # kernels is stateless
@given(config=configs, ops=steps)
def test_lagged_reading_never_grants_more_than_the_exact_clock(kernels, config, ops):
    bucket = kernels("bucket")
    rate, capacity = config
    lagged = bucket.TokenBucketKernel(rate, capacity, capacity, 0.0)
    exact = bucket.TokenBucketKernel(rate, capacity, capacity, 0.0)
    true_now = 0.0
    reading = 0.0
    for advance, trail, cost in ops:
        true_now += advance
        # a coarse reading: behind the true time by at most LAG, and never going back
        reading = max(reading, true_now - trail * LAG)
        if lagged.take_lagged(reading, cost, LAG):
            assert exact.acquire_at(true_now, cost), (
                "the lagged bucket granted a call the exact clock refuses")


#: the kernels with a lagged entry point: how to build one full, and the state to compare
KINDS = {
    "token": (lambda m, rate, cap: m.TokenBucketKernel(rate, cap, cap, 0.0),
              lambda k: (k.tokens, k.last)),
    "leaky": (lambda m, rate, cap: m.LeakyBucketKernel(rate, cap, 0.0),
              lambda k: (k.level, k.last)),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs, ops=steps)
def test_zero_lag_is_the_exact_bucket(kernels, kind, config, ops):
    make, state = KINDS[kind]
    bucket = kernels("bucket")
    a, b = make(bucket, *config), make(bucket, *config)
    now = 0.0
    for advance, _, cost in ops:
        now += advance
        assert a.take_lagged(now, cost, 0.0) == b.acquire_at(now, cost)
        assert state(a) == state(b)


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=300, deadline=None)
@given(config=configs, ops=steps)
def test_twins_decide_lagged_reads_alike(kind, config, ops):
    make, state = KINDS[kind]
    fast_mod, pure_mod = both_twins("bucket")
    fast, pure = make(fast_mod, *config), make(pure_mod, *config)
    now = 0.0
    for advance, trail, cost in ops:
        now += advance
        reading = now - trail * LAG
        assert fast.take_lagged(reading, cost, LAG) == pure.take_lagged(reading, cost, LAG)
        assert state(fast) == state(pure)


def test_near_capacity_the_lag_rule_withholds_rather_than_mints(kernels):
    """Full bucket read 5 ms late: without the rule, refilling would restart from the
    reading, crediting 5 ms the exact bucket spent clipped at capacity."""
    bucket = kernels("bucket")
    lagged = bucket.TokenBucketKernel(1000.0, 10.0, 10.0, 0.0)
    assert lagged.take_lagged(1.0, 10.0, LAG)   # reading 1.0, true time up to 1.008
    assert lagged.last == 1.0 + LAG            # settled at the upper bound of the true time
    assert lagged.take_lagged(1.004, 1.0, LAG) is False  # nothing credited before 1.008


def admitted_lagged_and_exact(lagged: Any, exact: Any, rate: float, cost: float, load: float,
                              seed: int) -> Tuple[int, int]:
    """Calls arriving at ``load`` x the refill rate, read up to LAG late: how many the lagged
    kernel admits the way the compiled ``try_acquire`` decides (the lagged decision, a
    refusal re-decided exactly) and how many the exact one admits."""
    rng = random.Random(seed)
    gap = cost / (rate * load)
    true_now = reading = 0.0
    got_lagged = got_exact = 0
    for _ in range(3000):
        true_now += gap * rng.uniform(0.5, 1.5)
        reading = max(reading, true_now - rng.uniform(0.0, LAG))
        got_lagged += (lagged.take_lagged(reading, cost, LAG)
                       or lagged.acquire_at(true_now, cost))
        got_exact += exact.acquire_at(true_now, cost)
    return got_lagged, got_exact


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rate=st.sampled_from([10.0, 100.0, 1000.0, 5000.0]),
       headroom=st.sampled_from([32.0, 125.0, 1000.0]),  # (capacity - cost) / (LAG * rate)
       load=st.sampled_from([0.5, 1.0, 2.0]), cost=st.sampled_from([0.5, 1.0, 3.0]),
       seed=st.integers(0, 2**32 - 1))
def test_lagged_reads_cost_at_most_a_sliver_of_capacity(kernels, rate, headroom, load, cost,
                                                        seed):
    """Where the compiled path uses it (LAG * rate <= (capacity - cost) / 32), the lag rule acts
    like a bucket at most LAG * rate tokens smaller, so against the exact clock it refuses at most
    two such bands more (one withheld, one possibly still in the bucket when the run ends),
    plus, where a call costs more than the band, at most one call per fill-and-drain
    episode: a few percent of the calls at worst, whatever the load."""
    bucket = kernels("bucket")
    capacity = headroom * LAG * rate + cost
    lagged = bucket.TokenBucketKernel(rate, capacity, capacity, 0.0)
    exact = bucket.TokenBucketKernel(rate, capacity, capacity, 0.0)
    got_lagged, got_exact = admitted_lagged_and_exact(lagged, exact, rate, cost, load, seed)
    assert got_exact - got_lagged <= 2 * LAG * rate / cost + 0.01 * got_exact + 2
