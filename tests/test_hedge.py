"""Hedge: a second attempt after ``delay`` if the first has not answered, the first answer
wins, the losers are cancelled and their permits are back when the caller resumes; a failed
attempt starts the next at once; cancelling the caller cancels every attempt; sync functions
are refused."""
from __future__ import annotations

import asyncio
from typing import List

import pytest

from gameguard import Bulkhead, CircuitBreaker, ConfigurationError, ManualClock, pipeline
from gameguard.hedge import Hedge

SAFETY = 5.0  # seconds: a bound on any real wait in these tests


class Boom(Exception):
    pass


class Script:
    """A coroutine function whose n-th attempt does ``plan[n]``: ``"stall"`` (never answers),
    ``"fail"`` or a value to return. Records starts and cancellations."""

    def __init__(self, *plan: object) -> None:
        self.plan = list(plan)
        self.started: List[int] = []
        self.cancelled: List[int] = []

    async def __call__(self) -> object:
        n = len(self.started)
        self.started.append(n)
        step = self.plan[n] if n < len(self.plan) else "stall"
        try:
            if step == "stall":
                await asyncio.Event().wait()
            await asyncio.sleep(0)
            if step == "fail":
                raise Boom(n)
            return step
        except asyncio.CancelledError:
            self.cancelled.append(n)
            raise


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.mark.asyncio
async def test_a_quick_first_answer_starts_no_hedge(clock):
    hedge = Hedge(1.0, clock=clock)
    script = Script("first")
    assert await asyncio.wait_for(hedge(script)(), SAFETY) == "first"
    assert script.started == [0] and hedge.snapshot()["hedges"] == 0


@pytest.mark.asyncio
async def test_a_slow_first_attempt_is_hedged_and_the_loser_cancelled_with_its_permit(twin,
                                                                                        clock):
    hedge = Hedge(0.5, clock=clock)
    bulkhead = Bulkhead(2, clock=clock)
    script = Script("stall", "second")
    result = await asyncio.wait_for(pipeline(hedge, bulkhead)(script)(), SAFETY)
    assert result == "second"
    assert script.cancelled == [0]
    assert bulkhead.in_flight == 0  # the loser's slot is back before the caller resumes
    assert clock() == 0.5
    assert hedge.snapshot()["hedge_wins"] == 1


@pytest.mark.asyncio
async def test_with_the_loop_timer_too():
    script = Script("stall", "second")
    assert await asyncio.wait_for(Hedge(0.01)(script)(), SAFETY) == "second"
    assert script.cancelled == [0]


@pytest.mark.asyncio
async def test_the_first_answer_wins_even_from_the_first_attempt(twin, clock):
    """Attempt 0 answers while attempt 1 still stalls: attempt 1 is the loser."""
    gate = asyncio.Event()
    started: List[int] = []
    cancelled: List[int] = []

    async def f():
        n = len(started)
        started.append(n)
        try:
            if n == 0:
                await gate.wait()
                return "first"
            gate.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise

    hedge = Hedge(0.5, clock=clock)
    assert await asyncio.wait_for(hedge(f)(), SAFETY) == "first"
    assert started == [0, 1] and cancelled == [1] and hedge.snapshot()["hedge_wins"] == 0


@pytest.mark.asyncio
async def test_a_failed_attempt_starts_the_next_at_once():
    script = Script("fail", "second")
    # a delay far past SAFETY: waiting for it would fail the wait_for
    assert await asyncio.wait_for(Hedge(100 * SAFETY)(script)(), SAFETY) == "second"
    assert script.started == [0, 1]


@pytest.mark.asyncio
async def test_when_every_attempt_fails_the_last_failure_propagates(clock):
    script = Script("fail", "fail", "fail")
    with pytest.raises(Boom) as info:
        await asyncio.wait_for(Hedge(1.0, max_extra=2, clock=clock)(script)(), SAFETY)
    assert info.value.args == (2,) and script.started == [0, 1, 2]


@pytest.mark.asyncio
async def test_max_extra_attempts_at_most(clock):
    script = Script("stall", "stall", "third")
    hedge = Hedge(0.1, max_extra=2, clock=clock)
    assert await asyncio.wait_for(hedge(script)(), SAFETY) == "third"
    assert sorted(script.cancelled) == [0, 1] and hedge.snapshot()["hedges"] == 2


@pytest.mark.asyncio
async def test_delay_zero_starts_every_attempt_together():
    script = Script("stall", "stall", "third")
    assert await asyncio.wait_for(Hedge(0.0, max_extra=2)(script)(), SAFETY) == "third"
    assert script.started == [0, 1, 2]


@pytest.mark.asyncio
async def test_cancelling_the_caller_cancels_every_attempt_and_returns_permits(twin, clock):
    bulkhead = Bulkhead(3, clock=clock)
    script = Script("stall", "stall")
    task = asyncio.ensure_future(pipeline(Hedge(0.1, clock=clock), bulkhead)(script)())
    for _ in range(100):  # bounded: both attempts start within a few loop turns
        if len(script.started) == 2:
            break
        await asyncio.sleep(0)
    assert script.started == [0, 1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, SAFETY)
    assert sorted(script.cancelled) == [0, 1] and bulkhead.in_flight == 0


@pytest.mark.asyncio
async def test_a_breaker_inside_sees_every_attempt(twin, clock):
    breaker = CircuitBreaker(clock=clock, consecutive_failures=10)
    script = Script("fail", "ok")
    assert await asyncio.wait_for(pipeline(Hedge(1.0, clock=clock), breaker)(script)(),
                                  SAFETY) == "ok"
    snap = breaker.snapshot()
    assert (snap["calls"], snap["failures"]) == (2, 1)


def test_sync_functions_are_refused_at_decoration():
    with pytest.raises(TypeError, match="raced"):
        Hedge(0.1)(lambda: 1)


@pytest.mark.parametrize("kwargs,match", [(dict(delay=-1), "delay.*-1"),
                                          (dict(delay=0.1, max_extra=0), "max_extra.*0"),
                                          (dict(delay=0.1, max_extra=11), "max_extra.*11")])
def test_bad_arguments_name_the_parameter_and_value(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        Hedge(**kwargs)


@pytest.mark.asyncio
@pytest.mark.parametrize("winner", [0, 1])
async def test_every_outcome_is_read_so_none_is_reported_never_retrieved(clock, winner):
    """Both attempts end in the same loop turn, one returning and one raising."""
    import gc
    reported = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: reported.append(context))
    gate = asyncio.Event()
    started: List[int] = []

    async def f():
        n = len(started)
        started.append(n)
        if n == 0:
            await gate.wait()   # woken in the turn after attempt 1 starts
        else:
            gate.set()
            await asyncio.sleep(0)  # resumes in that same turn
        if n == winner:
            return "ok"
        raise Boom(n)

    try:
        assert await asyncio.wait_for(Hedge(0.5, clock=clock)(f)(), SAFETY) == "ok"
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert started == [0, 1] and reported == []
