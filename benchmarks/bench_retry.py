"""Retry on a call that succeeds first time (the common case), side by side with tenacity,
backoff and stamina; and the async form against a bare awaited coroutine.

Same no-op handler everywhere; each round makes 1000 calls. ``test_interleaved`` runs bare
and the compiled ``Retry`` forms in turn, ``REPS`` times (one group per turn); the ratios'
medians and range across turns:

    .venv/bin/python -m pytest benchmarks/bench_retry.py -p no:cacheprovider -k interleaved \
        --benchmark-min-rounds=30 --benchmark-json=/tmp/retry.json
    .venv/bin/python benchmarks/bench_adaptive.py /tmp/retry.json bare

 Peers that are not installed
are reported as skipped (``make bench`` installs them with the ``bench`` extra). Run:

    .venv/bin/python -m pytest benchmarks/bench_retry.py -p no:cacheprovider \
        --benchmark-min-rounds=20 --benchmark-columns=median
"""
from __future__ import annotations

import asyncio

import pytest

import gameguard as gg
from gameguard.retry import Retry, RetryBudget

from bench_breaker import _bench_async, _twin, ahandler, handler


# -- sync: first attempt succeeds ---------------------------------------------------------
REPS = 6
INTERLEAVED = {
    "bare": lambda: handler,
    "retry": lambda: Retry(3)(handler),
    "retry_budget": lambda: Retry(3, budget=RetryBudget())(handler),
    "breaker": lambda: gg.CircuitBreaker("b")(handler),
    "retry_breaker": lambda: gg.pipeline(Retry(3), gg.CircuitBreaker("b"))(handler),
}


@pytest.mark.parametrize("case,rep", [(c, r) for r in range(REPS) for c in INTERLEAVED])
def test_interleaved(benchmark, loop_calls, case, rep):
    benchmark.group = f"retry-interleaved-{rep}"
    with _twin("fast"):
        f = INTERLEAVED[case]()
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="retry-sync")
def test_bare_call(benchmark, loop_calls):
    benchmark(loop_calls(handler))


@pytest.mark.benchmark(group="retry-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_gameguard_retry(benchmark, loop_calls, kind):
    with _twin(kind):
        f = Retry(3)(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="retry-sync")
@pytest.mark.parametrize("kind", ["fast", "pure"])
def test_gameguard_retry_with_budget(benchmark, loop_calls, kind):
    with _twin(kind):
        f = Retry(3, budget=RetryBudget())(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="retry-sync")
def test_gameguard_retry_breaker_pipeline(benchmark, loop_calls):
    with _twin("fast"):
        f = gg.pipeline(Retry(3), gg.CircuitBreaker("b"))(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="retry-sync")
def test_tenacity(benchmark, loop_calls):
    tenacity = pytest.importorskip("tenacity")
    f = tenacity.retry(stop=tenacity.stop_after_attempt(3),
                       wait=tenacity.wait_random_exponential(multiplier=0.1, max=2.0))(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="retry-sync")
def test_backoff(benchmark, loop_calls):
    backoff = pytest.importorskip("backoff")
    f = backoff.on_exception(backoff.expo, Exception, max_tries=3, factor=0.1,
                             max_value=2.0)(handler)
    benchmark(loop_calls(f))


@pytest.mark.benchmark(group="retry-sync")
def test_stamina(benchmark, loop_calls):
    stamina = pytest.importorskip("stamina")
    f = stamina.retry(on=Exception, attempts=3, wait_initial=0.1, wait_max=2.0)(handler)
    benchmark(loop_calls(f))


# -- async: first attempt succeeds -------------------------------------------------------
@pytest.mark.benchmark(group="retry-async")
def test_bare_await(benchmark):
    _bench_async(benchmark, ahandler)


@pytest.mark.benchmark(group="retry-async")
def test_gameguard_retry_async(benchmark):
    _bench_async(benchmark, Retry(3)(ahandler))


@pytest.mark.benchmark(group="retry-async")
def test_tenacity_async(benchmark):
    tenacity = pytest.importorskip("tenacity")
    _bench_async(benchmark, tenacity.retry(stop=tenacity.stop_after_attempt(3))(ahandler))


@pytest.mark.benchmark(group="retry-async")
def test_backoff_async(benchmark):
    backoff = pytest.importorskip("backoff")
    _bench_async(benchmark, backoff.on_exception(backoff.expo, Exception, max_tries=3)(ahandler))


@pytest.mark.benchmark(group="retry-async")
def test_stamina_async(benchmark):
    stamina = pytest.importorskip("stamina")
    _bench_async(benchmark, stamina.retry(on=Exception, attempts=3)(ahandler))


# -- async deadlines and hedges: a handler that yields to the loop once (as real I/O does),
# so the loop runs between calls and drops the timers the calls cancelled
async def yielding(x: int) -> int:
    await asyncio.sleep(0)
    return x


@pytest.mark.benchmark(group="deadline-async")
def test_bare_await_yielding(benchmark):
    _bench_async(benchmark, yielding)


@pytest.mark.benchmark(group="deadline-async")
def test_gameguard_timeout_async(benchmark):
    from gameguard.timeout import Timeout
    _bench_async(benchmark, Timeout(10.0)(yielding))


@pytest.mark.benchmark(group="deadline-async")
def test_asyncio_wait_for(benchmark):
    """For scale: the standard library's deadline on the same call."""
    async def wait_for(x: int) -> int:
        return await asyncio.wait_for(yielding(x), 10.0)
    _bench_async(benchmark, wait_for)


@pytest.mark.benchmark(group="deadline-async")
def test_gameguard_hedge_async(benchmark):
    """The primary answers before the delay: the cost of racing it (one task per call)."""
    from gameguard.hedge import Hedge
    _bench_async(benchmark, Hedge(1.0)(yielding))
