"""TokenBucket and LeakyBucket on both twins: exact ManualClock behaviour, waiting,
cancellation, conservation, threads, bad input."""
from __future__ import annotations

import asyncio
import importlib
import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gameguard import ConfigurationError, ManualClock, RateLimitExceeded
from gameguard.ratelimit import LeakyBucket, TokenBucket


class FrozenClock(ManualClock):
    """Waiting does not move it: only the test does, so waiters stay queued."""

    def sleep(self, seconds: float) -> None:
        pass

    async def sleep_async(self, seconds: float) -> None:
        await asyncio.sleep(0)


async def spin(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# -- TokenBucket ----------------------------------------------------------------------------
def test_capacity_default_and_initial(twin: str) -> None:
    assert TokenBucket(50).capacity == 50.0
    assert TokenBucket(0.2).capacity == 1.0  # at least one call
    clock = ManualClock()
    assert TokenBucket(5, clock=clock).tokens == 5.0
    assert TokenBucket(5, 8, initial=2, clock=clock).tokens == 2.0


def test_burst_then_refill(twin: str) -> None:
    clock = ManualClock()
    b = TokenBucket(10, 5, clock=clock)
    assert [b.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.1)
    assert b.try_acquire() is True
    assert b.try_acquire() is False
    clock.advance(10.0)
    assert b.tokens == 5.0  # refill stops at capacity
    assert sum(b.try_acquire() for _ in range(10)) == 5


def test_fractional_costs_and_rates(twin: str) -> None:
    clock = ManualClock()
    b = TokenBucket(2.5, 1.5, clock=clock)
    assert b.try_acquire(0.75) and b.try_acquire(0.75)
    assert not b.try_acquire(0.25)
    clock.advance(0.1)  # 0.25 tokens back
    assert b.try_acquire(0.25)
    assert not b.try_acquire(0.25)
    assert b.retry_after(0.5) == pytest.approx(0.2)


@settings(max_examples=60, deadline=None)
@given(rate=st.floats(0.1, 1000), cap_mul=st.floats(1.0, 10.0),
       costs=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=20),
       start=st.floats(0, 1e6), want=st.floats(0.01, 1.0))
def test_retry_after_is_exact(impl: str, rate: float, cap_mul: float, costs: list,
                              start: float, want: float) -> None:
    from gameguard import _impl
    with _impl.use(impl):
        clock = ManualClock(start)
        cap = max(rate, 1.0) * cap_mul
        b = TokenBucket(rate, cap, clock=clock)
        for c in costs:
            b.try_acquire(c * cap)
        cost = want * cap
        wait = b.retry_after(cost)
        if wait == 0.0:
            assert b.try_acquire(cost)
            return
        if wait > 1e-6 * max(1.0, start):  # not earlier, to the clock's resolution
            # (level_at does not touch the state)
            assert b._kernel.level_at(clock() + wait * (1 - 1e-9)) < cost
        clock.advance(wait)
        assert b.try_acquire(cost), (wait, b.tokens)


@settings(max_examples=60, deadline=None)
@given(rate=st.floats(0.5, 100), cap=st.floats(1.0, 50),
       steps=st.lists(st.tuples(st.floats(0, 0.5), st.floats(0.05, 1.0)), max_size=60))
def test_token_conservation(impl: str, rate: float, cap: float, steps: list) -> None:
    """Over any interval, admitted <= capacity + rate * elapsed."""
    from gameguard import _impl
    with _impl.use(impl):
        clock = ManualClock()
        b = TokenBucket(rate, cap, clock=clock)
        log = []
        for dt, frac in steps:
            clock.advance(dt)
            c = frac * cap
            if b.try_acquire(c):
                log.append((clock(), c))
        for i in range(len(log)):
            total = 0.0
            for j in range(i, len(log)):
                total += log[j][1]
                assert total <= cap + rate * (log[j][0] - log[i][0]) + 1e-9 * (1 + total)


def test_acquire_waits_exactly(twin: str) -> None:
    clock = ManualClock()
    b = TokenBucket(4, 2, clock=clock)
    b.acquire()
    b.acquire()
    assert clock() == 0.0
    b.acquire()
    assert clock() == pytest.approx(0.25)
    b.acquire(2)
    assert clock() == pytest.approx(0.75)
    assert b.tokens == pytest.approx(0.0)


def test_acquire_timeout_refuses_without_taking(twin: str) -> None:
    clock = ManualClock()
    b = TokenBucket(10, 1, clock=clock, name="casts")
    assert b.try_acquire()
    with pytest.raises(RateLimitExceeded) as ei:
        b.acquire(timeout=0.05)
    assert ei.value.retry_after == pytest.approx(0.1)
    assert ei.value.name == "casts"
    assert clock() == 0.0 and b.tokens == 0.0  # nothing waited, nothing taken
    with pytest.raises(RateLimitExceeded):
        b.acquire(timeout=0)
    b.acquire(timeout=0.1)  # exactly enough
    assert clock() == pytest.approx(0.1)


