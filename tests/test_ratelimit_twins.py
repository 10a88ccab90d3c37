"""The compiled and pure rate-limit kernels decide identically (same floats, same slots)
under random clock/cost/operation sequences."""
from __future__ import annotations

import math
from typing import Any, List

from conftest import both_twins
from hypothesis import given, settings
from hypothesis import strategies as st

# clock steps: mostly forward, some zero, a few backwards (racing clock reads)
dts = st.one_of(st.floats(0, 0.5), st.just(0.0), st.floats(-0.01, 0.0),
                st.sampled_from([0.1, 1 / 3, 1e-9, 5.0]))
fractions = st.floats(0.01, 1.0)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


bucket_ops = st.lists(st.tuples(
    st.sampled_from(["acq", "delay", "level", "reserve", "refund", "enter", "retry",
                     "configure"]),
    dts, fractions, st.sampled_from([0.0, 0.05, 1.0, math.inf])), max_size=80)


@settings(max_examples=150, deadline=None)
@given(rate=st.floats(0.1, 500), cap_mul=st.floats(1.0, 5.0), start=st.floats(-10, 1e5),
       init=st.floats(0, 1), ops=bucket_ops)
def test_token_bucket_twins(rate: float, cap_mul: float, start: float, init: float,
                            ops: list) -> None:
    fast, pure = both_twins("bucket")
    cap = max(rate, 1.0) * cap_mul
    kernels = [m.TokenBucketKernel(rate, cap, init * cap, start) for m in (fast, pure)]
    _drive(kernels, ops, start, cap)
    assert kernels[0].tokens == kernels[1].tokens and kernels[0].last == kernels[1].last


@settings(max_examples=150, deadline=None)
@given(rate=st.floats(0.1, 500), cap=st.floats(1.0, 20.0), start=st.floats(-10, 1e5),
       ops=bucket_ops)
def test_leaky_bucket_twins(rate: float, cap: float, start: float, ops: list) -> None:
    fast, pure = both_twins("bucket")
    kernels = [m.LeakyBucketKernel(rate, cap, start) for m in (fast, pure)]
    _drive(kernels, ops, start, cap)
    assert kernels[0].level == kernels[1].level and kernels[0].last == kernels[1].last


def _drive(kernels: List[Any], ops: list, now: float, cap: float) -> None:
    reserved: List[float] = []
    for op, dt, frac, max_wait in ops:
        now += dt
        cost = frac * cap
        if op == "acq":
            out = [k.acquire_at(now, cost) for k in kernels]
        elif op == "configure":  # a live change: rate up or down, capacity down to 3/4
            rate, capacity = kernels[0].rate * (0.5 + frac), kernels[0].capacity
            capacity = capacity if max_wait else max(capacity * 0.75, cap)
            out = [k.configure(now, rate, capacity) for k in kernels]
        elif op == "delay":
            out = [k.delay_at(now, cost) for k in kernels]
        elif op == "level":
            out = [k.level_at(now) for k in kernels]
        elif op == "reserve":
            out = [k.reserve(now, cost, max_wait) for k in kernels]
            if out[0] >= 0:
                reserved.append(cost)
        elif op == "refund":
            if not reserved:
                continue
            c = reserved.pop()
            out = [k.refund(now, c) for k in kernels]
        elif op == "enter":
            if cap < 1.0:
                continue
            out = [k.enter(now) for k in kernels]
        else:
            out = [k.retry_after(now) for k in kernels]
        assert same(out[0], out[1]), (op, now, cost, out)


@settings(max_examples=150, deadline=None)
@given(shares=st.lists(st.floats(0, 1), min_size=2, max_size=4),
       frame=st.sampled_from([0.05, 0.1, 1 / 3]), dense_frames=st.integers(1, 4),
       calm_frames=st.integers(1, 6), start=st.floats(0, 1e4),
       ops=st.lists(st.tuples(
           st.sampled_from(["burst", "burst", "steady", "delay", "mode", "unpin", "poll"]),
           dts, fractions, st.integers(0, 3)), max_size=120))
