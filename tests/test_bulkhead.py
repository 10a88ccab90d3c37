"""Bulkhead: the bound, release on every exit path, waiting threads and tasks, wake-ups that
are not lost, cancellation that gives the slot back; the kernel's twins in lockstep; and
threads and asyncio under load through a bulkhead and a breaker together."""
from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import both_twins
from gameguard import (Bulkhead, BulkheadFullError, CircuitBreaker, CircuitOpenError,
                       ManualClock, pipeline)
from gameguard._impl import use

SAFETY = 20.0  # seconds: only a bound for a broken build, never reached when correct
LONG = 3600.0  # a max_wait no test waits out: a lost wake-up shows as a SAFETY timeout


class Boom(Exception):
    pass


def wait_until(predicate, what):
    """Spin until another thread reaches a state (no timing is asserted)."""
    deadline = time.monotonic() + SAFETY
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.0005)


# -- the bound and release --------------------------------------------------------------------
def test_bound_and_release(twin):
    b = Bulkhead(2, name="db")
    assert (b.in_flight, b.available) == (0, 2)
    with b:
        with b:
            assert (b.in_flight, b.available) == (2, 0)
            with pytest.raises(BulkheadFullError) as info:
                with b:
                    raise AssertionError("must not run")
            assert info.value.name == "db"
            assert info.value.retry_after is None
            assert b.snapshot() == {"name": "db", "in_flight": 2, "limit": 2, "waiting": 0,
                                       "config": {"max_concurrent": 2, "max_wait": 0.0},
                                       "counters": {"successful": 0, "failed": 0,
                                                    "ignored": 0, "rejected": 1,
                                                    "fallbacks": 0}}
        assert b.in_flight == 1
    assert b.in_flight == 0


@pytest.mark.parametrize("exc", [Boom(), KeyboardInterrupt(), asyncio.CancelledError(),
                                 SystemExit()])
def test_released_on_every_exception(twin, exc):
    b = Bulkhead(1)

    @b
    def handler():
        raise exc

    with pytest.raises(type(exc)) as info:
        handler()
    assert info.value is exc
    assert b.in_flight == 0
    with pytest.raises(type(exc)):
        with b:
            raise exc
    assert b.in_flight == 0


def test_decorated_reject_and_fallback(twin):
    b = Bulkhead(1, fallback=lambda *a, **k: ("busy", a, k))
    ran = []

    @b
    def handler(x, *, y):
        ran.append(x)
        return x + y

    with b:
        assert handler(1, y=2) == ("busy", (1,), {"y": 2})
    assert ran == []
    assert handler(1, y=2) == 3
    assert b.in_flight == 0


def test_sync_wait_times_out(twin):
    b = Bulkhead(1, max_wait=0.05)
    with b:
        t0 = time.monotonic()
        with pytest.raises(BulkheadFullError):
            with b:
                pass
        assert time.monotonic() - t0 >= 0.04
    assert b.in_flight == 0
    assert b.snapshot()["waiting"] == 0
    assert b._kernel.waiters == 0


@pytest.mark.asyncio
async def test_async_wait_times_out(twin):
    b = Bulkhead(1, max_wait=0.05)
    async with b:
        with pytest.raises(BulkheadFullError):
            async with b:
                pass
    assert b.in_flight == 0
    assert b.snapshot()["waiting"] == 0
    assert b._kernel.waiters == 0


# -- sync waiters ------------------------------------------------------------------------------
def test_sync_waiters_are_woken(twin):
    b = Bulkhead(1, max_wait=LONG)
    order = []

    @b
    def handler(i):
        order.append(i)

    with b:
        threads = [threading.Thread(target=handler, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: b.snapshot()["waiting"] == 4, "4 waiters")
        assert order == []
    for t in threads:
        t.join(SAFETY)
        assert not t.is_alive()
    assert sorted(order) == [0, 1, 2, 3]
    assert b.in_flight == 0 and b._kernel.waiters == 0


def test_two_exits_serviced_once_wake_two_threads(twin):
    """Two exits can both flag the wake-up before either services it; the one service that
    runs must then wake a waiter per free slot (waking one would leave a slot idle while a
    thread waits out max_wait)."""
    b = Bulkhead(2, max_wait=LONG)
    k = b._kernel
    t_a, t_b = k.enter(0.0), k.enter(0.0)
    admitted = []
    hold = threading.Event()             # admitted waiters keep their slots until both are in

    def waiter():
        with b:
            admitted.append(threading.get_ident())
            hold.wait(SAFETY)

    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: b.snapshot()["waiting"] == 2, "2 waiters")
        k.exit(t_a, 0.0, 0.0, 0)
        k.exit(t_b, 0.0, 0.0, 0)            # both exits before any service ...
        assert k.pending
        b._service()                         # ... and one service (the second sees nothing)
        wait_until(lambda: len(admitted) == 2, "both waiters admitted")
    finally:
        hold.set()
        with b._cond:                        # a broken build: do not leave threads behind
            b._cond.notify_all()
    for t in threads:
        t.join(SAFETY)
    assert b.in_flight == 0