def test_waiters_are_fifo_and_block_try_acquire(twin: str) -> None:
    async def main() -> None:
        clock = FrozenClock()
        b = TokenBucket(1, 1, initial=0, clock=clock)
        done: list = []

        async def one(tag: str) -> None:
            await b.acquire_async()
            done.append((tag, clock()))

        tasks = [asyncio.create_task(one(t)) for t in "abc"]
        await spin()
        assert b.waiting == 3 and b.tokens == -3.0
        clock.advance(1.0)
        assert not b.try_acquire()  # the queue owns the refill
        await spin()
        assert [t for t, _ in done] == ["a"]
        clock.advance(2.0)
        await spin()
        assert [t for t, _ in done] == ["a", "b", "c"]
        await asyncio.gather(*tasks)
    asyncio.run(main())


def test_cancelled_waiter_gives_reservation_back(twin: str) -> None:
    async def main() -> None:
        clock = FrozenClock()
        b = TokenBucket(1, 1, initial=0, clock=clock)
        a = asyncio.create_task(b.acquire_async())
        bb = asyncio.create_task(b.acquire_async())
        c = asyncio.create_task(b.acquire_async())
        await spin()
        assert b.waiting == 3  # deadlines 1, 2, 3
        bb.cancel()
        await spin()
        assert bb.cancelled() and b.waiting == 2
        clock.advance(1.0)
        await spin()
        assert a.done() and not c.done()
        clock.advance(1.0)  # c moved up from 3 s to 2 s
        await spin()
        assert c.done()
        assert b.retry_after() == pytest.approx(1.0)  # a later caller is not delayed either
    asyncio.run(main())


def test_cancelled_waiter_real_clock_moves_queue_up() -> None:
    """Real clock (loop timers, not a ManualClock): cancelling the first waiter moves the
    second one's deadline up to the first's, and the second is then granted. Asserted on
    the deadlines, not on elapsed time, so a loaded machine cannot fail it."""
    async def main() -> None:
        b = TokenBucket(20, 1, initial=0)
        a = asyncio.create_task(b.acquire_async())  # reserves ~50 ms ahead
        c = asyncio.create_task(b.acquire_async())  # ~100 ms ahead
        await asyncio.sleep(0)
        first, second = b._waiters
        ahead = first.deadline
        assert second.deadline - ahead == pytest.approx(0.05, abs=1e-6)
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        assert b._waiters == [second] and second.deadline == pytest.approx(ahead, abs=1e-6)
        await asyncio.wait_for(c, 10)
        assert b.waiting == 0
    asyncio.run(main())


def test_acquire_async_with_manual_clock(twin: str) -> None:
    async def main() -> None:
        clock = ManualClock()
        b = TokenBucket(10, 1, clock=clock)
        for _ in range(4):
            await b.acquire_async()
        assert clock() == pytest.approx(0.3)
        with pytest.raises(RateLimitExceeded):
            await b.acquire_async(timeout=0.01)
    asyncio.run(main())


def test_guard_protocol(twin: str) -> None:
    clock = ManualClock()
    b = TokenBucket(1, 2, clock=clock, name="rpc")

    @b
    def handler(x: int) -> int:
        return x * 2

    assert handler(2) == 4 and handler(3) == 6
    with pytest.raises(RateLimitExceeded) as ei:
        handler(4)
    assert ei.value.retry_after == pytest.approx(1.0) and ei.value.name == "rpc"
    assert handler.__wrapped__.__name__ == "handler"
    clock.advance(1.0)
    with b:
        pass
    with pytest.raises(RateLimitExceeded):
        with b:
            pass

    async def main() -> None:
        clock.advance(2.0)  # full again: 2 tokens
        async with b:
            pass

        @b
        async def ahandler() -> str:
            return "ok"

        assert await ahandler() == "ok"
        with pytest.raises(RateLimitExceeded):
            await ahandler()
    asyncio.run(main())


def test_guard_fallback(twin: str) -> None:
    clock = ManualClock()
    b = TokenBucket(1, 1, clock=clock, fallback=lambda *a: "busy")

    @b
    def handler() -> str:
        return "ran"

    assert handler() == "ran" and handler() == "busy"


def test_guard_with_capacity_below_one_is_a_configuration_error(twin: str) -> None:
    b = TokenBucket(0.5, 0.5, clock=ManualClock())
    assert b.try_acquire(0.5)
    with pytest.raises(ConfigurationError):
        with b:
            pass


