"""The rule-in-force indirection: ``@rules.guard(resource)``, ``with`` and ``async with``
against the same guards used directly, in the same run (target: at most 10 % over the
direct guard); and a fresh task that opens a block, against one that does not (the block's
cost per task, with the collector running as a server's does).

Each group has a bare call as baseline; compare ``rules_*`` with ``direct_*`` in the ratio
table. Limits are sized so no call is ever refused.
"""
from __future__ import annotations

import asyncio

import pytest

import gameguard as gg
from gameguard.rules import Rules

from bench_breaker import _twin, ahandler, handler
from conftest import LOOP

BIG = 10.0 ** 12
FULL = {"breaker": {"minimum_calls": 20},
        "limit": {"kind": "token", "rate": BIG, "capacity": BIG},
        "bulkhead": {"max_concurrent": 64}}


def direct(kind: str, full: bool):
    with _twin(kind):
        if not full:
            return gg.CircuitBreaker("bench")
        return gg.pipeline(gg.CircuitBreaker("bench"), gg.TokenBucket(BIG, BIG),
                           gg.Bulkhead(64))


def ruled(kind: str, full: bool) -> Rules:
    with _twin(kind):
        return Rules({"resource": {"r": FULL if full else {"breaker": FULL["breaker"]}}})


@pytest.mark.benchmark(group="rules-sync")
def test_bare_call(benchmark, loop_calls):
    benchmark(loop_calls(handler))


@pytest.mark.benchmark(group="rules-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
@pytest.mark.parametrize("full", [False, True], ids=["breaker", "breaker+limit+bulkhead"])
def test_direct(benchmark, loop_calls, kind, full):
    benchmark(loop_calls(direct(kind, full)(handler)))


@pytest.mark.benchmark(group="rules-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
@pytest.mark.parametrize("full", [False, True], ids=["breaker", "breaker+limit+bulkhead"])
def test_rules(benchmark, loop_calls, kind, full):
    benchmark(loop_calls(ruled(kind, full).guard("r")(handler)))


@pytest.mark.benchmark(group="rules-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_rules_no_rule_passes_through(benchmark, loop_calls, kind):
    benchmark(loop_calls(ruled(kind, False).guard("unruled")(handler)))


@pytest.mark.benchmark(group="rules-with")
def test_bare_block(benchmark):
    def run():
        for _ in range(LOOP):
            handler(1)
    benchmark(run)


@pytest.mark.benchmark(group="rules-with")
@pytest.mark.parametrize("kind", ["fast", "pure"])
@pytest.mark.parametrize("how", ["direct", "rules"])
def test_with_block(benchmark, how, kind):
    g = direct(kind, False) if how == "direct" else ruled(kind, False).guard("r")

    def run():
        for _ in range(LOOP):
            with g:
                handler(1)
    benchmark(run)


def _drive(coro) -> None:
    """Run a coroutine that never suspends (admitted blocks do not), without a loop."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("the coroutine suspended")


@pytest.mark.benchmark(group="rules-async-with")
def test_bare_async_block(benchmark):
    async def run():
        for _ in range(LOOP):
            handler(1)
    benchmark(lambda: _drive(run()))


@pytest.mark.benchmark(group="rules-async-with")
@pytest.mark.parametrize("kind", ["fast", "pure"])
@pytest.mark.parametrize("how", ["direct", "rules"])
def test_async_with_block(benchmark, how, kind):
    g = direct(kind, False) if how == "direct" else ruled(kind, False).guard("r")

    async def run():
        for _ in range(LOOP):
            async with g:
                handler(1)
    benchmark(lambda: _drive(run()))


@pytest.mark.benchmark(group="rules-fresh-tasks")
@pytest.mark.parametrize("how", ["bare", "direct", "rules"])
def test_fresh_tasks(benchmark, how):
    """LOOP fresh tasks, each opening one ``async with`` block (bare: none)."""
    g = None if how == "bare" else (
        direct("fast", False) if how == "direct" else ruled("fast", False).guard("r"))

    async def task():
        if g is None:
            return handler(1)
        async with g:
            return handler(1)

    async def tasks():
        for _ in range(LOOP):
            await asyncio.create_task(task())
    loop = asyncio.new_event_loop()
    try:
        benchmark(lambda: loop.run_until_complete(tasks()))
    finally:
        loop.close()


@pytest.mark.benchmark(group="rules-async")
@pytest.mark.parametrize("how", ["bare", "direct", "rules"])
def test_async(benchmark, how):
    f = ahandler if how == "bare" else (
        direct("fast", False) if how == "direct" else ruled("fast", False).guard("r"))(ahandler)

    async def calls():
        for _ in range(LOOP):
            await f(1)
    loop = asyncio.new_event_loop()
    try:
        benchmark(lambda: loop.run_until_complete(calls()))
    finally:
        loop.close()