# -- async waiters ------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_async_waiters_fifo(twin):
    b = Bulkhead(1, max_wait=LONG)
    order = []

    @b
    async def handler(i):
        order.append(i)
        await asyncio.sleep(0)

    async with b:
        tasks = [asyncio.create_task(handler(i)) for i in range(5)]
        while b.snapshot()["waiting"] < 5:
            await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), SAFETY)
    assert order == [0, 1, 2, 3, 4]
    assert b.in_flight == 0 and b._kernel.waiters == 0


@pytest.mark.asyncio
async def test_two_exits_serviced_once_wake_two_tasks(twin):
    b = Bulkhead(2, max_wait=LONG)
    k = b._kernel
    t_a, t_b = k.enter(0.0), k.enter(0.0)

    hold = asyncio.Event()               # admitted waiters keep their slots until both are in
    admitted = []

    async def waiter():
        async with b:
            admitted.append(1)
            await hold.wait()
            return "in"

    tasks = [asyncio.create_task(waiter()) for _ in range(2)]
    while b.snapshot()["waiting"] < 2:
        await asyncio.sleep(0)
    k.exit(t_a, 0.0, 0.0, 0)
    k.exit(t_b, 0.0, 0.0, 0)
    b._service()

    async def both_in():
        while len(admitted) < 2:
            await asyncio.sleep(0)

    try:
        await asyncio.wait_for(both_in(), SAFETY)
    finally:
        hold.set()
        for t in tasks:
            if len(admitted) < 2:
                t.cancel()
    assert await asyncio.gather(*tasks) == ["in", "in"]
    assert b.in_flight == 0


@pytest.mark.asyncio
async def test_cancelled_waiter_gives_up_its_place(twin):
    b = Bulkhead(1, max_wait=LONG)
    ran = []

    @b
    async def handler(i):
        ran.append(i)

    async with b:
        first = asyncio.create_task(handler(1))
        second = asyncio.create_task(handler(2))
        while b.snapshot()["waiting"] < 2:
            await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert b.snapshot()["waiting"] == 1
    await asyncio.wait_for(second, SAFETY)
    assert ran == [2]
    assert b.in_flight == 0 and b._kernel.waiters == 0


@pytest.mark.asyncio
async def test_cancelled_right_after_wake_up_is_cancelled_and_hands_the_slot_on(twin):
    """A wake-up and a cancel in the same loop iteration: the task must end cancelled (not
    run the guarded function; asyncio.wait_for in 3.11 would swallow the cancel), and the
    slot it was woken for goes to the next waiter."""
    b = Bulkhead(1, max_wait=LONG)
    ran = []

    @b
    async def handler(i):
        ran.append(i)

    token = b._kernel.enter(0.0)
    first = asyncio.create_task(handler(1))
    second = asyncio.create_task(handler(2))
    while b.snapshot()["waiting"] < 2:
        await asyncio.sleep(0)
    b._kernel.exit(token, 0.0, 0.0, 0)
    b._service()                         # wakes `first` ...
    first.cancel()                       # ... and cancels it before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, SAFETY)
    assert ran == [2]
    assert b.in_flight == 0 and b._kernel.waiters == 0


@pytest.mark.asyncio
async def test_wake_up_from_another_thread(twin):
    b = Bulkhead(1, max_wait=LONG)
    held = threading.Event()
    release = threading.Event()

    def holder():
        with b:
            held.set()
            release.wait(SAFETY)

    t = threading.Thread(target=holder)
    t.start()
    await asyncio.get_running_loop().run_in_executor(None, held.wait, SAFETY)

    async def waiter():
        async with b:
            return "in"

    task = asyncio.create_task(waiter())
    while b.snapshot()["waiting"] < 1:
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.wait_for(task, SAFETY) == "in"
    await asyncio.get_running_loop().run_in_executor(None, t.join, SAFETY)
    assert b.in_flight == 0


