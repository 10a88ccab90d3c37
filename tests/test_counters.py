"""Cumulative counters: calls by outcome, rejections and fallbacks, counted once per call on
every path (decorator, ``with``, ``async with``, pipeline, manual API, ``try_acquire``),
cache reads and loads, saga outcomes; the same on both twins."""
from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from hypothesis import given, settings, strategies as st

import gameguard as gg
from gameguard import _impl
from gameguard.saga import Saga, SQLiteStore

NAMES = ("successful", "failed", "ignored", "rejected", "fallbacks")


class Recorded(Exception):
    """Counts as a failure for the breakers below."""


class Ignored(Exception):
    """Ignored by the breakers below."""


def counters(guard: Any) -> Dict[str, int]:
    return dict(zip(NAMES, guard._kernel.counters()))


def run_ops(ops: List[int], seed: int = 0) -> Dict[str, Dict[str, int]]:
    """Drive a breaker (alone, in ``with`` and in a pipeline with a bulkhead) through
    ``ops`` on a ManualClock; returns the counters the test expects, by guard, tallied from
    what each call visibly did."""
    clock = gg.ManualClock()
    breaker = gg.CircuitBreaker("b", minimum_calls=4, failure_rate=0.5, open_duration=2.0,
                                window=10.0, ignore=Ignored, clock=clock)
    bulkhead = gg.Bulkhead(1, clock=clock, name="bh")
    both = gg.pipeline(breaker, bulkhead)
    want = {g: dict.fromkeys(NAMES, 0) for g in ("b", "bh")}

    def body(op: int) -> int:
        if op == 1:
            raise Recorded()
        if op == 2:
            raise Ignored()
        return op

    plain = breaker(body)
    answered = breaker(fallback=lambda op: -1)(body)
    piped = both(body)
    outcome = {0: "successful", 1: "failed", 2: "ignored"}
    for i, op in enumerate(ops):
        form, kind = divmod(op, 3)
        if form == 4:
            clock.advance(0.7)
            continue
        try:
            if form == 0:
                result = plain(kind)
            elif form == 1:
                result = answered(kind)
            elif form == 2:
                with breaker:
                    body(kind)
                result = kind
            else:
                result = piped(kind)
        except gg.CircuitOpenError:
            want["b"]["rejected"] += 1
            continue
        except (Recorded, Ignored):
            pass
        else:
            if result == -1:  # the fallback answered a rejection
                want["b"]["rejected"] += 1
                want["b"]["fallbacks"] += 1
                continue
        want["b"][outcome[kind]] += 1
        if form == 3:  # the bulkhead does not judge outcomes: a raise is ignored by it
            want["bh"]["successful" if kind == 0 else "ignored"] += 1
    got = {"b": counters(breaker), "bh": counters(bulkhead)}
    assert got == want
    return got


def test_counters_after_a_seeded_run_equal_the_outcomes_seen(twin: str) -> None:
    rng = random.Random(11)
    got = run_ops([rng.randrange(15) for _ in range(600)])
    assert got["b"]["rejected"] > 0 and got["b"]["fallbacks"] > 0 and got["b"]["failed"] > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 14), max_size=80))
def test_both_twins_count_alike(ops: List[int]) -> None:
    results = []
    for which in ("fast", "pure"):
        with _impl.use(which):
            results.append(run_ops(ops))
    assert results[0] == results[1]


def test_a_refusal_inside_a_pipeline_is_ignored_by_the_outer_guards(twin: str) -> None:
    clock = gg.ManualClock()
    breaker, bulkhead = gg.CircuitBreaker(clock=clock), gg.Bulkhead(1, clock=clock)
    both = gg.pipeline(breaker, bulkhead, fallback=lambda: "busy")
    with bulkhead:
        assert both(lambda: "ran")() == "busy"
        with pytest.raises(gg.BulkheadFullError):
            with both:
                pass
    assert counters(breaker) == dict(zip(NAMES, (0, 0, 2, 0, 0)))
    assert counters(bulkhead) == dict(zip(NAMES, (1, 0, 0, 2, 1)))


def test_an_async_wait_that_runs_out_counts_the_call_once(twin: str) -> None:
    clock = gg.ManualClock()
    breaker = gg.CircuitBreaker(clock=clock)
    bulkhead = gg.Bulkhead(1, max_wait=0.5, clock=clock)
    both = gg.pipeline(breaker, bulkhead)

    @both
    async def call() -> str:
        return "ran"

    async def main() -> None:
        with bulkhead:  # full: the async call waits 0.5 s on the ManualClock, then gives up
            with pytest.raises(gg.BulkheadFullError):
                await call()
            with pytest.raises(gg.BulkheadFullError):
                async with both:
                    pass
        assert await call() == "ran"
        async with both:
            pass
    asyncio.run(main())
    assert counters(breaker) == dict(zip(NAMES, (2, 0, 2, 0, 0)))
    assert counters(bulkhead) == dict(zip(NAMES, (3, 0, 0, 2, 0)))


