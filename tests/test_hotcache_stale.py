"""HotKeyCache ``stale_if_error``: an expired value served when (and only when) its load
fails, one load per key per ``STALE_RETRY`` against a dead dependency, counted as
``stale_served`` and exported as ``result="stale"``. Every test runs on both twins
(``twin``); time is a ManualClock; concurrency waits on events, bounded."""
from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import both_twins
from test_hotcache_stampede import wait_until
from gameguard import ConfigurationError, ManualClock, _impl
from gameguard.hotcache import ABSENT, STALE_RETRY, HotKeyCache


class Down(Exception):
    """The dependency is failing."""


def make(clock, **kw):
    kw.setdefault("ttl_jitter", 0.0)
    kw.setdefault("ttl", 10.0)
    kw.setdefault("stale_if_error", 30.0)
    return HotKeyCache(clock=clock, **kw)


class Loader:
    """A loader that returns ``value`` or, while ``down``, raises ``Down``; counts calls."""

    def __init__(self, value="v1") -> None:
        self.value = value
        self.down = False
        self.calls = 0

    def __call__(self, key):
        self.calls += 1
        if self.down:
            raise Down(f"cannot load {key!r}")
        return self.value


def reads(stats) -> int:
    return stats["hits"] + stats["misses"] + stats["stale_served"]


# -- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), "30", True, None])
def test_bad_stale_if_error_is_refused(twin, bad):
    with pytest.raises(ConfigurationError, match="stale_if_error") as info:
        HotKeyCache(stale_if_error=bad)
    assert repr(bad) in str(info.value) and isinstance(info.value, ValueError)


def test_default_is_todays_behaviour(twin):
    clock = ManualClock()
    cache = make(clock, stale_if_error=0.0)
    assert HotKeyCache().stale_if_error == 0.0
    load = Loader()
    assert cache.get_or_load("k", load) == "v1"
    clock.advance(10.0)
    load.down = True
    for _ in range(3):  # every read after expiry tries the load and gets its exception
        with pytest.raises(Down):
            cache.get_or_load("k", load)
    assert load.calls == 4 and cache.stats()["stale_served"] == 0


# -- the rule -------------------------------------------------------------------------------
def test_a_failed_load_serves_the_expired_value_then_retries_once_a_second(twin, caplog):
    clock = ManualClock()
    cache = make(clock)
    load = Loader()
    assert cache.get_or_load("item", load) == "v1"
    clock.advance(10.0)                       # expired: a read loads again
    load.down = True
    with caplog.at_level(logging.WARNING, logger="gameguard"):
        assert cache.get_or_load("item", load) == "v1"   # the load failed: stale value
    assert load.calls == 2 and "stale" in caplog.text and "cannot load" in caplog.text
    st = cache.stats()
    assert st["load_failures"] == 1 and st["stale_served"] == 0 and st["misses"] == 2
    for _ in range(7):                        # within STALE_RETRY: no load, stale value
        clock.advance(STALE_RETRY / 8)
        assert cache.get_or_load("item", load) == "v1"
    assert load.calls == 2 and cache.stats()["stale_served"] == 7
    clock.advance(STALE_RETRY / 8)            # the retry is due: one read loads
    assert cache.get_or_load("item", load) == "v1" and load.calls == 3
    assert cache.get_or_load("item", load) == "v1" and load.calls == 3
    load.down, load.value = False, "v2"
    clock.advance(STALE_RETRY)
    assert cache.get_or_load("item", load) == "v2" and load.calls == 4  # recovered
    assert cache.expires_at("item") == clock() + 10.0                  # fresh again
    st = cache.stats()
    assert st["stale_served"] == 8 and st["load_failures"] == 2
    assert reads(st) == 1 + 1 + 7 + 2 + 1 and st["hits"] == 0


def serving_stale(**kw):
    """(clock, cache, loader): "k" expired, its loader down, the first read answered stale."""
    clock = ManualClock()
    cache = make(clock, **kw)
    load = Loader()
    cache.get_or_load("k", load)
    clock.advance(10.0)
    load.down = True
    assert cache.get_or_load("k", load) == "v1"
    return clock, cache, load


def test_stale_only_within_the_window(twin):
    clock, cache, load = serving_stale(stale_if_error=2.5)   # 0 s past expiry
    clock.advance(2.0)
    assert cache.get_or_load("k", load) == "v1"   # a retry at 2 s: failed, kept 0.5 s more
    clock.advance(0.4999)
    assert cache.get_or_load("k", load) == "v1" and load.calls == 3
    clock.advance(0.0001)                          # 2.5 s past expiry: the window is over
    with pytest.raises(Down):
        cache.get_or_load("k", load)
    with pytest.raises(Down):                      # and the next read tries again
        cache.get_or_load("k", load)
    assert load.calls == 5


