"""Hardening of the breaker, throttle and bulkhead: waits that take None and huge values and
follow the guard's clock; read-only kernel sizes and checked clock readings; bounded
allow()/record_* bookkeeping; constructor checks; sync waits on an event-loop thread.
Both twins; the kernels' twins in lockstep under hypothesis, bad clock readings included."""
from __future__ import annotations

import asyncio
import collections
import importlib
import math
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import both_twins
from gameguard import (AdaptiveThrottle, Bulkhead, BulkheadFullError, CircuitBreaker,
                       ConfigurationError, ManualClock)

from test_breaker import BAD_NOW, outcome_of as outcome
from test_bulkhead import SAFETY, wait_until


def waiting(b, n=1):
    return lambda: b.snapshot()["waiting"] >= n


# -- bulkhead waits (max_wait: None, huge, on the guard's clock) ------------------------------
@pytest.mark.parametrize("max_wait", [1e10, 1e300, None])
def test_long_and_unbounded_waits_do_not_overflow(twin, max_wait):
    """max_wait=1e10 made waiting threads raise OverflowError; None was refused."""
    b = Bulkhead(1, max_wait=max_wait)
    result = []

    def waiter():
        try:
            with b:
                result.append("in")
        except BaseException as exc:  # noqa: BLE001 - reported below
            result.append(exc)

    with b:
        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        wait_until(waiting(b), "the waiter")
    t.join(SAFETY)
    assert result == ["in"]
    assert b.in_flight == 0 and b._kernel.waiters == 0


def test_sync_wait_follows_a_manual_clock(twin):
    clock = ManualClock(10.0)
    b = Bulkhead(1, max_wait=2.5, clock=clock)
    with b:
        t0 = time.monotonic()
        with pytest.raises(BulkheadFullError):
            with b:
                pass
        assert time.monotonic() - t0 < SAFETY  # no real wait of max_wait happens
    assert clock() == 12.5                    # the wait was slept on the guard's clock
    assert b.snapshot()["waiting"] == 0 and b._kernel.waiters == 0


def test_huge_wait_on_a_manual_clock(twin):
    clock = ManualClock(0.0)
    b = Bulkhead(1, max_wait=1e10, clock=clock)
    with b:
        with pytest.raises(BulkheadFullError):
            with b:
                pass
    assert clock() == 1e10


@pytest.mark.asyncio
async def test_async_wait_follows_a_manual_clock(twin):
    clock = ManualClock(10.0)
    b = Bulkhead(1, max_wait=2.5, clock=clock)
    async with b:
        with pytest.raises(BulkheadFullError):
            async with b:
                pass
    assert clock() == 12.5
    assert b.snapshot()["waiting"] == 0 and b._kernel.waiters == 0


@pytest.mark.asyncio
async def test_async_unbounded_wait_is_woken(twin):
    clock = ManualClock(0.0)
    b = Bulkhead(1, max_wait=None, clock=clock)
    release = asyncio.Event()

    async def holder():
        async with b:
            await release.wait()

    async def waiter():
        async with b:
            return "in"

    h = asyncio.create_task(holder())
    while b.in_flight < 1:
        await asyncio.sleep(0)
    w = asyncio.create_task(waiter())
    while b.snapshot()["waiting"] < 1:
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.wait_for(w, SAFETY) == "in"
    await h
    assert clock() == 0.0 and b.in_flight == 0 and b._kernel.waiters == 0


class SlowClock:
    """A clock without sleep() that runs at a tenth of real speed."""

    def __init__(self):
        self.t0 = time.monotonic()

    def __call__(self):
        return (time.monotonic() - self.t0) / 10


def test_sync_deadline_is_read_on_the_guard_clock(twin):
    clock = SlowClock()
    b = Bulkhead(1, max_wait=0.005, clock=clock)  # 5 ms of this clock: 50 ms real
    with b:
        start = clock()
        with pytest.raises(BulkheadFullError):
            with b:
                pass
        assert clock() - start >= 0.005


def test_max_wait_checks(twin):
    for bad in (-1.0, math.inf, math.nan, "1", True):
        with pytest.raises(ConfigurationError, match="max_wait"):
            Bulkhead(1, max_wait=bad)
    assert Bulkhead(1, max_wait=None).max_wait is None


# -- sync waits on an event-loop thread ------------------------------------------------------
@pytest.mark.asyncio
async def test_sync_wait_on_the_loop_thread_warns_before_blocking(twin):
    b = Bulkhead(1, max_wait=5.0)
    async with b:
        with pytest.raises(RuntimeWarning, match="async with"):
            with b:                          # would block every task on this loop
                pass
    assert b.in_flight == 0 and b._kernel.waiters == 0 and b.snapshot()["waiting"] == 0


