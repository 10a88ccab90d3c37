"""Live changes: a setting assigned on a live breaker, throttle or bulkhead changes what it
does from the next call, or the attribute is read-only; ``configure(**changes)`` validates
like the constructor and applies everything or nothing. Both twins."""
from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from gameguard import (AdaptiveThrottle, Bulkhead, BulkheadFullError, CircuitBreaker,
                       CircuitOpenError, ConfigurationError, ManualClock)

SAFETY = 20.0  # seconds: a bound for a broken build only


class Boom(Exception):
    pass


@pytest.fixture
def clock():
    return ManualClock(100.0)


def call(guard, exc=None):
    with guard:
        if exc is not None:
            raise exc


def fail(guard):
    with pytest.raises(Boom):
        call(guard, Boom())


def hold(stack, guard, n):
    for _ in range(n):
        stack.enter_context(guard)


# -- Bulkhead ---------------------------------------------------------------------------------
def test_assigned_max_concurrent_admits_that_many(twin):
    """Bulkhead(1).max_concurrent = 5 used to refuse the second caller ("5 in flight")."""
    b = Bulkhead(1)
    b.max_concurrent = 5
    with contextlib.ExitStack() as stack:
        hold(stack, b, 5)
        assert (b.in_flight, b.available) == (5, 0)
        with pytest.raises(BulkheadFullError, match=r"5 in flight, limit 5"):
            call(b)
    assert b.snapshot()["limit"] == 5 and b.max_concurrent == 5


def test_shrinking_below_in_flight_loses_and_mints_nothing(twin):
    b = Bulkhead(3)
    with contextlib.ExitStack() as stack:
        hold(stack, b, 3)
        b.configure(max_concurrent=1)
        assert (b.in_flight, b.available) == (3, 0)
        with pytest.raises(BulkheadFullError):
            call(b)                          # the calls in flight keep their slots
    assert b.in_flight == 0                  # all three gave theirs back, once
    with b:
        with pytest.raises(BulkheadFullError):
            call(b)                          # the new limit holds
    assert (b.in_flight, b.available) == (0, 1)


def test_shrunk_bulkhead_admits_only_once_below_the_new_limit(twin):
    b = Bulkhead(3)
    stacks = [contextlib.ExitStack() for _ in range(3)]
    for s in stacks:
        hold(s, b, 1)
    b.max_concurrent = 2
    with pytest.raises(BulkheadFullError):
        call(b)
    stacks[0].close()                        # 2 in flight, limit 2: still full
    with pytest.raises(BulkheadFullError):
        call(b)
    stacks[1].close()                        # 1 in flight: room for one
    call(b)
    stacks[2].close()
    assert b.in_flight == 0


def test_growing_wakes_a_waiting_thread(twin):
    b = Bulkhead(1, max_wait=None)
    admitted = threading.Event()

    def waiter():
        with b:
            admitted.set()

    with b:
        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        deadline = threading.Event()
        while b.snapshot()["waiting"] < 1 and not deadline.wait(0.0005):
            pass
        b.configure(max_concurrent=2)        # no slot is released: the new one wakes it
        assert admitted.wait(SAFETY)
    t.join(SAFETY)
    assert b.in_flight == 0 and b._kernel.waiters == 0


@pytest.mark.asyncio
async def test_growing_wakes_a_waiting_task(twin):
    b = Bulkhead(1, max_wait=None)
    async with b:
        async def waiter():
            async with b:
                return "in"
        task = asyncio.create_task(waiter())
        while b.snapshot()["waiting"] < 1:
            await asyncio.sleep(0)
        b.max_concurrent = 2
        assert await asyncio.wait_for(task, SAFETY) == "in"
    assert b.in_flight == 0 and b._kernel.waiters == 0


def test_max_wait_change_reaches_an_existing_wrapper(twin, clock):
    b = Bulkhead(1, clock=clock)

    @b
    def handler():
        return "ran"

    with b:
        with pytest.raises(BulkheadFullError):
            handler()
        assert clock() == 100.0
        b.max_wait = 2.0                     # the decorated function now waits (on the clock)
        with pytest.raises(BulkheadFullError):
            handler()
        assert clock() == 102.0
    assert handler() == "ran"


@pytest.mark.parametrize("changes,match", [
    ({"max_concurrent": 0}, "max_concurrent"), ({"max_wait": -1}, "max_wait"),
    ({"max_concurrent": 4, "max_wait": "x"}, "max_wait"), ({"limit": 3}, "limit"),
    ({"name": "x"}, "name")])
def test_bulkhead_configure_checks_and_applies_nothing_on_error(twin, changes, match):
    b = Bulkhead(2, max_wait=1.0)
    with pytest.raises(ConfigurationError, match=match):
        b.configure(**changes)
    assert (b.max_concurrent, b.max_wait, b._kernel.limit) == (2, 1.0, 2)


