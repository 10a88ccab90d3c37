"""Singleflight under real concurrency: threads and asyncio tasks missing one key at once.
Counts are asserted, never timings; waiting is on events, not sleeps."""
from __future__ import annotations

import asyncio
import threading

import pytest

from gameguard import ConfigurationError, ManualClock
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


# -- nobody hangs: every way a leader can end wakes every waiter ------------------------------
def bounded(fn, timeout: float = 20.0):
    """Run ``fn`` in a daemon thread and return its result; fail, never hang, if it does
    not finish (a regression must fail the test, not freeze the run)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hung: a caller is waiting for ever"
    if "error" in box:
        raise box["error"]
    return box["value"]


class Broken(Exception):
    pass


class FlakyRng:
    """A jitter source that raises on chosen calls: the store of a loaded value fails."""

    def __init__(self, fail_on: set) -> None:
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self) -> float:
        self.calls += 1
        if self.calls in self.fail_on:
            raise Broken(f"rng call {self.calls}")
        return 0.5


@pytest.mark.parametrize("ttl", [-1, 0, float("nan"), "10", True])
def test_bad_per_call_ttl_is_refused_before_loading(twin, ttl):
    cache = HotKeyCache(clock=ManualClock())
    calls = []

    def loader(key):
        calls.append(key)
        return "v"

    async def aloader(key):
        calls.append(key)
        return "v"

    with pytest.raises(ConfigurationError, match="ttl") as info:
        bounded(lambda: cache.get_or_load("k", loader, ttl=ttl))
    assert repr(ttl) in str(info.value)
    with pytest.raises(ConfigurationError, match="ttl"):
        bounded(lambda: asyncio.run(cache.get_or_load_async("k", aloader, ttl=ttl)))
    assert calls == []
    # the key is usable at once, sync and async
    assert bounded(lambda: cache.get_or_load("k", loader)) == "v"
    cache.delete("k")
    assert bounded(lambda: asyncio.run(cache.get_or_load_async("k", aloader))) == "v"


def test_ttl_message_allows_inf(twin):
    cache = HotKeyCache(clock=ManualClock())
    with pytest.raises(ConfigurationError) as info:
        cache.set("k", 1, ttl=-1)
    assert "finite" not in str(info.value) and "inf" in str(info.value)
    for kw in ({"ttl": 0}, {"negative_ttl": -2.0}):
        with pytest.raises(ConfigurationError) as info:
            HotKeyCache(**kw)
        assert "finite" not in str(info.value) and next(iter(kw)) in str(info.value)
    assert HotKeyCache(negative_ttl=float("inf")).negative_ttl == float("inf")
    cache.set("k", 1, ttl=float("inf"))
    assert cache.get_or_load("j", lambda k: 2, ttl=float("inf")) == 2
    assert cache.expires_at("j") == float("inf")


def test_store_failure_wakes_every_waiter_and_leaves_the_key_usable(twin):
    rng = FlakyRng(fail_on={1})
    cache = HotKeyCache(clock=ManualClock(), ttl_jitter=0.1, rng=rng)
    release = threading.Event()

    def loader(key):
        release.wait(30)
        return "v"

    async def aloader(key):
        return "async"

    outcomes = []

    def reader():
        try:
            outcomes.append(cache.get_or_load("k", loader))
        except Broken as exc:
            outcomes.append(exc)

    def async_readers():
        async def main():
            return await asyncio.gather(
                *(cache.get_or_load_async("k", aloader) for _ in range(3)),
                return_exceptions=True)
        outcomes.extend(asyncio.run(main()))

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    threads.append(threading.Thread(target=async_readers, daemon=True))
    threads[0].start()
    wait_until(lambda: cache.stats()["loads"] == 1, "the leader's load")
    for t in threads[1:]:
        t.start()
    wait_until(lambda: cache.stats()["coalesced"] == 6, "6 coalesced waiters")
    release.set()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "a waiter hangs"
    assert len(outcomes) == 7 and all(isinstance(o, Broken) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 1  # the one store error, shared
    assert bounded(lambda: cache.get_or_load("k", lambda k: "ok")) == "ok"


def test_broken_clock_at_store_time_wakes_waiters(twin):
    state = {"now": 0.0, "fail": False}

    def clock():
        if state["fail"]:
            state["fail"] = False
            raise Broken("clock")
        return state["now"]

    cache = HotKeyCache(clock=clock, ttl_jitter=0.0)
    release = threading.Event()
    entered = threading.Event()

    def loader(key):
        entered.set()
        release.wait(30)
        state["fail"] = True  # the read right after the loader, the store's, fails
        return "v"

    errors = []

    def reader():
        try:
            cache.get_or_load("k", loader)
        except Broken as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(3)]
    threads[0].start()
    entered.wait(30)
    for t in threads[1:]:
        t.start()
    wait_until(lambda: cache.stats()["coalesced"] == 2, "2 coalesced waiters")
    release.set()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads) and len(errors) == 3
    assert bounded(lambda: cache.get_or_load("k", lambda k: "ok")) == "ok"


def test_keyboard_interrupt_in_thread_leader_hands_over_to_tasks(twin):
    cache = HotKeyCache(clock=ManualClock())
    release = threading.Event()
    entered = threading.Event()

    def loader(key):
        entered.set()
        release.wait(30)
        raise KeyboardInterrupt

    calls = []

    async def aloader(key):
        calls.append(key)
        return "from a task"

    def leader():
        with pytest.raises(KeyboardInterrupt):
            cache.get_or_load("k", loader)

    async def main():
        tasks = [asyncio.ensure_future(cache.get_or_load_async("k", aloader)) for _ in range(5)]
        while cache.stats()["coalesced"] < 5:
            await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(*tasks)

    t = threading.Thread(target=leader, daemon=True)
    t.start()
    entered.wait(30)
    assert bounded(lambda: asyncio.run(main())) == ["from a task"] * 5
    t.join(20)
    assert calls == ["k"]  # one task took the load over, the others shared it


def test_cancelled_async_leader_hands_over_to_threads(twin):
    cache = HotKeyCache(clock=ManualClock())
    results = []

    def reader():
        results.append(cache.get_or_load("k", lambda k: "from a thread"))

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(3)]

    async def main():
        started = asyncio.Event()

        async def aloader(key):
            started.set()
            await asyncio.Event().wait()  # never answers

        leader = asyncio.ensure_future(cache.get_or_load_async("k", aloader))
        await started.wait()
        for t in threads:
            t.start()
        while cache.stats()["coalesced"] < 3:
            await asyncio.sleep(0)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader

    bounded(lambda: asyncio.run(main()))
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert results == ["from a thread"] * 3 and cache.stats()["loads"] == 2


def test_sync_get_or_load_on_the_loop_thread_does_not_wait_for_a_task(twin):
    """A task of this loop leads the load: waiting would block the loop that task needs,
    so the sync call loads by itself (a duplicate load, counted)."""
    cache = HotKeyCache(clock=ManualClock())

    async def main():
        started, release = asyncio.Event(), asyncio.Event()

        async def aloader(key):
            started.set()
            await release.wait()
            return "async"

        leader = asyncio.ensure_future(cache.get_or_load_async("k", aloader))
        await started.wait()
        got = cache.get_or_load("k", lambda k: "sync")  # same thread as the loop
        assert cache.get("k") == "sync"
        release.set()
        return got, await leader

    assert bounded(lambda: asyncio.run(main())) == ("sync", "async")
    st = cache.stats()
    assert st["duplicate_loads"] == 1 and st["loads"] == 2 and st["coalesced"] == 0
    assert cache.get("k") == "async"  # the leader finished later and stored its value


def start_held_leader(cache, value):
    """A thread leading the load of "k", held inside its loader until ``release.set()``."""
    release, entered = threading.Event(), threading.Event()

    def loader(key):
        entered.set()
        release.wait(30)
        return value

    leader = threading.Thread(target=lambda: cache.get_or_load("k", loader), daemon=True)
    leader.start()
    entered.wait(30)
    return release, leader


def test_sync_wait_on_a_loop_thread_warns(twin):
    cache = HotKeyCache(clock=ManualClock())
    release, leader = start_held_leader(cache, "thread")

    async def main():
        def free_the_leader():  # once this loop's thread waits (or after the bound)
            wait_until(lambda: cache.stats()["coalesced"] == 1, "the loop thread's wait")
            release.set()
        threading.Thread(target=free_the_leader, daemon=True).start()
        with pytest.warns(RuntimeWarning, match="get_or_load_async"):
            return cache.get_or_load("k", lambda k: "unused")

    assert bounded(lambda: asyncio.run(main())) == "thread"
    leader.join(20)


def test_a_loader_that_loads_its_own_key_fails_instead_of_waiting(twin):
    cache = HotKeyCache(clock=ManualClock())

    def loader(key):
        return cache.get_or_load(key, loader)

    with pytest.raises(RuntimeError, match="recursive"):
        bounded(lambda: cache.get_or_load("k", loader))

    async def aloader(key):
        return await cache.get_or_load_async(key, aloader)

    with pytest.raises(RuntimeError, match="recursive"):
        bounded(lambda: asyncio.run(cache.get_or_load_async("k", aloader)))
    assert bounded(lambda: cache.get_or_load("k", lambda k: "ok")) == "ok"


def test_set_and_delete_free_later_callers_from_a_stuck_load(twin):
    cache = HotKeyCache(clock=ManualClock())
    release, leader = start_held_leader(cache, "stale")
    cache.delete("k")
    assert bounded(lambda: cache.get_or_load("k", lambda k: "fresh")) == "fresh"
    cache.delete("k")
    cache.set("k", "set")
    assert bounded(lambda: cache.get_or_load("k", lambda k: "x")) == "set"
    release.set()
    leader.join(20)
    assert cache.get("k") == "set"  # the detached load stored nothing


def test_refresh_task_cancelled_before_it_ran_leaves_no_flight(twin):
    clock = ManualClock()
    cache = HotKeyCache(clock=clock, ttl=10.0, ttl_jitter=0.0)

    async def aloader(key):
        return clock()

    async def main():
        await cache.get_or_load_async("k", aloader)
        while cache.stats()["refreshes"] == 0:  # read hot until a refresh task starts
            clock.advance(0.001)
            await cache.get_or_load_async("k", aloader)
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()  # before its first step: the loader never runs
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    bounded(lambda: asyncio.run(main()))
    clock.advance(10.0)  # expired: the next read must load, not wait for the dead refresh
    assert bounded(lambda: cache.get_or_load("k", lambda k: "loaded")) == "loaded"