@pytest.mark.asyncio
async def test_sync_use_on_the_loop_thread_without_waiting_is_silent(twin):
    b = Bulkhead(1, max_wait=5.0)
    with b:                                  # a free slot: nothing blocks, no warning
        pass
    b2 = Bulkhead(1)                         # max_wait=0: rejected at once, no warning
    with b2:
        with pytest.raises(BulkheadFullError):
            with b2:
                pass


# -- kernels: read-only sizes and indices --------------------------------------------------
READ_ONLY = {
    ("window", "RollingWindow", (10.0, 10)): ["window", "buckets", "bucket_len", "head",
                                              "limit"],
    ("breaker", "BreakerKernel", (0.5, 1.0, math.inf, 20, 10.0, 10, 0, 0, 5.0, 2)):
        ["half_open_calls", "state", "generation", "tickets", "probes_done", "transitions",
         "failure_rate", "open_duration"],
    ("breaker", "ThrottleKernel", (1.5, 5.0, 10.0, 40, 1)): ["k", "protection"],
    ("bulkhead", "BulkheadKernel", (4,)): ["limit", "in_flight"],
}


@pytest.mark.parametrize("module,cls,args", list(READ_ONLY))
def test_kernel_sizes_and_indices_are_read_only(kernels, module, cls, args):
    k = getattr(kernels(module), cls)(*args)
    for name in READ_ONLY[(module, cls, args)]:
        before = getattr(k, name)
        with pytest.raises(AttributeError):
            setattr(k, name, 10 ** 6)
        assert getattr(k, name) == before


# -- kernels: clock readings ---------------------------------------------------------------
def breaker_kernel(kernels, half_open_calls=1):
    return kernels("breaker").BreakerKernel(0.5, 1.0, math.inf, 1, 10.0, 10, 1, 0, 1.0,
                                            half_open_calls)


@pytest.mark.parametrize("now", BAD_NOW)
def test_enter_refuses_an_unusable_clock_reading(kernels, now):
    for k in (breaker_kernel(kernels), kernels("breaker").ThrottleKernel(1.5, 5.0, 10.0, 40, 1),
              kernels("bulkhead").BulkheadKernel(1)):
        with pytest.raises(ValueError, match="clock reading"):
            k.enter(now)
    w = kernels("window").RollingWindow(10.0, 10)
    with pytest.raises(ValueError, match="clock reading"):
        w.totals(now)


def test_time_limit_keeps_epochs_exact(kernels):
    w = kernels("window").RollingWindow(1e-3, 1000)     # 1 µs buckets
    assert w.limit == 2.0 ** 52 * 1e-6
    w.record(w.limit * 0.999, True, False, 0.0)
    assert w.totals(w.limit * 0.999) == (1, 1, 0, 0.0)
    with pytest.raises(ValueError, match="clock reading"):
        w.record(w.limit, True, False, 0.0)


@pytest.mark.parametrize("now", BAD_NOW)
def test_exit_with_an_unusable_reading_releases_and_records_nothing(kernels, now):
    k = breaker_kernel(kernels)
    token = k.enter(1.0)
    k.exit(token, now, 0.0, 1)                # a failure would have opened it
    assert k.state == 0 and k.totals(1.0) == (0, 0, 0, 0.0)
    k.exit(k.enter(1.0), 1.0, 0.0, 1)
    assert k.state == 1
    probe = k.enter(2.0)
    assert probe & 1 and k.state == 2
    k.exit(probe, now, 0.0, 0)                # the probe's slot is given back, no outcome
    assert k.state == 2 and k.probe_owner == [0] and k.probes_done == 0
    t = kernels("breaker").ThrottleKernel(1.5, 5.0, 10.0, 40, 1)
    t.exit(t.enter(1.0), now, 0.0, 1)
    assert t.totals(1.0) == (0, 0, 0, 0.0)
    b = kernels("bulkhead").BulkheadKernel(1)
    b.exit(b.enter(1.0), now, 0.0, 0)
    assert b.in_flight == 0


class BrokenLater:
    """A clock that reads fine at construction and NaN afterwards."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return 0.0 if self.calls == 1 else math.nan


@pytest.mark.parametrize("factory", [CircuitBreaker, AdaptiveThrottle,
                                     lambda **kw: Bulkhead(1, **kw)])
def test_a_guard_whose_clock_goes_bad_raises_before_running_the_call(twin, factory):
    g = factory(clock=BrokenLater())
    ran = []

    @g
    def handler():
        ran.append(1)

    with pytest.raises(ValueError, match="clock reading nan"):
        handler()
    with pytest.raises(ValueError, match="clock reading nan"):
        with g:
            ran.append(2)
    assert ran == []


# -- manual allow()/record_* -----------------------------------------------------------------
def held(obj, seen=None):
    """Items held by the breaker's own containers (the kernel excluded), recursively."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, dict):
        return len(obj) + sum(held(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, collections.deque, set)):
        return len(obj) + sum(held(v, seen) for v in obj)
    return 0


