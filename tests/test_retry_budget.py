"""RetryBudget: retries stay within ratio x calls + floor x time however hard a dependency
fails (no retry storm), the counts expire with the window, a Retry refused by its budget
lets the failure propagate, and construction checks."""
from __future__ import annotations

import asyncio

import pytest

from gameguard import ConfigurationError, ManualClock
from gameguard.retry import Retry, RetryBudget


class Down(Exception):
    pass


def always_failing():
    def f():
        f.calls += 1
        raise Down()
    f.calls = 0
    return f


def storm(clock: ManualClock, calls: int, seconds: float, budget: RetryBudget) -> int:
    """``calls`` failing calls spread evenly over ``seconds``; the retries they made."""
    f = always_failing()
    guarded = Retry(3, backoff=0.0, budget=budget, clock=clock)(f)
    for _ in range(calls):
        with pytest.raises(Down):
            guarded()
        clock.advance(seconds / calls)
    return f.calls - calls


def test_a_thousand_failing_calls_make_at_most_ratio_calls_plus_the_floor(twin):
    clock = ManualClock()
    budget = RetryBudget(0.2, 10, clock=clock)
    retries = storm(clock, 1000, 10.0, budget)
    assert retries <= 0.2 * 1000 + 10 * 10.0
    assert retries >= 0.2 * 1000 + 10 * 10.0 - 2  # and the budget is spent, not wasted
    assert budget.snapshot()["refused"] > 0


def test_over_a_longer_time_the_floor_is_per_second(twin):
    clock = ManualClock()
    budget = RetryBudget(0.2, 10, clock=clock)
    retries = storm(clock, 1000, 100.0, budget)
    assert retries <= 0.2 * 1000 + 10 * 100.0  # far below the 2000 attempts=3 could make


def test_without_a_budget_the_storm_is_every_retry(twin):
    clock = ManualClock()
    f = always_failing()
    guarded = Retry(3, backoff=0.0, clock=clock)(f)
    for _ in range(100):
        with pytest.raises(Down):
            guarded()
    assert f.calls == 300


def test_ratio_alone_allows_a_share_of_calls(twin):
    clock = ManualClock()
    budget = RetryBudget(0.1, 0, clock=clock)
    assert not budget.try_withdraw()  # no calls, no floor: nothing to spend
    for _ in range(10):
        budget.deposit()
    assert budget.balance == pytest.approx(1.0)
    assert budget.try_withdraw() and not budget.try_withdraw()


def test_counts_expire_with_the_window(twin):
    clock = ManualClock()
    budget = RetryBudget(0.0, 1, window=5.0, buckets=5, clock=clock)
    assert sum(budget.try_withdraw() for _ in range(10)) == 5  # the floor: 1/s over 5 s
    clock.advance(2.0)
    assert not budget.try_withdraw()
    clock.advance(3.0)  # the withdrawals' bucket left the window
    assert budget.balance == pytest.approx(5.0) and budget.try_withdraw()
    snap = budget.snapshot()
    assert (snap["calls"], snap["retries"]) == (0, 1)


def test_a_retry_the_budget_refuses_is_not_made_and_counted(twin):
    clock = ManualClock()
    budget = RetryBudget(0.0, 0, clock=clock)
    f = always_failing()
    retry = Retry(5, budget=budget, clock=clock)
    with pytest.raises(Down):
        retry(f)()
    assert f.calls == 1 and retry.snapshot()["budget_refused"] == 1


def test_one_budget_is_shared_by_every_retry_using_it(twin):
    clock = ManualClock()
    budget = RetryBudget(0.0, 0.4, window=10.0, clock=clock)  # 4 retries per window in all
    a, b = always_failing(), always_failing()
    ga = Retry(3, backoff=0.0, budget=budget, clock=clock)(a)
    gb = Retry(3, backoff=0.0, budget=budget, clock=clock)(b)
    for g in (ga, gb, ga, gb):
        with pytest.raises(Down):
            g()
    assert (a.calls - 2) + (b.calls - 2) == 4
    assert budget.snapshot()["calls"] == 4


@pytest.mark.asyncio
async def test_async_calls_deposit_and_withdraw_too(twin):
    clock = ManualClock()
    budget = RetryBudget(0.5, 0, clock=clock)
    calls = []

    async def f():
        calls.append(1)
        await asyncio.sleep(0)
        raise Down()

    guarded = Retry(3, backoff=0.0, budget=budget, clock=clock)(f)
    for _ in range(4):
        with pytest.raises(Down):
            await guarded()
    assert len(calls) - 4 <= 0.5 * 4 and budget.snapshot()["retries"] == len(calls) - 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratio=-0.1), "ratio.*-0.1"), (dict(min_per_second=-1), "min_per_second.*-1"),
    (dict(window=0), "window.*0"), (dict(buckets=0), "buckets.*0"),
    (dict(clock=5), "clock.*5"), (dict(ratio="x"), "ratio.*'x'"),
])
def test_bad_arguments_name_the_parameter_and_value(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        RetryBudget(**kwargs)


def test_a_bad_clock_reading_is_an_error_not_a_decision(twin):
    readings = iter([0.0, float("nan")])
    budget = RetryBudget(clock=lambda: next(readings))
    with pytest.raises(ValueError, match="clock"):
        budget.try_withdraw()