# -- kernel twins in lockstep ------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 5), ops=st.lists(st.tuples(
    st.sampled_from(["enter", "exit", "wait+", "wait-", "service"]), st.integers(0, 10)),
    max_size=100))
def test_kernel_twins_identical(limit, ops):
    fast_mod, pure_mod = both_twins("bulkhead")
    fast, pure = fast_mod.BulkheadKernel(limit), pure_mod.BulkheadKernel(limit)
    tokens = []
    for op, which in ops:
        if op == "enter":
            tf, tp = fast.enter(0.0), pure.enter(0.0)
            assert tf == tp
            if tf >= 0:
                tokens.append(tf)
        elif op == "exit" and tokens:
            tok = tokens.pop(which % len(tokens))
            fast.exit(tok, 1.0, 0.5, which % 3)
            pure.exit(tok, 1.0, 0.5, which % 3)
        elif op == "wait+":
            fast.waiters += 1
            pure.waiters += 1
        elif op == "wait-" and fast.waiters:
            fast.waiters -= 1
            pure.waiters -= 1
        elif op == "service":
            fast.pending = pure.pending = 0
        fast.exit(-1, 0.0, 0.0, 0)      # a rejected token's exit is a no-op
        pure.exit(-1, 0.0, 0.0, 0)
        assert (fast.in_flight, fast.waiters, fast.pending, fast.limit) == \
            (pure.in_flight, pure.waiters, pure.pending, pure.limit)
        assert 0 <= fast.in_flight <= limit


# -- threads under load: a decorated breaker over a bulkhead --------------------------------------
THREADS, CALLS = 8, 10_000


@pytest.mark.parametrize("max_wait", [0.0, None])  # None: wake-driven, no clock deadline
def test_threads_counts_add_up_and_bound_holds(impl, max_wait):
    clock = ManualClock(0.0)
    with use(impl):
        breaker = CircuitBreaker(clock=clock, minimum_calls=1, failure_rate=1.0)
        bulkhead = Bulkhead(3, max_wait=max_wait, clock=clock)
    lock = threading.Lock()
    state = {"now": 0, "peak": 0, "runs": 0}

    @breaker
    @bulkhead
    def handler():
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        for _ in range(20):              # give other threads a chance to pile up
            pass
        with lock:
            state["now"] -= 1
            state["runs"] += 1

    rejected = [0] * THREADS
    barrier = threading.Barrier(THREADS)

    def worker(i):
        barrier.wait()
        for _ in range(CALLS):
            try:
                handler()
            except BulkheadFullError:
                rejected[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SAFETY * 3)
        assert not t.is_alive()
    total = THREADS * CALLS
    assert state["runs"] + sum(rejected) == total
    if max_wait is None:
        assert sum(rejected) == 0
    assert 1 <= state["peak"] <= 3
    assert bulkhead.in_flight == 0 and bulkhead._kernel.waiters == 0
    snap = breaker.snapshot()
    assert snap["state"] == "closed"
    assert snap["calls"] == state["runs"]     # inner rejections count as nothing
    assert snap["failures"] == 0