def bookkeeping(b):
    return sum(held(v) for k, v in vars(b).items()
               if k not in ("_kernel", "_config", "_messages", "_guards", "_listeners"))


def test_allow_without_record_does_not_grow(twin):
    clock = ManualClock(0.0)
    b = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=1.0)
    base = bookkeeping(b)
    for _ in range(5000):
        assert b.allow()                     # closed: never recorded
    assert bookkeeping(b) <= base + 4
    b.record_failure()
    for _ in range(200):                     # half-open probes, never recorded
        clock.advance(1.0)
        b.allow()
        threading.Thread(target=b.allow).start()
    assert bookkeeping(b) <= base + 4


def test_record_without_allow_takes_no_probe_slot(twin):
    clock = ManualClock(0.0)
    b = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=1.0)
    b.record_failure()                       # closed: counts (and trips)
    assert b.state == "open"
    clock.advance(1.0)
    assert b.state == "half_open"
    b.record_success()                       # no permit: counts for nothing
    assert b.state == "half_open"
    b.record_failure()
    assert b.state == "half_open"
    assert b.allow()                         # the probe slot is still free
    b.record_success()                       # this one had a permit
    assert b.state == "closed"


def test_expired_probe_permit_is_forgotten(twin):
    clock = ManualClock(0.0)
    b = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=1.0)
    b.record_failure()
    clock.advance(1.0)
    assert b.allow()                         # probe 1, never reported
    clock.advance(1.0)                       # it lost its slot
    assert b.allow()                         # probe 2
    assert len(b._probes) == 1
    b.record_success()                       # goes to probe 2, the one holding a slot
    assert b.state == "closed"


# -- constructor checks --------------------------------------------------------------------
@pytest.mark.parametrize("factory", [CircuitBreaker, AdaptiveThrottle])
@pytest.mark.parametrize("record", [(), []])
def test_empty_record_is_refused(twin, factory, record):
    with pytest.raises(ConfigurationError, match=r"record .*got (\(\)|\[\])"):
        factory(record=record)


@pytest.mark.parametrize("seed", [-1, 1 << 64, -(1 << 63), 1 << 100])
def test_seed_outside_64_bits_is_refused(twin, seed):
    with pytest.raises(ConfigurationError, match=f"seed .*got {seed}"):
        AdaptiveThrottle(seed=seed)


def test_seed_at_the_edges_is_accepted(twin):
    for seed in (0, (1 << 64) - 1):
        AdaptiveThrottle(seed=seed).allow()


# -- the kernels' twins in lockstep, live changes and bad readings included -------------------
# (the breaker's and the throttle's: test_kernel_twins_identical in test_breaker.py and
# test_throttle.py)

@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 5), ops=st.lists(st.tuples(
    st.sampled_from(["enter", "exit", "limit", "bad"]), st.integers(1, 6),
    st.sampled_from(BAD_NOW)), max_size=80))
def test_bulkhead_kernel_twins_identical_with_live_limits(limit, ops):
    fast_mod, pure_mod = both_twins("bulkhead")
    fast, pure = fast_mod.BulkheadKernel(limit), pure_mod.BulkheadKernel(limit)
    tokens = 0
    for op, n, bad in ops:
        if op == "enter":
            tf, tp = fast.enter(0.0), pure.enter(0.0)
            assert tf == tp
            tokens += tf >= 0
        elif op == "exit" and tokens:
            tokens -= 1
            fast.exit(0, bad, 0.0, 0)
            pure.exit(0, bad, 0.0, 0)
        elif op == "limit":
            fast.set_limit(n)
            pure.set_limit(n)
        elif op == "bad":
            assert outcome(fast.enter, bad) == outcome(pure.enter, bad)
        assert (fast.in_flight, fast.limit) == (pure.in_flight, pure.limit) == \
            (tokens, fast.limit)
    for mod in (fast_mod, pure_mod):
        with pytest.raises(ValueError, match="limit"):
            mod.BulkheadKernel(1).set_limit(0)


def test_twins_share_one_window_module_for_bounds():
    fast, pure = both_twins("window")
    assert fast.time_limit is pure.time_limit and fast.clock_error is pure.clock_error
    assert importlib.import_module("gameguard._pure.window").MAX_EPOCH == 2.0 ** 52
