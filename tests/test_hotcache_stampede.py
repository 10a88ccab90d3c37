"""Singleflight under real concurrency: threads and asyncio tasks missing one key at once.
Counts are asserted, never timings; waiting is on events, not sleeps."""
from __future__ import annotations

import asyncio
import threading

import pytest

from gameguard import ManualClock
from gameguard.hotcache import HotKeyCache


def wait_until(predicate, what: str) -> None:
    """Spin (yielding the GIL) until ``predicate()``; fail rather than hang."""
    gate = threading.Event()
    for _ in range(200_000):
        if predicate():
            return
        gate.wait(0.0005)  # yields to the other threads; nothing is timed
    raise AssertionError(f"timed out waiting for {what}")


def test_64_threads_one_load(twin):
    cache = HotKeyCache(clock=ManualClock(), ttl_jitter=0.0)
    release = threading.Event()
    calls = []

    def loader(key):
        calls.append(key)
        release.wait(30)
        return "item"

    start = threading.Barrier(64)
    results = []

    def reader():
        start.wait()
        results.append(cache.get_or_load("auction:1", loader))

    threads = [threading.Thread(target=reader) for _ in range(64)]
    for t in threads:
        t.start()
    wait_until(lambda: cache.stats()["coalesced"] == 63, "63 coalesced waiters")
    release.set()
    for t in threads:
        t.join(30)
    assert results == ["item"] * 64 and calls == ["auction:1"]
    st = cache.stats()
    assert st["loads"] == 1 and st["coalesced"] == 63


def test_threads_share_the_exception_and_nothing_is_cached(twin):
    cache = HotKeyCache(clock=ManualClock())
    release = threading.Event()
    calls = []

    def loader(key):
        calls.append(key)
        release.wait(30)
        raise TimeoutError("db timeout")

    errors = []

    def reader():
        try:
            cache.get_or_load("k", loader)
        except TimeoutError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    wait_until(lambda: cache.stats()["coalesced"] == 15, "15 coalesced waiters")
    release.set()
    for t in threads:
        t.join(30)
    assert len(errors) == 16 and len(calls) == 1 and len({id(e) for e in errors}) == 1
    assert len(cache) == 0
    assert cache.get_or_load("k", lambda k: "ok") == "ok"


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt/SystemExit inside one thread's loader."""


def test_thread_leader_interrupted_a_waiter_takes_over(twin):
    cache = HotKeyCache(clock=ManualClock())
    release = threading.Event()
    calls = []

    def loader(key):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            release.wait(30)
            raise Interrupted()
        return "value"

    out = {}

    def reader(name):
        try:
            out[name] = cache.get_or_load("k", loader)
        except Interrupted:
            out[name] = "interrupted"

    first = threading.Thread(target=reader, args=("leader",), name="leader")
    first.start()
    wait_until(lambda: calls, "the leader's load")
    others = [threading.Thread(target=reader, args=(f"w{i}",)) for i in range(8)]
    for t in others:
        t.start()
    wait_until(lambda: cache.stats()["coalesced"] == 8, "8 coalesced waiters")
    release.set()
    for t in [first, *others]:
        t.join(30)
    assert out.pop("leader") == "interrupted"
    assert set(out.values()) == {"value"} and len(out) == 8
    assert len(calls) == 2  # exactly one waiter took over


@pytest.mark.asyncio
async def test_1000_tasks_one_load(twin):
    cache = HotKeyCache(clock=ManualClock())
    release = asyncio.Event()
    calls = []

    async def loader(key):
        calls.append(key)
        await release.wait()
        return {"price": 100}

    tasks = [asyncio.ensure_future(cache.get_or_load_async("lb:top", loader))
             for _ in range(1000)]
    while cache.stats()["coalesced"] < 999:
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == ["lb:top"] and all(r == {"price": 100} for r in results)
    assert results[0] is results[-1]  # one shared result


@pytest.mark.asyncio
async def test_async_exception_reaches_every_waiter(twin):
    cache = HotKeyCache(clock=ManualClock())
    release = asyncio.Event()
    calls = []

    async def loader(key):
        calls.append(key)
        await release.wait()
        raise LookupError("no row")

    tasks = [asyncio.ensure_future(cache.get_or_load_async("k", loader)) for _ in range(100)]
    while cache.stats()["coalesced"] < 99:
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results) and calls == ["k"]
    assert len(cache) == 0


@pytest.mark.asyncio
async def test_cancelled_leader_hands_over(twin):
    cache = HotKeyCache(clock=ManualClock())
    started = asyncio.Event()
    release = asyncio.Event()
    calls = []

    async def loader(key):
        calls.append(key)
        started.set()
        await release.wait()
        return len(calls)

    leader = asyncio.ensure_future(cache.get_or_load_async("k", loader))
    await started.wait()
    waiters = [asyncio.ensure_future(cache.get_or_load_async("k", loader)) for _ in range(10)]
    while cache.stats()["coalesced"] < 10:
        await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    while len(calls) < 2:
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [2] * 10
    assert len(calls) == 2 and cache.get("k") == 2


@pytest.mark.asyncio
async def test_cancelled_waiter_leaves_others_waiting(twin):
    cache = HotKeyCache(clock=ManualClock())
    release = asyncio.Event()

    async def loader(key):
        await release.wait()
        return "v"

    tasks = [asyncio.ensure_future(cache.get_or_load_async("k", loader)) for _ in range(5)]
    while cache.stats()["coalesced"] < 4:
        await asyncio.sleep(0)
    tasks[2].cancel()
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 2] == ["v"] * 4


@pytest.mark.asyncio
async def test_threads_and_tasks_share_one_load(twin):
    cache = HotKeyCache(clock=ManualClock())
    release = threading.Event()
    calls = []

    def loader(key):
        calls.append(key)
        release.wait(30)
        return 42

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_load("k", loader)))
               for _ in range(4)]
    for t in threads:
        t.start()
    while not calls:
        await asyncio.sleep(0)
    tasks = [asyncio.ensure_future(cache.get_or_load_async("k", loader)) for _ in range(20)]
    while cache.stats()["coalesced"] < 23:
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*tasks) == [42] * 20
    for t in threads:
        t.join(30)
    assert results == [42] * 4 and calls == ["k"]


def test_concurrent_hits_and_writes_stay_consistent(twin):
    cache = HotKeyCache(maxsize=200, clock=ManualClock(), shards=4)
    stop = threading.Event()
    bad = []

    def writer(offset):
        i = 0
        while not stop.is_set() and i < 20_000:
            cache.set(offset + i % 500, offset + i % 500)
            if i % 7 == 0:
                cache.delete(offset + (i * 3) % 500)
            i += 1

    def reader():
        for i in range(20_000):
            v = cache.get(i % 500)
            if v is not None and v != i % 500:
                bad.append(v)

    threads = [threading.Thread(target=writer, args=(0,)), threading.Thread(target=reader),
               threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    assert not bad and len(cache) <= 200