def test_threads_breaker_counts_exact(impl):
    clock = ManualClock(0.0)
    with use(impl):
        breaker = CircuitBreaker(clock=clock, failure_rate=1.0, minimum_calls=10 ** 9)
    done = [0] * THREADS

    @breaker
    def handler(i):
        done[i] += 1
        if done[i] % 2:
            raise Boom()

    def worker(i):
        for _ in range(CALLS):
            try:
                handler(i)
            except Boom:
                pass

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SAFETY * 3)
        assert not t.is_alive()
    snap = breaker.snapshot()
    assert (snap["calls"], snap["failures"]) == (THREADS * CALLS, THREADS * CALLS // 2)


# -- asyncio under load: random cancellation through a bulkhead and a half-open breaker ---------
class Skip(Exception):
    """Ignored by the breaker: keeps it half-open while probes come and go."""


@pytest.mark.asyncio
@pytest.mark.parametrize("compose", ["nested", "pipeline"])
async def test_asyncio_random_cancellation_leaks_nothing(impl, compose):
    """10^4 calls, 40 % cancelled at a random await (seeded): in the bulkhead wait, inside
    the guarded body, or before starting. The breaker is half-open throughout (bodies end
    in an ignored exception) and the clock never moves, so a leaked probe slot or bulkhead
    slot would stay leaked and show at the end. ``compose`` is how the bulkhead (outer)
    and breaker (inner) are stacked for the calls that go through both."""
    rnd = random.Random(20240611)
    clock = ManualClock(0.0)
    with use(impl):
        breaker = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=1.0,
                                 half_open_calls=3, ignore=Skip)
        bulkhead = Bulkhead(4, max_wait=None, clock=clock)  # waits on wake-ups, not the clock
    breaker.record_failure()
    clock.advance(1.0)                   # half-open from here on; the clock stays put, so no
    assert breaker.state == "half_open"  # probe ever times out of its slot: leaks would show
    inside = {"bulkhead": 0, "peak": 0, "probes": 0, "probe_peak": 0}

    async def body(through_bulkhead, through_breaker, spins):
        if through_bulkhead:
            inside["bulkhead"] += 1
            inside["peak"] = max(inside["peak"], inside["bulkhead"])
        if through_breaker:
            inside["probes"] += 1
            inside["probe_peak"] = max(inside["probe_peak"], inside["probes"])
        try:
            for _ in range(spins):
                await asyncio.sleep(0)
            raise Skip()
        finally:
            if through_bulkhead:
                inside["bulkhead"] -= 1
            if through_breaker:
                inside["probes"] -= 1

    if compose == "pipeline":
        @pipeline(bulkhead, breaker)
        async def both_decorated(spins):
            return await body(True, True, spins)
    else:
        @bulkhead
        @breaker
        async def both_decorated(spins):
            return await body(True, True, spins)

    async def both_with(spins):
        async with pipeline(bulkhead, breaker):
            return await body(True, True, spins)

    @bulkhead
    async def only_bulkhead(spins):
        return await body(True, False, spins)

    async def with_breaker(spins):
        async with breaker:
            return await body(False, True, spins)

    async def with_bulkhead(spins):
        async with bulkhead:
            return await body(True, False, spins)

    kinds = [both_decorated, both_with, only_bulkhead, with_breaker, with_bulkhead]
    outcomes = {"cancelled": 0, "skip": 0, "open": 0}

    async def canceller(task, spins):
        for _ in range(spins):
            await asyncio.sleep(0)
        task.cancel()

    total, batch = 10_000, 250
    for _ in range(total // batch):
        tasks, cancellers = [], []
        for _ in range(batch):
            task = asyncio.create_task(rnd.choice(kinds)(rnd.randrange(4)))
            tasks.append(task)
            if rnd.random() < 0.4:
                cancellers.append(asyncio.create_task(canceller(task, rnd.randrange(6))))
        results = await asyncio.wait_for(
            asyncio.gather(*tasks, *cancellers, return_exceptions=True), SAFETY)
        for r in results[:batch]:
            if isinstance(r, asyncio.CancelledError):
                outcomes["cancelled"] += 1
            elif isinstance(r, Skip):
                outcomes["skip"] += 1
            elif isinstance(r, CircuitOpenError):
                outcomes["open"] += 1
            else:
                raise AssertionError(f"unexpected result {r!r}")
    assert sum(outcomes.values()) == total
    assert min(outcomes.values()) > 100  # every path was exercised
    assert inside["peak"] <= 4 and inside["probe_peak"] <= 3
    assert inside["bulkhead"] == 0 and inside["probes"] == 0
    # nothing leaked: no bulkhead slot, no waiter, no probe slot
    assert bulkhead.in_flight == 0
    assert bulkhead._kernel.waiters == 0 and bulkhead.snapshot()["waiting"] == 0
    assert breaker.state == "half_open"
    assert clock() == 1.0
    probes = [asyncio.create_task(_hold(breaker)) for _ in range(3)]
    for _ in range(3):
        await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError):   # exactly three probe slots, all free
        async with breaker:
            pass
    for p in probes:
        p.cancel()
    await asyncio.gather(*probes, return_exceptions=True)
    async with breaker:                     # a probe that succeeds ...
        pass
    assert breaker.state == "half_open"     # ... one of three
    for _ in range(2):
        async with breaker:
            pass
    assert breaker.state == "closed"


async def _hold(breaker):
    async with breaker:
        await asyncio.Event().wait()
