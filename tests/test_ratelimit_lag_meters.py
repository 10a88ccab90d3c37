"""The coarse-clock path of the leaky meter and the hybrid's burst bucket.

Same promise as the token bucket's (tests/test_ratelimit_lag.py): deciding at a reading
that trails the true time by up to ``lag`` never admits a call that an exact-clock twin,
fed the same admitted calls at their true times, would refuse. Both twins, and the twins
decide lagged reads alike.
"""
from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import both_twins
from test_ratelimit_lag import LAG, admitted_lagged_and_exact, configs, steps

fixture_ok = settings(max_examples=300, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


@fixture_ok
@given(config=configs, ops=steps)
def test_leaky_lagged_reading_never_admits_more_than_the_exact_clock(kernels, config, ops):
    bucket = kernels("bucket")
    rate, capacity = config
    lagged = bucket.LeakyBucketKernel(rate, capacity, 0.0)
    exact = bucket.LeakyBucketKernel(rate, capacity, 0.0)
    true_now = reading = 0.0
    for advance, trail, cost in ops:
        if cost > capacity:
            continue
        true_now += advance
        reading = max(reading, true_now - trail * LAG)
        if lagged.take_lagged(reading, cost, LAG):
            assert exact.acquire_at(true_now, cost), (
                "the lagged meter admitted a call the exact clock refuses")


def test_leaky_near_empty_withholds_rather_than_mints(kernels):
    """An empty meter read 5 ms late: adding the cost at the reading and draining it over
    the lag would leave less than the exact meter holds (it sat clamped at 0 meanwhile)."""
    bucket = kernels("bucket")
    lagged = bucket.LeakyBucketKernel(1000.0, 10.0, 0.0)
    assert lagged.take_lagged(1.0, 10.0, LAG)
    assert lagged.last == 1.0 + LAG and lagged.level == 10.0
    assert lagged.take_lagged(1.004, 1.0, LAG) is False  # nothing drained before 1.008


# (zero lag and twin agreement for the leaky meter: test_ratelimit_lag.py, with the token
# bucket)


# -- hybrid: burst traffic ----------------------------------------------------------------
hybrid_ops = st.lists(
    st.tuples(st.floats(0.0, 0.05), st.floats(0.0, 1.0),
              st.sampled_from(["burst", "burst", "burst", "steady", "mode"]),
              st.sampled_from([0.5, 1.0, 2.0])),
    min_size=1, max_size=120)
hybrid_configs = st.tuples(st.sampled_from([(50.0, 30.0), (500.0, 300.0), (5.0, 3.0)]),
                           st.sampled_from([3.0, 10.0, 100.0]),       # capacity
                           st.sampled_from([0.05, 0.1, 1 / 3]),       # frame
                           st.sampled_from([2.0, 12.0, 40.0]))        # dense_rate


def _hybrid(mod, config, start=0.0):
    (tr, lr), cap, frame, dense = config
    return mod.HybridKernel(tr, lr, cap, 4.0, [0.3, 0.85], 0, 1, dense, 2, 3, frame, start)


@fixture_ok
@given(config=hybrid_configs, ops=hybrid_ops)
def test_hybrid_lagged_burst_never_admits_more_and_counts_frames_alike(kernels, config, ops):
    """Fed the same calls at their true times, the exact kernel admits every burst the
    lagged one admitted, and both count the same attempts in the same frames (so they
    switch modes alike)."""
    bucket = kernels("bucket")
    lagged, exact = _hybrid(bucket, config), _hybrid(bucket, config)
    never = 1e300  # an attempt that counts for density but cannot be admitted
    true_now = reading = 0.0
    for advance, trail, op, cost in ops:
        true_now += advance
        reading = max(reading, true_now - trail * LAG)
        if op == "burst":
            r = lagged.take_lagged(reading, cost, LAG)
            if r == -1:  # undecided: the exact path, as the compiled try_acquire does
                if lagged.acquire_at(true_now, 0, cost):
                    assert exact.acquire_at(true_now, 0, cost)
                else:
                    exact.acquire_at(true_now, 0, never)
            elif r == 1:
                assert exact.acquire_at(true_now, 0, cost), "the lagged burst minted budget"
            else:
                exact.acquire_at(true_now, 0, never)
        elif op == "steady":
            lagged.acquire_at(true_now, 1, cost)
            exact.acquire_at(true_now, 1, cost)
        else:
            lagged.set_mode(true_now, 1, True)
            exact.set_mode(true_now, 1, True)
        lagged.poll(true_now)
        exact.poll(true_now)
        assert (lagged.mode, lagged.frame_index, lagged.frame_count) == \
            (exact.mode, exact.frame_index, exact.frame_count)


@settings(max_examples=300, deadline=None)
@given(config=hybrid_configs, ops=hybrid_ops)
def test_twins_decide_hybrid_lagged_reads_alike(config, ops):
    fast_mod, pure_mod = both_twins("bucket")
    fast, pure = _hybrid(fast_mod, config), _hybrid(pure_mod, config)
    now = 0.0
    for advance, trail, op, cost in ops:
        now += advance
        reading = now - trail * LAG
        if op == "burst":
            index = fast.frame_index
            r = fast.take_lagged(reading, cost, LAG)
            assert r == pure.take_lagged(reading, cost, LAG)
            if r != -1:  # decided only when the latest possible true time is in this frame
                assert math.floor((reading + LAG) / config[2]) == index
        else:
            assert fast.acquire_at(now, 1, cost) == pure.acquire_at(now, 1, cost)
        for attr in ("burst_tokens", "burst_last", "steady_level", "steady_last",
                     "frame_index", "frame_count", "mode", "rejected_burst"):
            assert getattr(fast, attr) == getattr(pure, attr), attr


def test_hybrid_lagged_is_undecided_when_the_true_time_may_be_in_the_next_frame(kernels):
    bucket = kernels("bucket")
    h = bucket.HybridKernel(50.0, 30.0, 10.0, 4.0, [0.3, 0.85], 0, 1, 12.0, 2, 3, 0.1, 0.0)
    assert h.take_lagged(0.05, 1.0, LAG) == 1
    assert h.take_lagged(0.095, 1.0, LAG) == -1  # 0.095 + 0.008 is in frame 1
    assert h.frame_count == 1  # the undecided attempt was not counted


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rate=st.sampled_from([10.0, 100.0, 1000.0]), headroom=st.sampled_from([32.0, 125.0]),
       load=st.sampled_from([0.5, 1.0, 2.0]), cost=st.sampled_from([0.5, 1.0]),
       seed=st.integers(0, 2**32 - 1))
def test_leaky_lagged_reads_cost_at_most_a_sliver(kernels, rate, headroom, load, cost, seed):
    """Where the compiled path uses it (LAG * rate <= (capacity - cost) / 32) the meter acts
    at worst like one LAG * rate smaller: a few percent of the calls at most."""
    bucket = kernels("bucket")
    capacity = headroom * LAG * rate + cost
    lagged = bucket.LeakyBucketKernel(rate, capacity, 0.0)
    exact = bucket.LeakyBucketKernel(rate, capacity, 0.0)
    got_lagged, got_exact = admitted_lagged_and_exact(lagged, exact, rate, cost, load, seed)
    assert got_exact - got_lagged <= 2 * LAG * rate / cost + 0.01 * got_exact + 2
