"""RollingWindow: exact bucket boundaries, a brute-force model, and the twins in lockstep."""
from __future__ import annotations

import importlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import both_twins


@pytest.fixture(scope="session")
def Window(impl):
    return importlib.import_module(f"gameguard._{impl}.window").RollingWindow


# -- exact behaviour, each twin -----------------------------------------------------------
def test_empty(Window):
    w = Window(10.0, 10)
    assert w.totals(0.0) == (0, 0, 0, 0.0)
    assert w.bucket_len == 1.0


def test_counts_and_duration(Window):
    w = Window(10.0, 10)
    w.record(0.5, False, False, 0.25)
    w.record(1.5, True, False, 0.5)
    w.record(2.5, True, True, 2.0)
    assert w.totals(2.5) == (3, 2, 1, 2.75)


def test_bucket_boundaries_exact(Window):
    """A call recorded in bucket [k, k+1) is forgotten exactly when the clock reaches k+10."""
    w = Window(10.0, 10)
    w.record(3.0, True, False, 1.0)    # bucket 3 starts at 3.0: counted there
    w.record(3.999, True, False, 1.0)  # same bucket
    w.record(4.0, False, False, 1.0)   # next bucket
    assert w.totals(12.999) == (3, 2, 0, 3.0)
    assert w.totals(13.0) == (1, 0, 0, 1.0)   # bucket 3 fell out, not one instant earlier
    assert w.totals(13.999) == (1, 0, 0, 1.0)
    assert w.totals(14.0) == (0, 0, 0, 0.0)


def test_dyadic_buckets(Window):
    w = Window(1.0, 4)
    assert w.bucket_len == 0.25
    w.record(0.24, True, False, 0.0)
    w.record(0.25, True, False, 0.0)
    assert w.totals(0.99) == (2, 2, 0, 0.0)
    assert w.totals(1.0) == (1, 1, 0, 0.0)
    assert w.totals(1.25) == (0, 0, 0, 0.0)


def test_gap_longer_than_window_forgets_everything(Window):
    w = Window(10.0, 10)
    for t in range(10):
        w.record(float(t), True, True, 1.0)
    assert w.totals(9.0) == (10, 10, 10, 10.0)
    assert w.totals(1000.0) == (0, 0, 0, 0.0)
    w.record(1000.5, False, False, 3.0)
    assert w.totals(1000.5) == (1, 0, 0, 3.0)


def test_clock_going_backwards_counts_in_head(Window):
    w = Window(10.0, 10)
    w.record(5.5, False, False, 0.0)
    w.record(2.0, True, False, 0.0)  # earlier than the head: counted in the head bucket
    assert w.totals(5.5) == (2, 1, 0, 0.0)
    assert w.totals(14.999) == (2, 1, 0, 0.0)
    assert w.totals(15.0) == (0, 0, 0, 0.0)


def test_reset(Window):
    w = Window(10.0, 10)
    w.record(1.0, True, True, 1.0)
    w.reset()
    assert w.totals(1.0) == (0, 0, 0, 0.0)
    w.record(1.0, True, False, 1.0)
    assert w.totals(1.0) == (1, 1, 0, 1.0)


def test_duration_has_no_residue_once_empty(Window):
    w = Window(1.0, 4)
    w.record(0.0, False, False, 0.1)
    w.record(0.3, False, False, 0.2)
    assert w.totals(1.5) == (0, 0, 0, 0.0)  # not 1e-17 left over from float subtraction


def test_negative_and_large_times(Window):
    w = Window(2.0, 8)
    w.record(-3.0, True, False, 0.0)
    assert w.totals(-1.25) == (1, 1, 0, 0.0)
    assert w.totals(-1.0) == (0, 0, 0, 0.0)
    big = 2.0 ** 40
    w.record(big, True, False, 0.0)
    assert w.totals(big + 1.75) == (1, 1, 0, 0.0)
    assert w.totals(big + 2.0) == (0, 0, 0, 0.0)


# -- against a brute-force model (dyadic times: every boundary is exact) -------------------
window_params = st.sampled_from([(1.0, 1), (1.0, 4), (2.0, 8), (4.0, 2), (8.0, 16), (0.5, 2)])
step = st.integers(0, 40).map(lambda i: i / 16)
ops = st.lists(st.tuples(st.sampled_from(["record", "totals", "reset"]), step,
                         st.booleans(), st.booleans(), st.integers(0, 64).map(lambda i: i / 8)),
               max_size=60)


