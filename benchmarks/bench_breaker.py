"""Circuit breakers, bulkheads and guarded async calls, side by side with the peers.

Same no-op handler everywhere; each round makes 1000 calls. Peers that are not installed
are reported as skipped (``make bench`` installs them with the ``bench`` extra).
"""
from __future__ import annotations

import asyncio

import pytest

import gameguard as gg
from gameguard import _impl

from conftest import LOOP


def handler(x: int) -> int:
    return x


async def ahandler(x: int) -> int:
    return x


def _twin(kind: str):
    if kind == "fast" and not _impl.FAST_AVAILABLE:
        pytest.skip("compiled kernels not built")
    return _impl.use(kind)


# -- sync: decorated call, breaker closed -----------------------------------------------------
@pytest.mark.benchmark(group="breaker-sync")
def test_bare_call(benchmark, loop_calls):
    benchmark(loop_calls(handler))


@pytest.mark.benchmark(group="breaker-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_gameguard_breaker(benchmark, loop_calls, kind):
    with _twin(kind):
        f = gg.CircuitBreaker("bench")(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="breaker-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_gameguard_breaker_slow_call_tracking(benchmark, loop_calls, kind):
    with _twin(kind):
        f = gg.CircuitBreaker("bench", slow_call_duration=1.0)(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="breaker-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_gameguard_throttle(benchmark, loop_calls, kind):
    with _twin(kind):
        f = gg.AdaptiveThrottle("bench")(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="breaker-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_gameguard_pipeline_breaker_bulkhead(benchmark, loop_calls, kind):
    with _twin(kind):
        f = gg.pipeline(gg.CircuitBreaker("b"), gg.Bulkhead(64))(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="breaker-sync")
def test_gameguard_bulkhead_floor(benchmark, loop_calls):
    """A near-empty kernel (a counter up and down): the compiled wrapper's own floor."""
    with _twin("fast"):
        f = gg.Bulkhead(64)(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="breaker-sync")
def test_pybreaker(benchmark, loop_calls):
    pybreaker = pytest.importorskip("pybreaker")
    f = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="breaker-sync")
def test_circuitbreaker(benchmark, loop_calls):
    circuitbreaker = pytest.importorskip("circuitbreaker")
    f = circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30)(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="breaker-sync")
def test_purgatory_sync(benchmark, loop_calls):
    purgatory = pytest.importorskip("purgatory")
    factory = purgatory.SyncCircuitBreakerFactory(default_threshold=5)
    f = factory("bench")(handler)
    benchmark(loop_calls(f))


# -- with: a block around the same call ---------------------------------------------------------
def _with_loop(g):
    def run() -> None:
        for _ in range(LOOP):
            with g:
                handler(1)
    return run


@pytest.mark.benchmark(group="with-sync")
def test_bare_call_for_with(benchmark, loop_calls):
    benchmark(loop_calls(handler))


@pytest.mark.benchmark(group="with-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_with_breaker(benchmark, kind):
    with _twin(kind):
        b = gg.CircuitBreaker("bench")
    benchmark(_with_loop(b))


@pytest.mark.benchmark(group="with-sync")
def test_with_bulkhead(benchmark):
    with _twin("fast"):
        b = gg.Bulkhead(64)
    benchmark(_with_loop(b))


@pytest.mark.benchmark(group="with-sync")
def test_with_pipeline_breaker_bulkhead(benchmark):
    with _twin("fast"):
        p = gg.pipeline(gg.CircuitBreaker("b"), gg.Bulkhead(64))
    benchmark(_with_loop(p))


@pytest.mark.benchmark(group="with-sync")
def test_with_threading_lock(benchmark):
    """For scale: the cheapest context manager CPython has (a C lock)."""
    import threading
    benchmark(_with_loop(threading.Lock()))


# -- sync: rejection path (breaker open) ------------------------------------------------------
def _reject_loop(f):
    def run() -> None:
        for _ in range(LOOP):
            try:
                f(1)
            except Exception:
                pass
    return run


@pytest.mark.benchmark(group="breaker-open-reject")
def test_bare_raise(benchmark):
    def raising(x: int) -> int:
        raise RuntimeError
    benchmark(_reject_loop(raising))


@pytest.mark.benchmark(group="breaker-open-reject")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_gameguard_open_reject(benchmark, kind):
    with _twin(kind):
        b = gg.CircuitBreaker("bench", open_duration=3600)
        f = b(handler)
    b.force_open()
    benchmark(_reject_loop(f))


@pytest.mark.benchmark(group="breaker-open-reject")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_gameguard_open_fallback(benchmark, loop_calls, kind):
    with _twin(kind):
        b = gg.CircuitBreaker("bench", open_duration=3600, fallback=lambda x: -1)
        f = b(handler)
    b.force_open()
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="breaker-open-reject")
def test_pybreaker_open_reject(benchmark):
    pybreaker = pytest.importorskip("pybreaker")
    b = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600)
    f = b(handler)
    b.open()
    benchmark(_reject_loop(f))


@pytest.mark.benchmark(group="breaker-open-reject")
def test_circuitbreaker_open_reject(benchmark):
    circuitbreaker = pytest.importorskip("circuitbreaker")

    def failing(x: int) -> int:
        raise IOError

    cb = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    f = cb(failing)
    try:
        f(1)
    except IOError:
        pass
    benchmark(_reject_loop(f))


# -- async: guarded coroutine -----------------------------------------------------------------
def _aloop(f):
    loop = asyncio.new_event_loop()

    async def many() -> None:
        for _ in range(LOOP):
            await f(1)

    def run() -> None:
        loop.run_until_complete(many())
    return run, loop


def _bench_async(benchmark, f):
    run, loop = _aloop(f)
    try:
        benchmark(run)
    finally:
        loop.close()


@pytest.mark.benchmark(group="async")
def test_bare_awaited_coroutine(benchmark):
    _bench_async(benchmark, ahandler)


@pytest.mark.benchmark(group="async")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_gameguard_breaker_async(benchmark, kind):
    with _twin(kind):
        f = gg.CircuitBreaker("bench")(ahandler)
    _bench_async(benchmark, f)


@pytest.mark.benchmark(group="async")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_gameguard_bulkhead_async(benchmark, kind):
    with _twin(kind):
        f = gg.Bulkhead(64, max_wait=1.0)(ahandler)
    _bench_async(benchmark, f)


@pytest.mark.benchmark(group="async-with")
def test_bare_awaited_coroutine_for_async_with(benchmark):
    _bench_async_blocks(benchmark, None)


@pytest.mark.benchmark(group="async-with")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_async_with_breaker(benchmark, kind):
    with _twin(kind):
        b = gg.CircuitBreaker("bench")
    _bench_async_blocks(benchmark, b)


@pytest.mark.benchmark(group="async-with")
def test_async_with_bulkhead(benchmark):
    with _twin("fast"):
        b = gg.Bulkhead(64)
    _bench_async_blocks(benchmark, b)


def _bench_async_blocks(benchmark, g):
    """LOOP blocks ``async with g: await ahandler(1)`` in one coroutine (None: the bare
    awaits), so the figure is the block's cost over the awaited call it guards."""
    loop = asyncio.new_event_loop()

    async def bare() -> None:
        for _ in range(LOOP):
            await ahandler(1)

    async def blocks() -> None:
        for _ in range(LOOP):
            async with g:
                await ahandler(1)
    try:
        benchmark(lambda: loop.run_until_complete(bare() if g is None else blocks()))
    finally:
        loop.close()


@pytest.mark.benchmark(group="async")
def test_purgatory_async(benchmark):
    purgatory = pytest.importorskip("purgatory")
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5)
    f = factory("bench")(ahandler)
    _bench_async(benchmark, f)


@pytest.mark.benchmark(group="async")
def test_aiolimiter_async(benchmark):
    aiolimiter = pytest.importorskip("aiolimiter")
    limiter = aiolimiter.AsyncLimiter(1e12, 1)

    async def f(x: int) -> int:
        async with limiter:
            return x
    _bench_async(benchmark, f)


@pytest.mark.benchmark(group="async")
def test_hyx_breaker_async(benchmark):
    cb = pytest.importorskip("hyx.circuitbreaker")
    f = cb.consecutive_breaker(failure_threshold=5)(ahandler)
    _bench_async(benchmark, f)


@pytest.mark.benchmark(group="async")
def test_hyx_tokenbucket_async(benchmark):
    rl = pytest.importorskip("hyx.ratelimit")
    loop = asyncio.new_event_loop()

    async def make():  # hyx binds its bucket to the running loop at construction
        return rl.tokenbucket(max_executions=1e12, per_time_secs=1)(ahandler)
    f = loop.run_until_complete(make())

    async def many() -> None:
        for _ in range(LOOP):
            await f(1)
    try:
        benchmark(lambda: loop.run_until_complete(many()))
    finally:
        loop.close()