# -- LeakyBucket ----------------------------------------------------------------------------
def test_leaky_meter(twin: str) -> None:
    clock = ManualClock()
    m = LeakyBucket(10, clock=clock)
    assert m.try_acquire() and not m.try_acquire()
    assert m.retry_after() == pytest.approx(0.1)
    clock.advance(0.05)
    assert not m.try_acquire()
    clock.advance(0.05)
    assert m.try_acquire()
    m3 = LeakyBucket(10, 3, clock=clock)
    assert [m3.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert m3.level == pytest.approx(3.0)
    clock.advance(0.1)
    assert m3.level == pytest.approx(2.0) and m3.try_acquire()


def test_leaky_shaper_spacing_and_timeout(twin: str) -> None:
    clock = ManualClock()
    s = LeakyBucket(5, clock=clock)
    times = []
    for _ in range(6):
        s.acquire()
        times.append(clock())
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[0] == 0.0
    assert all(g == pytest.approx(0.2) and g >= 0.2 - 1e-12 for g in gaps)
    with pytest.raises(RateLimitExceeded) as ei:
        s.acquire(timeout=0.1)
    assert ei.value.retry_after == pytest.approx(0.2)
    s.acquire(timeout=0.2)
    assert clock() == pytest.approx(1.2)


@settings(max_examples=50, deadline=None)
@given(rate=st.floats(0.5, 200), arrivals=st.lists(
    st.tuples(st.floats(0, 0.3), st.sampled_from([0.5, 1.0, 2.0])), min_size=2, max_size=30))
def test_shaper_spacing_property(impl: str, rate: float, arrivals: list) -> None:
    """Shaped departures are at least cost_prev / rate apart, whatever the arrivals."""
    mod = importlib.import_module(f"gameguard._{impl}.bucket")
    k = mod.LeakyBucketKernel(rate, 2.0, 0.0)
    now = 0.0
    departures = []
    for dt, cost in arrivals:
        now += dt
        d = k.reserve(now, cost, math.inf)
        assert d >= 0.0
        departures.append((now + d, cost))
    for (t0, c0), (t1, _) in zip(departures, departures[1:]):
        assert t1 - t0 >= c0 / rate - 1e-9 * max(1.0, t1)


def test_shaper_cancellation_keeps_spacing(twin: str) -> None:
    async def main() -> None:
        clock = FrozenClock()
        s = LeakyBucket(10, clock=clock)
        assert s.try_acquire()  # bucket holds one call: the next leaves at 0.1
        tasks = [asyncio.create_task(s.acquire_async()) for _ in range(3)]  # 0.1, 0.2, 0.3
        await spin()
        tasks[0].cancel()
        await spin()
        clock.advance(0.1)  # the second waiter takes the first one's slot
        await spin()
        assert tasks[1].done() and not tasks[2].done()
        clock.advance(0.1)
        await spin()
        assert tasks[2].done()
    asyncio.run(main())


# -- threads --------------------------------------------------------------------------------
def test_threads_never_over_admit(twin: str) -> None:
    clock = ManualClock()
    b = TokenBucket(1, 1000, clock=clock)
    m = LeakyBucket(1, 700, clock=clock)
    got = [0] * 8
    got_m = [0] * 8
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        start.wait()
        for _ in range(400):
            got[i] += b.try_acquire()
            got_m[i] += m.try_acquire()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(got) == 1000
    assert sum(got_m) == 700


def test_threads_real_clock_conservation(twin: str) -> None:
    """The default clock (read in C by the compiled kernel): never more than
    capacity + rate * elapsed, whatever the interleaving."""
    import time
    b = TokenBucket(1000, 500)
    got = [0] * 8
    barrier = threading.Barrier(8)
    t0 = time.monotonic()

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(2000):
            got[i] += b.try_acquire()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert 500 <= sum(got) <= 500 + 1000 * elapsed + 1


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "3", True, None])
def test_bad_rate(twin: str, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="rate"):
        TokenBucket(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="rate"):
        LeakyBucket(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -2, float("nan"), "x"])
def test_bad_capacity_initial(twin: str, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="capacity"):
        TokenBucket(1, bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="capacity"):
        LeakyBucket(1, bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="initial"):
        TokenBucket(1, 5, initial=6)
    with pytest.raises(ConfigurationError, match="initial"):
        TokenBucket(1, 5, initial=-1)


@pytest.mark.parametrize("cls", [TokenBucket, LeakyBucket])
def test_bad_cost_and_timeout(twin: str, cls: type) -> None:
    b = cls(10, 2, clock=ManualClock())
    for bad in (0, -1, float("nan"), 3, float("inf")):
        with pytest.raises(ConfigurationError, match="cost"):
            b.try_acquire(bad)
        with pytest.raises(ConfigurationError, match="cost"):
            b.acquire(bad)
        with pytest.raises(ConfigurationError, match="cost"):
            b.retry_after(bad)
    with pytest.raises(TypeError):
        b.try_acquire("1")
    for bad_t in (-1, float("nan"), "1"):
        with pytest.raises(ConfigurationError, match="timeout"):
            b.acquire(1, timeout=bad_t)
        with pytest.raises(ConfigurationError, match="timeout"):
            asyncio.run(b.acquire_async(1, timeout=bad_t))
