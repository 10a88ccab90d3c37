"""Rate limiters side by side with the peers: permit path, deny path, 10k and 1M keys, async.

Groups (each has a ``bare`` baseline, so the summary reads as ratios; LOOP calls a round):
* ``ratelimit-permit``: one non-waiting check that is admitted (huge rate and capacity);
* ``ratelimit-deny``: one check that is refused (empty bucket, tiny rate);
* ``ratelimit-keys-10k`` / ``ratelimit-keys-1M``: admitted checks cycling through 10**4 or
  10**6 distinct int keys (all present: the table is warmed first); the single bucket in
  the same loop is the reference for the "keyed ≤ 2× single bucket" target;
* ``ratelimit-async``: ``async with limiter:`` admitted, against a bare awaited coroutine.
Peers: limits (fixed, moving, sliding window counter; MemoryStorage), pyrate-limiter,
token-bucket, throttled-py (token and leaking bucket; MemoryStore), aiolimiter. A peer
that is not installed is skipped, and listed by pytest as skipped with its name.

    .venv/bin/python -m pytest benchmarks/bench_ratelimit.py --benchmark-only -p no:randomly \\
        --benchmark-group-by=group --benchmark-columns=median,ops -q

Instruction counts per call (exact, immune to the shared machine's noise): run a case for
two loop lengths under callgrind; the difference over the extra calls is the per-call count.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/bench_ratelimit.py CASE N
    .venv/bin/python benchmarks/bench_ratelimit.py --report     # every case, as a table
"""
from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import random
import re
import subprocess
import sys
from typing import Any, Callable, Dict, List

import pytest

try:
    from conftest import LOOP
except ImportError:  # run as a script
    LOOP = 1000

from gameguard import _impl
from gameguard.ratelimit import HybridLimiter, KeyedLimiter, LeakyBucket, TokenBucket

BIG = 1e15  # rate/capacity that never runs out during a benchmark


def bare(cost: Any = 1) -> bool:
    return True


def _twin(kind: str) -> Any:
    if kind == "fast" and not _impl.FAST_AVAILABLE:
        pytest.skip("compiled kernels not built")
    return _impl.use(kind)