def test_get_and_contains_never_serve_stale(twin):
    clock, cache, load = serving_stale()
    assert cache.get("k") is None and cache.get("k", "dflt") == "dflt" and "k" not in cache
    assert cache.stats()["stale_served"] == 0


def test_set_and_delete_end_the_stale_value(twin):
    clock, cache, load = serving_stale()
    cache.set("k", "pushed")
    assert cache.get_or_load("k", load) == "pushed" and cache.get("k") == "pushed"
    clock.advance(10.0)
    assert cache.get_or_load("k", load) == "pushed"   # stale again after a failed load
    cache.delete("k")
    with pytest.raises(Down):
        cache.get_or_load("k", load)


def test_a_negative_entry_is_served_stale_too(twin):
    clock = ManualClock()
    cache = make(clock, negative_ttl=1.0)
    load = Loader(ABSENT)
    assert cache.get_or_load("ghost", load) is ABSENT
    clock.advance(1.0)
    load.down = True
    assert cache.get_or_load("ghost", load) is ABSENT     # the last answer: no such record
    assert cache.get_or_load("ghost", load) is ABSENT and load.calls == 2


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupts_never_serve_stale(twin, interrupt):
    clock = ManualClock()
    cache = make(clock)
    cache.get_or_load("k", Loader())
    clock.advance(10.0)

    def loader(key):
        raise interrupt()

    with pytest.raises(interrupt):
        cache.get_or_load("k", loader)
    assert cache.get_or_load("k", Loader("v2")) == "v2"   # nothing armed: the next read loads


@pytest.mark.asyncio
async def test_cancellation_never_serves_stale(twin):
    clock = ManualClock()
    cache = make(clock)
    cache.get_or_load("k", Loader())
    clock.advance(10.0)
    started, never = asyncio.Event(), asyncio.Event()

    async def stuck(key):
        started.set()
        await never.wait()

    leader = asyncio.ensure_future(cache.get_or_load_async("k", stuck))
    await asyncio.wait_for(started.wait(), 5)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert cache.stats()["stale_served"] == 0
    assert await cache.get_or_load_async("k", Loader("v2")) == "v2"


def test_every_exception_counts_as_a_failed_load(twin):
    clock = ManualClock()
    cache = make(clock)
    cache.get_or_load("k", Loader())
    clock.advance(10.0)
    for exc in (ValueError("bad row"), TimeoutError(), LookupError(), RuntimeError("x")):
        clock.advance(STALE_RETRY)

        def loader(key, exc=exc):
            raise exc

        assert cache.get_or_load("k", loader) == "v1"


def test_a_broken_clock_while_keeping_the_value_leaves_the_loaders_exception(twin):
    """The clock is read once more to keep the stale value; if it raises there, the caller
    gets the loader's exception (logged, not replaced)."""
    now = [0.0]
    fail = [False]

    def clock():
        if fail[0]:
            raise OSError("clock broke")
        return now[0]

    cache = HotKeyCache(clock=clock, ttl=10.0, ttl_jitter=0.0, stale_if_error=30.0)
    cache.get_or_load("k", Loader())
    now[0] = 10.0

    def loader(key):
        fail[0] = True
        raise Down("db")

    with pytest.raises(Down):
        cache.get_or_load("k", loader)
    fail[0] = False
    assert cache.get_or_load("k", Loader("v2")) == "v2"


# -- async and decorated forms -------------------------------------------------------------
@pytest.mark.asyncio
async def test_async_loaders_sync_and_coroutine(twin):
    clock = ManualClock()
    cache = make(clock)
    load = Loader()
    assert await cache.get_or_load_async("k", load) == "v1"
    clock.advance(10.0)
    load.down = True
    assert await cache.get_or_load_async("k", load) == "v1"       # a sync loader

    async def aload(key):
        raise Down("db")

    clock.advance(STALE_RETRY)
    assert await cache.get_or_load_async("k", aload) == "v1"      # a coroutine loader
    assert await cache.get_or_load_async("k", aload) == "v1"
    assert load.calls == 2 and cache.stats()["stale_served"] == 1


def test_sync_cached_function(twin):
    clock = ManualClock()
    cache = make(clock)
    state = {"down": False, "calls": 0}

    @cache.cached
    def price(item: int) -> int:
        state["calls"] += 1
        if state["down"]:
            raise Down("auction service")
        return 100 + item

    assert price(1) == 101
    clock.advance(10.0)
    state["down"] = True
    assert price(1) == 101 and price(1) == 101 and state["calls"] == 2
    clock.advance(STALE_RETRY)
    assert price(1) == 101 and state["calls"] == 3
    with pytest.raises(Down):
        price(2)                       # nothing cached for that key: the exception


