"""Instruction counts per call, for decisions on a noisy shared machine.

Run each case under callgrind for two loop lengths; the difference divided by the extra
calls is the exact per-call instruction count (interpreter start-up cancels out):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/instructions.py CASE N

`python benchmarks/instructions.py --report [CASE ...]` does this for every case (or those
named) and prints a table: ``async_*`` cases as multiples of ``bare_await``, the rest of ``bare``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys


def handler(x: int) -> int:
    return x


def build(case: str):  # -> a zero-argument callable doing one call
    import gameguard as gg
    from gameguard import _impl

    twin = "pure" if case.endswith("_pure") else "fast"
    base = case[:-5] if case.endswith("_pure") else case
    with _impl.use(twin):
        if base == "bare":
            f = handler
        elif base == "breaker":
            f = gg.CircuitBreaker("b")(handler)
        elif base == "breaker_slowcalls":
            f = gg.CircuitBreaker("b", slow_call_duration=1.0)(handler)
        elif base == "throttle":
            f = gg.AdaptiveThrottle("t")(handler)
        elif base == "bulkhead":
            f = gg.Bulkhead(8)(handler)
        elif base == "pipeline":
            f = gg.pipeline(gg.CircuitBreaker("b"), gg.Bulkhead(8))(handler)
        elif base == "retry":
            f = gg.Retry(3)(handler)
        elif base == "retry_budget":
            f = gg.Retry(3, budget=gg.RetryBudget())(handler)
        elif base == "retry_breaker":
            f = gg.pipeline(gg.Retry(3), gg.CircuitBreaker("b"))(handler)
        elif base == "adaptive":
            f = gg.AdaptiveLimiter(initial=8)(handler)
        elif base == "adaptive_pooled":  # every call a sample in the window
            f = gg.AdaptiveLimiter(initial=8, min_rtt=0.0)(handler)
        elif base == "shedder":
            from gameguard.shedder import CpuSampler
            f = gg.LoadShedder(cpu=CpuSampler(lambda: (0.0, 1.0), interval=3600.0))(handler)
        elif base == "tenacity":
            import tenacity
            f = tenacity.retry(stop=tenacity.stop_after_attempt(3))(handler)
        elif base == "token_try_acquire":  # always admitted: f(1) takes one token
            f = gg.TokenBucket(1e12, 1e12).try_acquire
        elif base == "keyed_try_acquire":  # f(1): key 1
            f = gg.KeyedLimiter(1e12, 1e12).try_acquire
        elif base.startswith("cache_"):  # a hit on key 1 (a fresh entry, far from expiry)
            f = _cache_case(gg.HotKeyCache(
                ttl=3600.0, **({"stale_if_error": 3600.0} if "stale" in base else {})), base)
        elif base == "pybreaker":
            import pybreaker
            f = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)(handler)
        elif base == "circuitbreaker":
            import circuitbreaker
            f = circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30)(handler)
        elif base == "purgatory":
            import purgatory
            f = purgatory.SyncCircuitBreakerFactory(default_threshold=5)("b")(handler)
        else:
            raise SystemExit(f"unknown case {case!r}")
    return f


def _cache_case(cache, base: str):
    import functools

    cache.set(1, 1)
    if base == "cache_get":
        return cache.get
    if base == "cache_get_or_load":
        return functools.partial(cache.get_or_load, loader=handler)
    if base == "cache_cached":
        return cache.cached(handler)
    if base == "cache_cached_stale":  # key 1 expired, its load failed: served stale
        import time

        from gameguard import hotcache
        hotcache.STALE_RETRY = 3600.0   # no retry during the run
        cache.set(1, 1, ttl=1e-6)
        time.sleep(1e-3)

        def down(x: int) -> int:
            raise ConnectionError("down")
        stale = cache.cached(down)
        assert stale(1) == 1 and cache.stats()["stale_served"] == 0
        return stale
    raise SystemExit(f"unknown case {base!r}")


CASES = ["bare", "breaker", "breaker_slowcalls", "throttle", "bulkhead", "pipeline",
         "token_try_acquire", "keyed_try_acquire",
         "with_breaker", "with_bulkhead", "bare_await", "async_with_breaker",
         "async_with_bulkhead", "breaker_pure", "with_breaker_pure", "async_with_breaker_pure",
         "throttle_pure", "bulkhead_pure", "circuitbreaker", "pybreaker", "purgatory",
         "retry", "retry_budget", "retry_pure", "retry_breaker", "tenacity", "adaptive",
         "shedder", "async_retry", "async_retry_budget", "adaptive_pooled", "cache_get",
         "cache_get_or_load", "cache_cached", "async_cache_cached", "cache_cached_stale",
         "cache_get_pure", "cache_cached_pure"]


async def ahandler(x: int) -> int:
    return x


def run_blocks(case: str, n: int) -> None:
    """``with g: handler(1)`` / ``async with g: await ahandler(1)`` n times, the loop in the
    same frame as the block (a helper function per block would add a call to every count)."""
    import asyncio

    import gameguard as gg
    from gameguard import _impl

    twin = "pure" if case.endswith("_pure") else "fast"
    base = case[:-5] if case.endswith("_pure") else case
    with _impl.use(twin):
        g = gg.CircuitBreaker("b") if "breaker" in base else gg.Bulkhead(8)
        cache = gg.HotKeyCache(ttl=3600.0) if base == "async_cache_cached" else None
    if base.startswith("with_"):
        for _ in range(n):
            with g:
                handler(1)
        return

    async def blocks() -> None:
        if base == "bare_await":
            for _ in range(n):
                await ahandler(1)
        elif base == "async_cache_cached":  # a hit: the awaitable is already done
            f = cache.cached(ahandler)  # type: ignore[union-attr]
            await f(1)
            for _ in range(n):
                await f(1)
        else:
            for _ in range(n):
                async with g:
                    await ahandler(1)
    asyncio.run(blocks())


def run_async_retry(case: str, n: int) -> None:
    """``await f(1)`` n times, ``f`` an ``@Retry(3)`` coroutine function (``_budget``: with
    a RetryBudget); read against ``bare_await``."""
    import asyncio

    import gameguard as gg

    budget = gg.RetryBudget() if case.endswith("_budget") else None
    f = gg.Retry(3, budget=budget)(ahandler)

    async def calls() -> None:
        for _ in range(n):
            await f(1)
    asyncio.run(calls())


def run(case: str, n: int) -> None:
    if case.startswith("async_retry"):
        return run_async_retry(case, n)
    if case.startswith(("with_", "async_", "bare_await")):
        return run_blocks(case, n)
    f = build(case)
    for _ in range(n):
        f(1)


def measure(case: str, n1: int = 20_000, n2: int = 120_000) -> float:
    counts = []
    for n in (n1, n2):
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             __file__, case, str(n)],
            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True)
        m = re.search(r"Collected : (\d+)", out.stderr)
        assert m, out.stderr
        counts.append(int(m.group(1)))
    return (counts[1] - counts[0]) / (n2 - n1)


if __name__ == "__main__":
    if sys.argv[1] == "--report":  # --report [CASE ...]: async cases compare to bare_await
        bare: dict[str, float] = {}
        for case in sys.argv[2:] or CASES:
            try:
                per_call = measure(case)
            except subprocess.CalledProcessError:
                print(f"{case:24s} (not installed)")
                continue
            group = "bare_await" if case.startswith(("async_", "bare_await")) else "bare"
            ref = bare.get(group) or bare.setdefault(group, measure(group))
            print(f"{case:24s} {per_call:10.1f} instructions/call  {per_call / ref:5.2f}x {group}")
    else:
        run(sys.argv[1], int(sys.argv[2]))