def _peer(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.skip(f"peer {module} not installed")


def loop1(f: Callable[[Any], Any], arg: Any = 1) -> Callable[[], None]:
    def run() -> None:
        for _ in range(LOOP):
            f(arg)
    return run


# -- checks, built by name (shared by the pytest benchmarks and the callgrind script) ------
def gameguard_check(what: str, twin: str, permit: bool) -> Callable[[Any], Any]:
    rate, cap = (BIG, BIG) if permit else (1e-9, 1.0)
    with _impl.use(twin):
        if what == "token":
            b = TokenBucket(rate, cap)
            if not permit:
                b.try_acquire()
            return b.try_acquire  # type: ignore[no-any-return]
        if what == "leaky":
            m = LeakyBucket(rate, cap)
            if not permit:
                m.try_acquire()
            return m.try_acquire  # type: ignore[no-any-return]
        if what == "hybrid":
            h = HybridLimiter(rate, rate, BIG if permit else 1.0, frame=3600.0, dense_rate=BIG)
            if not permit:
                h.try_acquire("burst")
            burst = h.burst.try_acquire
            return burst  # type: ignore[no-any-return]
        if what == "hybridkind":  # called as f("burst"): HybridLimiter.try_acquire itself
            hk = HybridLimiter(rate, rate, BIG, frame=3600.0, dense_rate=BIG)
            return hk.try_acquire  # type: ignore[no-any-return]
        if what == "keyed":  # called as f(1): key 1, cost 1
            k = KeyedLimiter(rate, cap)
            if not permit:
                k.try_acquire(1)
            return k.try_acquire  # type: ignore[no-any-return]
    raise ValueError(what)


def peer_check(name: str, permit: bool) -> Callable[[Any], Any]:
    if name.startswith("limits_"):
        limits = _peer("limits")
        from limits import storage, strategies
        cls = {"limits_fixed": strategies.FixedWindowRateLimiter,
               "limits_moving": strategies.MovingWindowRateLimiter,
               "limits_sliding": strategies.SlidingWindowCounterRateLimiter}[name]
        lim = cls(storage.MemoryStorage())
        # moving windows store every hit: 10**6/s keeps memory sane and still admits
        item = limits.parse("1000000/second" if permit else "1/hour")
        if not permit:
            lim.hit(item, "k")
        return lambda _: lim.hit(item, "k")
    if name == "pyrate_limiter":
        p = _peer("pyrate_limiter")
        lim = p.Limiter(p.Rate(10 ** 6 if permit else 1, p.Duration.SECOND if permit
                               else p.Duration.HOUR))
        if not permit:
            lim.try_acquire("k", blocking=False)
        return lambda _: lim.try_acquire("k", blocking=False)
    if name == "token_bucket":
        tb = _peer("token_bucket")
        lim = tb.Limiter(BIG if permit else 1e-9, 10 ** 15 if permit else 1, tb.MemoryStorage())
        if not permit:
            lim.consume("k")
        return lambda _: lim.consume("k")
    if name.startswith("throttled_"):
        _peer("throttled")
        from throttled import RateLimiterType, Throttled, rate_limiter, store
        using = {"throttled_token": RateLimiterType.TOKEN_BUCKET,
                 "throttled_leaking": RateLimiterType.LEAKING_BUCKET}[name].value
        quota = (rate_limiter.per_sec(10 ** 9, burst=10 ** 9) if permit
                 else rate_limiter.per_day(1, burst=1))
        th = Throttled(using=using, quota=quota, store=store.MemoryStore())
        if not permit:
            th.limit("k")
        return lambda _: th.limit("k")
    raise ValueError(name)


PEERS = ["limits_fixed", "limits_moving", "limits_sliding", "pyrate_limiter", "token_bucket",
         "throttled_token", "throttled_leaking"]
OURS = ["token", "leaky", "hybrid", "keyed"]


# -- permit / deny ------------------------------------------------------------------------------
@pytest.mark.benchmark(group="ratelimit-permit")
def test_permit_bare_call(benchmark: Any) -> None:
    benchmark(loop1(bare))


@pytest.mark.benchmark(group="ratelimit-deny")
def test_deny_bare_call(benchmark: Any) -> None:
    benchmark(loop1(bare))


@pytest.mark.parametrize("permit", [True, False], ids=["permit", "deny"])
@pytest.mark.parametrize("twin", ["fast", "pure"])
@pytest.mark.parametrize("what", OURS)
def test_gameguard(benchmark: Any, what: str, twin: str, permit: bool) -> None:
    with _twin(twin):
        f = gameguard_check(what, twin, permit)
    assert f(1) is permit
    benchmark.group = "ratelimit-permit" if permit else "ratelimit-deny"
    benchmark(loop1(f))


@pytest.mark.parametrize("twin", ["fast", "pure"])
def test_gameguard_hybrid_try_acquire(benchmark: Any, twin: str) -> None:
    """``HybridLimiter.try_acquire("burst")`` itself (the kind named, as callers write it);
    the bare call takes the same argument."""
    with _twin(twin):
        f = gameguard_check("hybridkind", twin, True)
    assert f("burst") is True
    benchmark.group = "ratelimit-permit"
    benchmark(loop1(f, "burst"))


@pytest.mark.benchmark(group="ratelimit-permit")
def test_gameguard_kernel_without_clock_read(benchmark: Any) -> None:
    """The compiled token-bucket arithmetic given ``now``: what the call costs apart from
    reading CLOCK_MONOTONIC (for the docs' cost breakdown)."""
    if not _impl.FAST_AVAILABLE:
        pytest.skip("compiled kernels not built")
    from gameguard._fast.bucket import TokenBucketKernel
    acquire_at = TokenBucketKernel(BIG, BIG, BIG, 0.0).acquire_at

    def run() -> None:
        for _ in range(LOOP):
            acquire_at(1.0, 1.0)
    benchmark(run)


@pytest.mark.benchmark(group="ratelimit-permit")
def test_clock_read_alone(benchmark: Any) -> None:
    """``gameguard._fast.call.monotonic()``: a C call that only reads CLOCK_MONOTONIC."""
    if not _impl.FAST_AVAILABLE:
        pytest.skip("compiled kernels not built")
    from gameguard._fast.call import monotonic
    benchmark(loop0(monotonic))


def loop0(f: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(LOOP):
            f()
    return run


@pytest.mark.parametrize("permit", [True, False], ids=["permit", "deny"])
@pytest.mark.parametrize("peer", PEERS)
def test_peer(benchmark: Any, peer: str, permit: bool) -> None:
    f = peer_check(peer, permit)
    benchmark.group = "ratelimit-permit" if permit else "ratelimit-deny"
    benchmark(loop1(f))


# -- many keys ----------------------------------------------------------------------------------
_KEYS: Dict[int, List[int]] = {}


def keys(n: int) -> List[int]:
    if n not in _KEYS:
        rng = random.Random(n)
        _KEYS[n] = rng.sample(range(10 ** 12), n)
    return _KEYS[n]


def loop_keys(f: Callable[[Any], Any], n: int) -> Callable[[], None]:
    ks = keys(n)
    pos = itertools.cycle(range(0, n, LOOP))

    def run() -> None:
        start = next(pos)
        for key in ks[start:start + LOOP]:
            f(key)
    return run


def keyed_check(name: str, n: int) -> Callable[[Any], Any]:
    if name in ("fast", "pure"):
        with _impl.use(name):
            k = KeyedLimiter(BIG, BIG, max_keys=max(n, 16))
        f = k.try_acquire
    elif name == "single_bucket_fast":
        with _impl.use("fast"):
            b = TokenBucket(BIG, BIG)
        acquire = b.try_acquire
        return lambda key: acquire()
    elif name == "token_bucket":
        tb = _peer("token_bucket")
        lim = tb.Limiter(BIG, 10 ** 15, tb.MemoryStorage())
        f = lambda key: lim.consume(str(key))  # noqa: E731 - its keys must be str/bytes
    elif name == "limits_fixed":
        limits = _peer("limits")
        from limits import storage, strategies
        flim = strategies.FixedWindowRateLimiter(storage.MemoryStorage())
        item = limits.parse("1000000/second")
        f = lambda key: flim.hit(item, str(key))  # noqa: E731
    elif name == "throttled_token":
        _peer("throttled")
        from throttled import RateLimiterType, Throttled, rate_limiter, store
        th = Throttled(using=RateLimiterType.TOKEN_BUCKET.value,
                       quota=rate_limiter.per_sec(10 ** 9, burst=10 ** 9),
                       store=store.MemoryStore())
        f = lambda key: th.limit(str(key))  # noqa: E731
    else:
        raise ValueError(name)
    for key in keys(n):  # warm: every key present before timing
        f(key)
    return f


KEYED = ["fast", "pure", "single_bucket_fast", "token_bucket", "limits_fixed", "throttled_token"]


@pytest.mark.parametrize("n", [10 ** 4, 10 ** 6], ids=["10k", "1M"])
def test_keys_bare_call(benchmark: Any, n: int) -> None:
    benchmark.group = f"ratelimit-keys-{'10k' if n == 10 ** 4 else '1M'}"
    benchmark(loop_keys(bare, n))


@pytest.mark.parametrize("n", [10 ** 4, 10 ** 6], ids=["10k", "1M"])
@pytest.mark.parametrize("name", KEYED)
def test_keys(benchmark: Any, name: str, n: int) -> None:
    if name == "fast" and not _impl.FAST_AVAILABLE:
        pytest.skip("compiled kernels not built")
    if n == 10 ** 6 and name in ("pure", "throttled_token", "limits_fixed"):
        pytest.skip(f"{name}: 1M keys take minutes to warm; measured at 10k only")
    f = keyed_check(name, n)
    benchmark.group = f"ratelimit-keys-{'10k' if n == 10 ** 4 else '1M'}"
    benchmark(loop_keys(f, n))


# -- async ----------------------------------------------------------------------------------
LOOP_EV = asyncio.new_event_loop()


async def acoro() -> int:
    return 1


def arun(make: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        LOOP_EV.run_until_complete(make())
    return run


@pytest.mark.benchmark(group="ratelimit-async")
def test_async_bare_await(benchmark: Any) -> None:
    async def many() -> None:
        for _ in range(LOOP):
            await acoro()
    benchmark(arun(many))


@pytest.mark.benchmark(group="ratelimit-async")
@pytest.mark.parametrize("twin", ["fast", "pure"])
def test_async_gameguard_token(benchmark: Any, twin: str) -> None:
    with _twin(twin):
        b = TokenBucket(BIG, BIG)

    async def many() -> None:
        for _ in range(LOOP):
            async with b:
                await acoro()
    benchmark(arun(many))


@pytest.mark.benchmark(group="ratelimit-async")
@pytest.mark.parametrize("twin", ["fast", "pure"])
def test_async_gameguard_decorated(benchmark: Any, twin: str) -> None:
    with _twin(twin):
        b = TokenBucket(BIG, BIG)
    guarded = b(acoro)

    async def many() -> None:
        for _ in range(LOOP):
            await guarded()
    benchmark(arun(many))


@pytest.mark.benchmark(group="ratelimit-async")
def test_async_aiolimiter(benchmark: Any) -> None:
    aiolimiter = _peer("aiolimiter")
    lim = aiolimiter.AsyncLimiter(10 ** 9, 1.0)

    async def many() -> None:
        for _ in range(LOOP):
            async with lim:
                await acoro()
    benchmark(arun(many))


# -- callgrind instruction counts ---------------------------------------------------------------
CASES = (["bare"] + [f"{w}_{t}" for w in OURS for t in ("fast", "pure")] +
         ["hybridkind_fast"] + [f"{w}_fast_deny" for w in OURS] + PEERS +
         ["keyed_fast_1M", "bare_1M", "single_fast_1M"])


def run_case(case: str, n: int) -> None:
    if case in ("bare", "bare_1M", "keyed_fast_1M", "single_fast_1M"):
        if case == "bare":
            f: Callable[[Any], Any] = bare
            for _ in range(n):
                f(1)
            return
        ks = keys(10 ** 6)
        if case == "bare_1M":
            f = bare
        elif case == "keyed_fast_1M":
            with _impl.use("fast"):
                kl = KeyedLimiter(BIG, BIG, max_keys=10 ** 6)
            f = kl.try_acquire
        else:
            with _impl.use("fast"):
                b = TokenBucket(BIG, BIG)
            acquire = b.try_acquire
            f = lambda key: acquire()  # noqa: E731
        for key in ks:  # warm (same work in both runs: cancels out)
            f(key)
        m = len(ks)
        for i in range(n):
            f(ks[i % m])
        return
    if case == "hybridkind_fast":
        f = gameguard_check("hybridkind", "fast", True)
        for _ in range(n):
            f("burst")
        return
    if case in PEERS:
        f = peer_check(case, permit=True)
    else:
        parts = case.split("_")
        f = gameguard_check(parts[0], parts[1], permit=not case.endswith("_deny"))
    for _ in range(n):
        f(1)


def measure(case: str, n1: int = 20_000, n2: int = 120_000) -> float:
    counts = []
    for n in (n1, n2):
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             __file__, case, str(n)],
            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True)
        m = re.search(r"(?:Collected :|I\s+refs:)\s*([\d,]+)", out.stderr)
        if out.returncode != 0 or not m:
            raise RuntimeError(f"{case}: {out.stderr[-500:]}")
        counts.append(int(m.group(1).replace(",", "")))
    return (counts[1] - counts[0]) / (n2 - n1)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    if sys.argv[1:2] == ["--report"]:
        cases = sys.argv[2:] or CASES
        base = None
        print(f"{'case':24s} {'instr/call':>11s} {'x bare':>8s}")
        for case in cases:
            try:
                per = measure(case)
            except Exception as exc:  # a peer that is not installed
                print(f"{case:24s} skipped: {str(exc).splitlines()[-1][:60]}")
                continue
            base = per if case == "bare" else base
            ratio = f"{per / base:8.2f}" if base else ""
            print(f"{case:24s} {per:11.1f} {ratio}", flush=True)
    else:
        run_case(sys.argv[1], int(sys.argv[2]))