@pytest.mark.asyncio
async def test_async_cached_function(twin):
    clock = ManualClock()
    cache = make(clock)
    state = {"down": False, "calls": 0}

    @cache.cached
    async def price(item: int) -> int:
        state["calls"] += 1
        if state["down"]:
            raise Down("auction service")
        return 100 + item

    assert await price(1) == 101
    clock.advance(10.0)
    state["down"] = True
    assert await price(1) == 101 and await price(1) == 101 and state["calls"] == 2
    assert cache.stats()["stale_served"] == 1


# -- refresh-ahead ------------------------------------------------------------------------
def test_a_failed_refresh_ahead_is_counted_and_keeps_the_value(twin):
    clock = ManualClock()
    cache = make(clock, stale_if_error=0.0)
    load = Loader()
    cache.get_or_load("hot", load)
    load.down = True
    while clock() < 8.5:       # hot: refreshed once past 8 s; the refresh fails
        clock.advance(0.001)
        assert cache.get_or_load("hot", load) == "v1"
    st = cache.stats()
    assert load.calls == 2 and st["refreshes"] == 1
    assert st["refresh_failures"] == 1 and st["load_failures"] == 1


@pytest.mark.asyncio
async def test_a_failed_async_refresh_then_expiry_serves_stale(twin):
    clock = ManualClock()
    cache = make(clock)
    load = Loader()
    await cache.get_or_load_async("hot", load)
    load.down = True
    for _ in range(12_000):    # 12 s of hot reads: refresh at 8 s and 9 s fail, expiry at 10
        clock.advance(0.001)
        assert await cache.get_or_load_async("hot", load) == "v1"
        await asyncio.sleep(0)  # lets the background refresh run
    st = cache.stats()
    assert st["refresh_failures"] >= 1 and st["stale_served"] >= 2_000 - 3
    # the refreshes until expiry, then one load per STALE_RETRY (at 10, 11 and 12 s)
    assert load.calls - 1 - st["refreshes"] <= 3


# -- memory ---------------------------------------------------------------------------------
def test_kept_entries_count_toward_maxsize_and_go_first(twin):
    clock = ManualClock()
    cache = make(clock, maxsize=4, shards=1, ttl=100.0)
    for k in "abcd":
        cache.set(k, k)
    assert len(cache) == 4
    clock.advance(100.0)                      # all four expired
    load = Loader()
    load.down = True
    for k in "abcd":
        assert cache.get_or_load(k, load) == k
    assert len(cache) == 4                    # kept, still counted
    cache.set("e", "e", ttl=1000.0)           # room for a fresh key: an expired one goes
    st = cache.stats()
    assert len(cache) == 4 and st["expirations"] == 1 and st["evictions"] == 0


def test_expire_keeps_the_stale_window(twin):
    clock = ManualClock()
    cache = make(clock, stale_if_error=5.0)
    cache.set("a", 1, ttl=1.0)
    cache.set("b", 2, ttl=10.0)
    clock.advance(3.0)
    assert cache.expire() == 0 and len(cache) == 2   # a: 2 s past expiry, within 5 s
    clock.advance(3.0)
    assert cache.expire() == 1 and len(cache) == 1   # a: 5 s past: dropped
    assert make(clock, stale_if_error=0.0).expire() == 0


# -- metrics --------------------------------------------------------------------------------
def test_prometheus_exports_result_stale(twin):
    from prometheus_client import CollectorRegistry

    from gameguard.metrics.prometheus import PrometheusCollector

    clock = ManualClock()
    cache = make(clock, name="stale-items")
    load = Loader()
    cache.get_or_load("k", load)
    cache.get_or_load("k", load)
    clock.advance(10.0)
    load.down = True
    for _ in range(4):
        cache.get_or_load("k", load)
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(lambda: [cache]))

    def value(result):
        return registry.get_sample_value(
            "gameguard_cache_requests_total", {"cache": "stale-items", "result": result})

    assert (value("hit"), value("miss"), value("stale")) == (1.0, 2.0, 3.0)
    assert cache.stats()["stale_served"] == 3


# -- stampedes ------------------------------------------------------------------------------
def expired(key: str) -> HotKeyCache:
    """A cache whose entry for ``key`` ("bid") has just expired."""
    clock = ManualClock()
    cache = make(clock)
    cache.get_or_load(key, Loader("bid"))
    clock.advance(10.0)
    return cache