# -- CircuitBreaker -------------------------------------------------------------------------
def test_assigned_failure_rate_changes_when_it_trips(twin, clock):
    """breaker.failure_rate = 0.9 used to be ignored."""
    b = CircuitBreaker(clock=clock, minimum_calls=4, failure_rate=0.5)
    b.failure_rate = 0.9
    for exc in (Boom(), None, Boom(), None):
        with contextlib.suppress(Boom):
            call(b, exc)
    assert b.state == "closed"               # 0.5 < 0.9
    assert b.snapshot()["config"]["failure_rate"] == 0.9 == b.failure_rate
    b.failure_rate = 0.5
    fail(b)                                  # the next outcome checks the new threshold
    assert b.state == "open"


def test_configure_keeps_the_window(twin, clock):
    b = CircuitBreaker(clock=clock, minimum_calls=100)
    for _ in range(3):
        fail(b)
    b.configure(failure_count=4)
    assert b.snapshot()["failures"] == 3
    fail(b)
    assert b.state == "open"


def test_configure_is_all_or_nothing(twin, clock):
    b = CircuitBreaker(clock=clock, failure_rate=0.5, open_duration=5.0)
    with pytest.raises(ConfigurationError, match="minimum_calls"):
        b.configure(failure_rate=0.9, open_duration=1.0, minimum_calls=0)
    assert (b.failure_rate, b.open_duration, b.minimum_calls) == (0.5, 5.0, 20)
    assert b._kernel.failure_rate == 0.5 and b._kernel.open_duration == 5.0


@pytest.mark.parametrize("changes,match", [
    ({"failure_rat": 0.9}, "failure_rat"), ({"window": 20.0}, "window"),
    ({"buckets": 5}, "buckets"), ({"record": Boom}, "record"),
    ({"slow_call_duration": 1.0}, "slow_call_duration"), ({"half_open_calls": 0}, "half_open")])
def test_breaker_configure_refuses(twin, clock, changes, match):
    b = CircuitBreaker(clock=clock)
    with pytest.raises(ConfigurationError, match=match):
        b.configure(**changes)


def test_window_and_buckets_are_read_only(twin, clock):
    b = CircuitBreaker(clock=clock, window=4.0, buckets=4)
    for name in ("window", "buckets"):
        with pytest.raises(AttributeError):
            setattr(b, name, 8)
    assert (b.window, b.buckets) == (4.0, 4)


def test_slow_call_duration_changes_between_values(twin, clock):
    b = CircuitBreaker(clock=clock, slow_call_duration=1.0, slow_call_rate=0.5, minimum_calls=2)
    b.slow_call_duration = 0.5
    for _ in range(2):
        with b:
            clock.advance(0.75)              # slow under the new threshold only
    assert b.state == "open"


def test_shorter_open_duration_applies_to_an_open_breaker(twin, clock):
    b = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=10.0)
    fail(b)
    b.open_duration = 2.0
    with pytest.raises(CircuitOpenError) as info:
        call(b)
    assert info.value.retry_after == 2.0
    clock.advance(2.0)
    assert b.state == "half_open"


def test_more_half_open_calls_let_more_probes_through(twin, clock):
    b = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=1.0)
    fail(b)
    clock.advance(1.0)
    with contextlib.ExitStack() as stack:
        stack.enter_context(b)               # the one probe
        with pytest.raises(CircuitOpenError):
            call(b)
        b.half_open_calls = 2
        call(b)                              # a second slot: this probe succeeds...
        assert b.state == "half_open"        # ...but both must
    assert b.state == "closed"


def test_fewer_half_open_calls_close_once_enough_probes_succeeded(twin, clock):
    b = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=1.0,
                       half_open_calls=3)
    fail(b)
    clock.advance(1.0)
    events = []
    b.on_state_change(lambda br, old, new: events.append((old, new)))
    call(b)
    assert b.state == "half_open"
    b.configure(half_open_calls=1)           # one success is now enough
    assert b.state == "closed"
    assert events[-1] == ("half_open", "closed")


# -- AdaptiveThrottle -----------------------------------------------------------------------
def test_throttle_k_and_protection_are_live(twin, clock):
    t = AdaptiveThrottle(clock=clock, k=2.0, protection=0, rng=lambda: 0.999)
    for _ in range(10):
        fail(t)
    assert t.drop_probability() == 10 / 11
    t.protection = 5
    assert t.drop_probability() == 5 / 11
    t.configure(k=1.0, protection=0)
    assert t.snapshot()["config"]["k"] == 1.0
    with pytest.raises(ConfigurationError, match="k must be >= 1"):
        t.k = 0.5
    with pytest.raises(ConfigurationError, match="window"):
        t.configure(window=1.0)
    with pytest.raises(AttributeError):
        t.window = 1.0
    assert (t.k, t.protection) == (1.0, 0.0)
