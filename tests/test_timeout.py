"""Timeout: an async call still running at the deadline is cancelled and raises the builtin
TimeoutError (a failure for an outer breaker), permits inside come back, an outside
cancellation stays a cancellation, sync functions are refused at decoration, and the
per-attempt / total order in a pipeline with Retry."""
from __future__ import annotations

import asyncio

import pytest

from gameguard import Bulkhead, CircuitBreaker, ConfigurationError, ManualClock, pipeline
from gameguard.retry import Retry
from gameguard.timeout import Timeout

SAFETY = 5.0  # seconds: a bound on any real wait in these tests


def stalling():
    """A coroutine function that never answers; ``.cancelled`` counts its cancellations."""
    async def f(*args, **kwargs):
        f.calls += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            f.cancelled += 1
            raise
    f.calls = f.cancelled = 0
    return f


@pytest.mark.asyncio
async def test_a_call_past_the_deadline_is_cancelled_and_raises_timeout_error():
    f = stalling()
    timeout = Timeout(0.02)
    with pytest.raises(TimeoutError, match="0.02"):
        await asyncio.wait_for(timeout(f)(), SAFETY)
    assert f.cancelled == 1 and timeout.snapshot()["timeouts"] == 1


@pytest.mark.asyncio
async def test_the_deadline_follows_a_manual_clock():
    clock = ManualClock()
    f = stalling()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(Timeout(5.0, clock=clock)(f)(), SAFETY)
    assert clock() == 5.0 and f.cancelled == 1


@pytest.mark.asyncio
async def test_an_answer_in_time_is_returned_and_the_timer_is_dropped():
    timeout = Timeout(SAFETY)

    @timeout
    async def f(x):
        await asyncio.sleep(0)
        return x * 2

    assert await f(21) == 42
    assert timeout.snapshot()["timeouts"] == 0
    loop = asyncio.get_running_loop()
    assert not [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]


@pytest.mark.asyncio
async def test_an_outside_cancellation_stays_a_cancellation():
    f = stalling()
    task = asyncio.ensure_future(Timeout(SAFETY)(f)())
    while not f.calls:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, SAFETY)
    assert f.cancelled == 1


@pytest.mark.asyncio
async def test_the_callers_own_exception_passes_through():
    class Boom(Exception):
        pass

    err = Boom()

    async def f():
        raise err

    with pytest.raises(Boom) as info:
        await Timeout(SAFETY)(f)()
    assert info.value is err


@pytest.mark.asyncio
async def test_an_outer_breaker_counts_a_timeout_as_a_failure_and_permits_come_back(twin):
    clock = ManualClock()
    breaker = CircuitBreaker(clock=clock, consecutive_failures=2)
    bulkhead = Bulkhead(1, clock=clock)
    f = stalling()
    guarded = pipeline(breaker, Timeout(1.0, clock=clock), bulkhead)(f)
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(guarded(), SAFETY)
        assert bulkhead.in_flight == 0
    assert breaker.state == "open" and f.cancelled == 2


@pytest.mark.asyncio
async def test_attempt_timeouts_inside_a_retry_each_count(twin):
    clock = ManualClock()
    breaker = CircuitBreaker(clock=clock, consecutive_failures=10)
    f = stalling()
    guarded = pipeline(Retry(3, backoff=0.0, clock=clock), breaker,
                       Timeout(0.3, clock=clock))(f)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(guarded(), SAFETY)
    assert f.calls == 3 and f.cancelled == 3
    assert breaker.snapshot()["failures"] == 3


@pytest.mark.asyncio
async def test_a_total_timeout_outside_the_retry_ends_the_retries():
    clock = ManualClock()
    f = stalling()
    guarded = pipeline(Timeout(1.0, clock=clock), Retry(100, clock=clock))(f)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(guarded(), SAFETY)
    assert f.calls == 1  # the one attempt was cancelled by the total deadline: not retried


def test_sync_functions_are_refused_at_decoration(twin):
    def f():
        return 1

    with pytest.raises(TypeError, match="pre-empted"):
        Timeout(1.0)(f)
    with pytest.raises(TypeError, match="pre-empted"):
        pipeline(CircuitBreaker(), Timeout(1.0))(f)


@pytest.mark.asyncio
async def test_with_blocks_are_refused():
    with pytest.raises(TypeError, match="decorate"):
        async with Timeout(1.0):
            pass


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan"), "1"])
def test_bad_seconds_name_the_parameter_and_value(seconds):
    with pytest.raises(ConfigurationError, match="seconds"):
        Timeout(seconds)