class BlockedFailure:
    """A sync loader that records its calls, blocks until ``release``, then raises."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list = []

    def __call__(self, key):
        self.calls.append(key)
        self.release.wait(30)
        raise Down("payment service")


def test_threads_share_one_failing_load_and_all_get_the_stale_value(twin):
    cache = expired("auction:1")
    failing = BlockedFailure()
    results = []
    start = threading.Barrier(32)

    def reader():
        start.wait(30)
        results.append(cache.get_or_load("auction:1", failing))

    threads = [threading.Thread(target=reader) for _ in range(32)]
    for t in threads:
        t.start()
    wait_until(lambda: cache.stats()["coalesced"] == 31, "31 waiters")
    failing.release.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert failing.calls == ["auction:1"] and results == ["bid"] * 32
    assert cache.stats()["load_failures"] == 1


@pytest.mark.asyncio
async def test_tasks_share_one_failing_load_and_all_get_the_stale_value(twin):
    cache = expired("auction:1")
    release = asyncio.Event()
    calls = []

    async def failing(key):
        calls.append(key)
        await release.wait()
        raise Down("payment service")

    tasks = [asyncio.ensure_future(cache.get_or_load_async("auction:1", failing))
             for _ in range(500)]
    for _ in range(10_000):
        if cache.stats()["coalesced"] == 499:
            break
        await asyncio.sleep(0)
    assert cache.stats()["coalesced"] == 499
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert calls == ["auction:1"] and results == ["bid"] * 500


def test_threads_and_tasks_share_one_failing_load(twin):
    cache = expired("k")
    failing = BlockedFailure()
    leader_out = []
    leader = threading.Thread(target=lambda: leader_out.append(cache.get_or_load("k", failing)))
    leader.start()
    wait_until(lambda: failing.calls, "the leader's load")

    async def waiters():
        return await asyncio.gather(*[cache.get_or_load_async("k", failing) for _ in range(50)])

    box = {}
    runner = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(waiters())))
    runner.start()
    wait_until(lambda: cache.stats()["coalesced"] == 50, "50 task waiters")
    failing.release.set()
    leader.join(30)
    runner.join(30)
    assert failing.calls == ["k"] and leader_out == ["bid"] and box["r"] == ["bid"] * 50


# -- twins ----------------------------------------------------------------------------------
_ops = st.lists(st.tuples(
    st.sampled_from(["load", "fail", "aload", "afail", "get", "set", "delete", "expire"]),
    st.integers(0, 5), st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0, 7.0])), max_size=120)


def _drive(impl: str, ops, window: float) -> list:
    clock = ManualClock()
    with _impl.use(impl):
        cache = HotKeyCache(maxsize=4, shards=1, ttl=2.0, ttl_jitter=0.0, negative_ttl=1.0,
                            clock=clock, seed=7, stale_if_error=window)
    out: list = []

    def fail(key):
        raise Down(key)

    async def afail(key):
        raise Down(key)

    async def aload(key):
        return ("a", key)

    for op, key, dt in ops:
        clock.advance(dt)
        try:
            if op == "load":
                out.append(cache.get_or_load(key, lambda k: ABSENT if k == 0 else ("s", k)))
            elif op == "fail":
                out.append(cache.get_or_load(key, fail))
            elif op == "aload":
                out.append(asyncio.run(cache.get_or_load_async(key, aload)))
            elif op == "afail":
                out.append(asyncio.run(cache.get_or_load_async(key, afail)))
            elif op == "get":
                out.append(cache.get(key, "dflt"))
            elif op == "set":
                cache.set(key, ("set", key))
            elif op == "delete":
                out.append(cache.delete(key))
            else:
                out.append(cache.expire())
        except Down as exc:
            out.append(("Down", str(exc)))
    st_ = cache.stats()
    st_.pop("name")
    st_.pop("hot_keys")
    out.append(st_)
    out.append(cache._core.state())
    return out


@settings(max_examples=60, deadline=None)
@given(ops=_ops, window=st.sampled_from([0.0, 0.5, 2.0, 30.0]))
def test_twins_decide_alike_with_stale_entries(ops, window):
    both_twins("cachetable")
    assert _drive("fast", ops, window) == _drive("pure", ops, window)


def test_a_duplicate_load_on_the_loop_thread_serves_stale_too(twin):
    """A sync read on the loop's thread cannot wait for the task leading the load: its own
    load (a duplicate) fails and it gets the stale value; so does the task after it."""
    cache = expired("k")

    async def main():
        started, release = asyncio.Event(), asyncio.Event()

        async def aloader(key):
            started.set()
            await release.wait()
            raise Down("db")

        leader = asyncio.ensure_future(cache.get_or_load_async("k", aloader))
        await asyncio.wait_for(started.wait(), 5)
        got = cache.get_or_load("k", _down)  # same thread as the loop
        release.set()
        return got, await asyncio.wait_for(leader, 5)

    assert asyncio.run(main()) == ("bid", "bid")
    st = cache.stats()
    assert st["duplicate_loads"] == 1 and st["load_failures"] == 2


def _down(key):
    raise Down(key)