@settings(max_examples=150, deadline=None)
@given(params=window_params, ops=ops)
def test_matches_model(Window, params, ops):
    window, buckets = params
    w = Window(window, buckets)
    blen = window / buckets
    events: list[tuple[float, bool, bool, float]] = []
    now = 0.0
    for op, dt, failure, slow, duration in ops:
        now += dt
        if op == "record":
            w.record(now, failure, slow, duration)
            events.append((now, failure, slow, duration))
        elif op == "reset":
            w.reset()
            events.clear()
        else:
            head = math.floor(now / blen)
            live = [e for e in events if math.floor(e[0] / blen) > head - buckets]
            calls, failures, slows, total = w.totals(now)
            assert (calls, failures, slows) == (
                len(live), sum(e[1] for e in live), sum(e[2] for e in live))
            assert total == sum(e[3] for e in live)  # eighths: sums are exact


# -- the twins in lockstep ---------------------------------------------------------------------
times = st.one_of(st.floats(0.0, 5.0), st.integers(0, 50).map(lambda i: i / 10))
BAD_NOW = [math.nan, math.inf, -math.inf, 2.0 ** 52, -(2.0 ** 52), 1e300]
twin_ops = st.lists(
    st.tuples(st.sampled_from(["record", "record", "totals", "advance", "reset", "back", "bad"]),
              times, st.booleans(), st.booleans(), st.floats(0.0, 10.0),
              st.sampled_from(BAD_NOW)),
    max_size=80)


def outcome_of(fn, *args):
    try:
        return ("ok", fn(*args))
    except ValueError as exc:
        return ("ValueError", str(exc))


@settings(max_examples=200, deadline=None)
@given(window=st.sampled_from([0.1, 0.3, 1.0, 2.5, 10.0]), buckets=st.integers(1, 12),
       start=st.floats(-100.0, 1e6), ops=twin_ops)
def test_twins_identical(window, buckets, start, ops):
    fast_mod, pure_mod = both_twins("window")
    fast, pure = fast_mod.RollingWindow(window, buckets), pure_mod.RollingWindow(window, buckets)
    assert fast.bucket_len == pure.bucket_len
    now = start
    for op, dt, failure, slow, duration, bad in ops:
        now = now - dt if op == "back" else now + dt
        if op == "bad":  # refused alike (or, below the head bucket, counted in it alike)
            for name in ("totals", "advance"):
                assert outcome_of(getattr(fast, name), bad) == outcome_of(getattr(pure, name), bad)
            assert outcome_of(fast.record, bad, failure, slow, duration) == \
                outcome_of(pure.record, bad, failure, slow, duration)
        elif op in ("record", "back"):
            fast.record(now, failure, slow, duration)
            pure.record(now, failure, slow, duration)
        elif op == "advance":
            fast.advance(now)
            pure.advance(now)
        elif op == "reset":
            fast.reset()
            pure.reset()
        else:
            assert fast.totals(now) == pure.totals(now)
        assert (fast.head, fast.calls, fast.failures, fast.slow, fast.duration) == \
            (pure.head, pure.calls, pure.failures, pure.slow, pure.duration)


# -- the compiled twin skips the division while `now` is below its cached bucket edge -------
_AWKWARD = st.sampled_from([0.1, 0.3, 1 / 3, 0.7, 1e-3, 2.5, 0.123456789])


@settings(max_examples=300, deadline=None)
@given(window_len=_AWKWARD, buckets=st.integers(1, 13),
       steps=st.lists(st.tuples(st.integers(0, 40), st.sampled_from([-1, 0, 1])),
                      min_size=1, max_size=60))
def test_bucket_edges_match_division_exactly(window_len, buckets, steps):
    """At bucket edges and one ulp either side, both twins put a call in the same bucket."""
    import math

    fast_mod, pure_mod = both_twins("window")
    fast = fast_mod.RollingWindow(window_len * buckets, buckets)
    pure = pure_mod.RollingWindow(window_len * buckets, buckets)
    bucket_len = pure.bucket_len
    now = 0.0
    for k, ulps in steps:
        t = (math.floor(now / bucket_len) + k) * bucket_len
        if ulps:
            t = math.nextafter(t, math.inf if ulps > 0 else -math.inf)
        now = max(now, t)  # time never goes backwards within one window
        fast.record(now, False, False, 0.0)
        pure.record(now, False, False, 0.0)
        assert fast.head == pure.head
        assert fast.totals(now) == pure.totals(now)
