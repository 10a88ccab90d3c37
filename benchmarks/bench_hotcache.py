"""HotKeyCache side by side with functools.lru_cache, cachetools and cashews.

Groups (each with a ``bare`` baseline, so the summary reads as ratios):
* ``hotcache-get-hit``: ``cache.get(key)`` of a present, fresh key;
* ``hotcache-decorated-hit``: a memoised function called with a cached argument;
* ``hotcache-miss-load``: every call a new key: miss, load, store, evict at capacity;
* ``hotcache-get-hit-2threads``: the get hit from two threads at once (LOOP calls in all);
* ``hotcache-async-hit``: a memoised ``async def`` awaited with a cached argument.
Peers that are not installed are skipped and show up as such in pytest's summary.

    .venv/bin/python -m pytest benchmarks/bench_hotcache.py --benchmark-only -p no:randomly \
        --benchmark-group-by=group --benchmark-columns=median,ops -q
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import threading

import pytest

from gameguard import _impl
from gameguard.hotcache import HotKeyCache

from conftest import LOOP

KEY = "auction:4711"


def handler(x):
    return x


async def ahandler(x):
    return x


def _twin(kind: str):
    if kind == "fast" and not _impl.FAST_AVAILABLE:
        pytest.skip("compiled kernels not built")
    return _impl.use(kind)


def _cache(kind: str, **kw) -> HotKeyCache:
    with _twin(kind):
        kw.setdefault("ttl", 3600.0)
        return HotKeyCache(**kw)


def loop_key(f, key=KEY):
    def run() -> None:
        for _ in range(LOOP):
            f(key)
    return run


# -- get hit ----------------------------------------------------------------------------------
@pytest.mark.benchmark(group="hotcache-get-hit")
def test_get_bare_call(benchmark):
    benchmark(loop_key(handler))


@pytest.mark.benchmark(group="hotcache-get-hit")
def test_get_dict_get(benchmark):
    d = {KEY: 1}
    benchmark(loop_key(d.get))


@pytest.mark.benchmark(group="hotcache-get-hit")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_get_gameguard(benchmark, kind):
    cache = _cache(kind)
    cache.set(KEY, 1)
    assert cache.get(KEY) == 1
    benchmark(loop_key(cache.get))


@pytest.mark.benchmark(group="hotcache-get-hit")
def test_get_cachetools_ttlcache(benchmark):
    cachetools = pytest.importorskip("cachetools")
    cache = cachetools.TTLCache(maxsize=100_000, ttl=3600)
    cache[KEY] = 1
    benchmark(loop_key(cache.get))


@pytest.mark.benchmark(group="hotcache-get-hit")
def test_get_cachetools_lrucache(benchmark):
    cachetools = pytest.importorskip("cachetools")
    cache = cachetools.LRUCache(maxsize=100_000)
    cache[KEY] = 1
    benchmark(loop_key(cache.get))


# -- decorated hit ----------------------------------------------------------------------------
@pytest.mark.benchmark(group="hotcache-decorated-hit")
def test_decorated_bare_call(benchmark):
    benchmark(loop_key(handler))


@pytest.mark.benchmark(group="hotcache-decorated-hit")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_decorated_gameguard(benchmark, kind):
    f = _cache(kind).cached(handler)
    f(KEY)
    benchmark(loop_key(f))


@pytest.mark.benchmark(group="hotcache-decorated-hit")
def test_decorated_functools_lru_cache(benchmark):
    f = functools.lru_cache(maxsize=100_000)(handler)
    f(KEY)
    benchmark(loop_key(f))


@pytest.mark.benchmark(group="hotcache-decorated-hit")
def test_decorated_cachetools_ttl(benchmark):
    cachetools = pytest.importorskip("cachetools")
    f = cachetools.cached(cachetools.TTLCache(maxsize=100_000, ttl=3600))(handler)
    f(KEY)
    benchmark(loop_key(f))


# -- miss + load ------------------------------------------------------------------------------
def loop_new_keys(f):
    counter = itertools.count()

    def run() -> None:
        for _ in range(LOOP):
            f(next(counter))
    return run


@pytest.mark.benchmark(group="hotcache-miss-load")
def test_miss_bare_call(benchmark):
    benchmark(loop_new_keys(handler))


@pytest.mark.benchmark(group="hotcache-miss-load")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_miss_gameguard_get_or_load(benchmark, kind):
    cache = _cache(kind, maxsize=10_000)
    get_or_load = cache.get_or_load
    benchmark(loop_new_keys(lambda k: get_or_load(k, handler)))


@pytest.mark.benchmark(group="hotcache-miss-load")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_miss_gameguard_decorated(benchmark, kind):
    f = _cache(kind, maxsize=10_000).cached(handler)
    benchmark(loop_new_keys(f))


@pytest.mark.benchmark(group="hotcache-miss-load")
def test_miss_functools_lru_cache(benchmark):
    benchmark(loop_new_keys(functools.lru_cache(maxsize=10_000)(handler)))


@pytest.mark.benchmark(group="hotcache-miss-load")
def test_miss_cachetools_ttl(benchmark):
    cachetools = pytest.importorskip("cachetools")
    f = cachetools.cached(cachetools.TTLCache(maxsize=10_000, ttl=3600))(handler)
    benchmark(loop_new_keys(f))


# -- get hit from two threads -----------------------------------------------------------------
class TwoThreads:
    """Two persistent workers; each round both make LOOP/2 calls ``f(KEY)`` at once."""

    def __init__(self, f) -> None:
        self.f = f
        self.go = threading.Barrier(3)
        self.done = threading.Barrier(3)
        self.stop = False
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(2)]
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        f, n = self.f, LOOP // 2
        while True:
            self.go.wait()
            if self.stop:
                return
            for _ in range(n):
                f(KEY)
            self.done.wait()

    def __call__(self) -> None:
        self.go.wait()
        self.done.wait()

    def close(self) -> None:
        self.stop = True
        self.go.wait()
        for t in self.threads:
            t.join()


def _two(benchmark, f) -> None:
    runner = TwoThreads(f)
    try:
        benchmark(runner)
    finally:
        runner.close()


@pytest.mark.benchmark(group="hotcache-get-hit-2threads")
def test_threads_bare_call(benchmark):
    _two(benchmark, handler)


@pytest.mark.benchmark(group="hotcache-get-hit-2threads")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_threads_gameguard_get(benchmark, kind):
    cache = _cache(kind)
    cache.set(KEY, 1)
    _two(benchmark, cache.get)


@pytest.mark.benchmark(group="hotcache-get-hit-2threads")
def test_threads_cachetools_ttl_locked(benchmark):
    cachetools = pytest.importorskip("cachetools")
    f = cachetools.cached(cachetools.TTLCache(maxsize=100_000, ttl=3600),
                          lock=threading.Lock())(handler)
    f(KEY)
    _two(benchmark, f)


@pytest.mark.benchmark(group="hotcache-get-hit-2threads")
def test_threads_functools_lru_cache(benchmark):
    f = functools.lru_cache(maxsize=100_000)(handler)
    f(KEY)
    _two(benchmark, f)


# -- async decorated hit ----------------------------------------------------------------------
def loop_async(f):
    loop = asyncio.new_event_loop()

    async def many() -> None:
        for _ in range(LOOP):
            await f(KEY)

    def run() -> None:
        loop.run_until_complete(many())
    run.loop = loop  # type: ignore[attr-defined]
    return run


def _bench_async(benchmark, f) -> None:
    run = loop_async(f)
    try:
        run()  # warm: the first call loads
        benchmark(run)
    finally:
        run.loop.close()


@pytest.mark.benchmark(group="hotcache-async-hit")
def test_async_bare_await(benchmark):
    _bench_async(benchmark, ahandler)


@pytest.mark.benchmark(group="hotcache-async-hit")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_async_gameguard_cached(benchmark, kind):
    _bench_async(benchmark, _cache(kind).cached(ahandler))


@pytest.mark.benchmark(group="hotcache-async-hit")
def test_async_cashews(benchmark):
    cashews = pytest.importorskip("cashews")
    cache = cashews.Cache()
    cache.setup("mem://?size=100000")
    f = cache(ttl="1h")(ahandler)
    _bench_async(benchmark, f)


# -- instruction counts (callgrind) -------------------------------------------------------------
def _instr_case(case: str):
    """A one-argument callable doing one call of ``case`` (for ``a...`` cases, one call
    whose result is awaited)."""
    kind = "pure" if case.endswith("_pure") else "fast"
    base = case[:-5] if case.endswith("_pure") else case
    if base == "bare":
        return handler
    if base == "abare":
        return ahandler
    if base == "acached":
        f = _cache(kind).cached(ahandler)
        asyncio.run(f(KEY))
        return f
    if base == "get":
        cache = _cache(kind)
        cache.set(KEY, 1)
        return cache.get
    if base == "cached":
        f = _cache(kind).cached(handler)
        f(KEY)
        return f
    if base == "miss":
        cache = _cache(kind, maxsize=10_000)
        counter = itertools.count()
        return lambda _k: cache.get_or_load(next(counter), handler)
    if base == "lru_cache":
        f = functools.lru_cache(maxsize=100_000)(handler)
        f(KEY)
        return f
    import cachetools
    if base == "ttlcache_get":
        c = cachetools.TTLCache(maxsize=100_000, ttl=3600)
        c[KEY] = 1
        return c.get
    if base == "cachetools_cached":
        f = cachetools.cached(cachetools.TTLCache(maxsize=100_000, ttl=3600))(handler)
        f(KEY)
        return f
    raise SystemExit(f"unknown case {case!r}")


INSTR_CASES = ["bare", "get", "get_pure", "cached", "lru_cache", "ttlcache_get",
               "cachetools_cached", "miss", "abare", "acached", "acached_pure"]


if __name__ == "__main__":
    # PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    #     .venv/bin/python benchmarks/bench_hotcache.py CASE N
    # for two N; (instructions(N2) - instructions(N1)) / (N2 - N1) is the per-call count.
    import sys
    case, n = sys.argv[1], int(sys.argv[2])
    f = _instr_case(case)
    if case.startswith("a"):  # abare, acached[_pure]: n awaited calls in one loop
        async def many() -> None:
            for _ in range(n):
                await f(KEY)
        asyncio.run(many())
    else:
        for _ in range(n):
            f(KEY)