def test_async_decorator_counts_outcomes_and_fallbacks(twin: str) -> None:
    clock = gg.ManualClock()
    breaker = gg.CircuitBreaker(consecutive_failures=1, clock=clock)

    @breaker(fallback=lambda fail: "fallback")
    async def call(fail: bool) -> str:
        if fail:
            raise Recorded()
        return "ok"

    async def main() -> None:
        assert await call(False) == "ok"
        with pytest.raises(Recorded):
            await call(True)
        assert await call(False) == "fallback"
    asyncio.run(main())
    assert counters(breaker) == dict(zip(NAMES, (1, 1, 0, 1, 1)))


def test_the_manual_api_counts(twin: str) -> None:
    clock = gg.ManualClock()
    breaker = gg.CircuitBreaker(consecutive_failures=2, clock=clock)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow()
    breaker.record_failure()
    breaker.record_failure()
    assert not breaker.allow()
    assert counters(breaker) == dict(zip(NAMES, (1, 2, 0, 1, 0)))
    throttle = gg.AdaptiveThrottle(clock=clock, rng=lambda: 0.0, protection=0)
    throttle.record_success()
    throttle.record_failure()
    refused = sum(not throttle.allow() for _ in range(5))
    assert counters(throttle) == dict(zip(NAMES, (1, 1, 0, refused, 0)))


def test_try_acquire_counts_its_decisions(twin: str) -> None:
    clock = gg.ManualClock()
    bucket = gg.TokenBucket(1, 2, clock=clock)
    leaky = gg.LeakyBucket(1, 1, clock=clock)
    for limiter in (bucket, leaky):
        decisions = [limiter.try_acquire() for _ in range(3)]
        assert counters(limiter)["successful"] == sum(decisions)
        assert counters(limiter)["rejected"] == 3 - sum(decisions)
    hybrid = gg.HybridLimiter(capacity=2, leak_capacity=1, clock=clock)
    admitted = [hybrid.try_acquire("burst") for _ in range(3)]
    admitted += [hybrid.steady.try_acquire() for _ in range(2)]
    clock.advance(10.0)
    with hybrid.burst:  # the guard forms count into the same counters
        pass
    got = counters(hybrid)
    assert admitted == [True, True, False, True, False]
    assert (got["successful"], got["rejected"]) == (4, 2)
    assert counters(hybrid.steady) == got


def test_keyed_limiter_counts_every_key_into_the_table(twin: str) -> None:
    clock = gg.ManualClock()
    players = gg.KeyedLimiter(1, 1, clock=clock)
    seen: List[str] = []

    @players.limit(key=lambda p: p, fallback=lambda p: seen.append(p))
    def cast(p: str) -> str:
        return p

    assert [cast("a"), cast("a"), cast("b")] == ["a", None, "b"]
    assert players.try_acquire("c") and not players.try_acquire("c")
    with pytest.raises(gg.RateLimitExceeded):
        with players.bind("b"):
            pass
    with players.bind("d"):
        pass
    assert counters(players) == dict(zip(NAMES, (4, 0, 0, 3, 1)))


def test_cache_counts_reads_and_load_outcomes(twin: str) -> None:
    cache: gg.HotKeyCache[int] = gg.HotKeyCache(maxsize=2, shards=1, clock=gg.ManualClock())

    def broken(key: int) -> int:
        raise Recorded()

    assert cache.get_or_load(1, lambda k: k) == 1
    assert cache.get_or_load(1, lambda k: k) == 1
    with pytest.raises(Recorded):
        cache.get_or_load(2, broken)
    for k in range(3, 9):
        cache.set(k, k)
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (1, 2)
    assert (stats["load_successes"], stats["load_failures"]) == (1, 1)
    assert stats["evictions"] > 0


def test_saga_counts_outcomes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sagas.db")
    try:
        saga = Saga("trade", store=store, seed=1)
        mode = {"step": "ok", "undo": "ok"}

        def undo(ctx: Any) -> None:
            if mode["undo"] == "fail":
                raise Recorded()

        @saga.step(compensate=undo)
        def act(ctx: Any) -> None:
            if mode["step"] == "fail":
                raise Recorded()

        assert saga.run({}).status == "committed"
        mode["step"] = "fail"
        assert saga.run({}).status == "compensated"
        mode["undo"] = "fail"
        assert saga.run({}).status == "failed"
        assert saga.outcomes() == {"committed": 1, "compensated": 1, "failed": 1}
        mode.update(step="ok", undo="ok")
        assert [r.status for r in saga.recover(include_failed=True)] == ["compensated"]
        assert saga.outcomes() == {"committed": 1, "compensated": 2, "failed": 1}
    finally:
        store.close()


def test_bump_refuses_an_unknown_counter(twin: str, kernels: Callable[[str], Any]) -> None:
    k = gg.Bulkhead(1)._kernel
    with pytest.raises(ValueError):
        k.bump(5)
    k.bump(kernels("kernel").FALLBACK)
    assert k.counters() == (0, 0, 0, 0, 1)