def test_hybrid_twins(shares: list, frame: float, dense_frames: int, calm_frames: int,
                      start: float, ops: list) -> None:
    fast, pure = both_twins("bucket")
    args = (50.0, 30.0, 10.0, 4.0, shares, 0, 1, 12.0, dense_frames, calm_frames, frame, start)
    kernels = [m.HybridKernel(*args) for m in (fast, pure)]
    now = start
    for op, dt, frac, n in ops:
        now += dt
        if op in ("burst", "steady"):
            kind = 0 if op == "burst" else 1
            cost = frac * (10.0 if kind == 0 else 4.0)
            out = [k.acquire_at(now, kind, cost) for k in kernels]
        elif op == "delay":
            out = [k.delay_at(now, n % 2, frac) for k in kernels]
        elif op == "mode":
            out = [k.set_mode(now, n % len(shares), True) for k in kernels]
        elif op == "unpin":
            out = [k.unpin(now) for k in kernels]
        else:
            out = [k.poll(now) for k in kernels]
        assert same(out[0], out[1]), (op, now, out)
    for attr in ("burst_tokens", "steady_level", "burst_last", "steady_last", "mode", "pinned",
                 "switches", "switched_at", "frame_index", "frame_count", "dense_streak",
                 "calm_streak", "admitted_burst", "admitted_steady", "rejected_burst",
                 "rejected_steady", "burst_rate", "steady_rate"):
        assert getattr(kernels[0], attr) == getattr(kernels[1], attr), attr


keys = st.one_of(st.integers(0, 30), st.integers(-2 ** 70, 2 ** 70),
                 st.text(max_size=6), st.binary(max_size=40),
                 st.tuples(st.integers(0, 3), st.text(max_size=2)))


@settings(max_examples=120, deadline=None)
@given(kind=st.sampled_from([0, 1]), rate=st.floats(0.5, 50), cap=st.floats(1.0, 6.0),
       max_keys=st.integers(1, 40), idle=st.sampled_from([math.inf, 0.5, 3.0]),
       seed=st.integers(0, 2 ** 64 - 1),
       ops=st.lists(st.tuples(st.sampled_from(["acq", "acq", "acq", "delay", "level",
                                               "purge", "contains", "configure"]),
                              dts.filter(lambda d: d >= 0), keys, fractions), max_size=150))
def test_keyed_twins(kind: int, rate: float, cap: float, max_keys: int, idle: float,
                     seed: int, ops: list) -> None:
    fast, pure = both_twins("keyed")
    tables = [m.KeyedTable(kind, rate, cap, max_keys, idle, seed) for m in (fast, pure)]
    now = 0.0
    for op, dt, key, frac in ops:
        now += dt
        cost = frac * cap
        if op == "acq":
            out = [t.acquire_at(now, key, cost) for t in tables]
        elif op == "delay":
            out = [t.delay_at(now, key, cost) for t in tables]
        elif op == "level":
            out = [t.level_at(now, key) for t in tables]
        elif op == "purge":
            out = [t.purge(now) for t in tables]
        elif op == "configure":  # rate up or down, capacity down, settled key by key
            rate = tables[0].rate * (0.5 + frac)
            capacity = max(tables[0].capacity * (0.5 + frac / 2), cap / 2)
            out = [t.configure(now, rate, capacity, idle) for t in tables]
        else:
            out = [key in t for t in tables]
        assert same(out[0], out[1]), (op, now, key, out)
        assert len(tables[0]) == len(tables[1]) <= max_keys
    assert tables[0].dump() == tables[1].dump()
    for attr in ("slots", "count", "since_sweep", "evicted_full", "evicted_idle", "evicted_stale",
                 "sweeps"):
        assert getattr(tables[0], attr) == getattr(tables[1], attr), attr


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 64 - 1), n=st.integers(1, 3000), step=st.floats(0, 0.01))
def test_keyed_twins_under_a_flood(seed: int, n: int, step: float) -> None:
    """Many distinct keys through a small table: growth, sweeps and compaction agree."""
    fast, pure = both_twins("keyed")
    tables = [m.KeyedTable(0, 1.0, 2.0, 200, math.inf, seed) for m in (fast, pure)]
    now = 0.0
    for i in range(n):
        now += step
        key = i if i % 3 else f"player-{i % 250}"
        assert tables[0].acquire_at(now, key, 1.0) == tables[1].acquire_at(now, key, 1.0)
    assert tables[0].dump() == tables[1].dump()
