"""A permit is never lost, on any path (both twins).

The matrix: {decorated sync call, decorated coroutine, ``with``, ``async with``} × {one
guard, a pipeline of three} × {success, user exception, rejection, an inner guard raising
in ``enter`` (a throttle's ``rng``), cancellation, never awaited}. Combinations that do not
exist are left out: ``with`` cannot hold an ``await`` (so no cancellation there), a sync
call cannot be cancelled, and only a decorated coroutine can be created and never awaited
(``async with`` awaits ``__aenter__`` at once). Each case asserts every permit came back
exactly once: bulkheads at 0 in flight (a double release would go negative), the half-open
breaker's probe slot free again, outcomes recorded as the contract says.

Then the edge paths one at a time: an inner ``enter`` raising, a ``_service`` (listener)
raising a ``BaseException`` after admission, a user clock raising on the exit read, a kernel
refusing the exit reading, a coroutine dropped unawaited while someone waits.
"""
from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gameguard import _impl
from gameguard import (AdaptiveThrottle, Bulkhead, CircuitBreaker, CircuitOpenError,
                       ConfigurationError, Guard, KeyedLimiter, ManualClock, RejectedError,
                       pipeline)


class Boom(Exception):
    pass


class RngBroke(Exception):
    pass


class Stop(BaseException):
    """A BaseException from user code inside the machinery (a listener, a clock)."""


def raising_rng() -> float:
    raise RngBroke("rng")


def broken_throttle(clock) -> AdaptiveThrottle:
    """A throttle whose kernel calls ``rng`` on every enter (enough failures recorded)."""
    t = AdaptiveThrottle(clock=clock, rng=raising_rng)
    for _ in range(40):
        t.record_failure()
    return t


def half_open_breaker(clock) -> CircuitBreaker:
    b = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=10.0,
                       half_open_calls=1, name="probe")
    b.record_failure()
    clock.advance(10.0)
    assert b.state == "half_open"
    return b


def probe_slot_free(b: CircuitBreaker, now: float) -> bool:
    """Whether a new probe is admitted at ``now`` (handed straight back, as no outcome)."""
    token = b._kernel.enter(now)
    if token < 0:
        return False
    b._kernel.exit(token, now, 0.0, 2)  # IGNORED: the slot goes back, state unchanged
    return True


class Scene:
    """The guards of one case, and what must hold after it."""

    def __init__(self, shape: str, outcome: str, clock: ManualClock) -> None:
        self.bulkheads = [Bulkhead(1, clock=clock, name="outer-bulkhead")]
        # made first: making it moves the clock on, past a throttle's window
        self.probe = half_open_breaker(clock) if shape == "three" else None
        if outcome == "rejection":
            last: Guard = CircuitBreaker(clock=clock, name="open")
            last.force_open()  # type: ignore[attr-defined]
        elif outcome == "inner_raises":
            last = broken_throttle(clock)
        else:
            last = Bulkhead(1, clock=clock, name="inner-bulkhead")
            self.bulkheads.append(last)  # type: ignore[arg-type]
        if self.probe is None:
            self.guard = last
        else:
            self.guard = pipeline(self.probe, self.bulkheads[0], last)

    def check(self, outcome: str) -> None:
        assert [b.in_flight for b in self.bulkheads] == [0] * len(self.bulkheads)
        if self.probe is None:
            return
        if outcome == "success":
            assert self.probe.state == "closed"
        elif outcome == "user_exception":
            assert self.probe.state == "open"
        else:  # no outcome: the probe slot is back and the breaker still half-open
            assert self.probe.state == "half_open"
            assert probe_slot_free(self.probe, self.probe.clock())


EXPECTED = {"user_exception": Boom, "rejection": CircuitOpenError, "inner_raises": RngBroke,
            "cancelled": asyncio.CancelledError}


def run_sync(form: str, guard, outcome: str) -> object:
    err = Boom()

    def body() -> str:
        if outcome == "user_exception":
            raise err
        return "ok"

    if form == "call":
        return guard(body)()
    with guard:
        return body()


def run_async(form: str, guard, outcome: str) -> object:
    async def body() -> str:
        await asyncio.sleep(0)
        if outcome == "user_exception":
            raise Boom()
        if outcome == "cancelled":
            await asyncio.Event().wait()
        return "ok"

    if form == "acall":
        fn = guard(body)
    else:
        async def fn() -> str:
            async with guard:
                return await body()

    async def main() -> object:
        if outcome == "never_awaited":
            with pytest.warns(RuntimeWarning, match="never awaited"):
                pending = fn()
                del pending
                gc.collect()
            return None
        task = asyncio.ensure_future(fn())
        if outcome == "cancelled":
            for _ in range(3):
                await asyncio.sleep(0)
            task.cancel()
        return await task

    return asyncio.run(main())


CASES = [(form, outcome) for form in ("call", "with")
         for outcome in ("success", "user_exception", "rejection", "inner_raises")]
CASES += [(form, outcome) for form in ("acall", "async_with")
          for outcome in ("success", "user_exception", "rejection", "inner_raises",
                          "cancelled")]
CASES += [("acall", "never_awaited")]


@pytest.mark.parametrize("shape", ["one", "three"])
@pytest.mark.parametrize("form,outcome", CASES)
def test_every_permit_released_exactly_once(twin, shape, form, outcome):
    clock = ManualClock(100.0)
    scene = Scene(shape, outcome, clock)
    run = run_sync if form in ("call", "with") else run_async
    for _ in range(3):  # a leaked permit shows by the second round (Bulkhead(1))
        if outcome in EXPECTED:
            with pytest.raises(EXPECTED[outcome]):
                run(form, scene.guard, outcome)
        else:
            result = run(form, scene.guard, outcome)
            assert result == ("ok" if outcome == "success" else None)
        scene.check(outcome)
        if scene.probe is not None and outcome in ("success", "user_exception"):
            break  # the probe decided the breaker's state: later rounds test other things


# -- one edge path at a time -------------------------------------------------------------------
class RaisingKernelGuard(Guard):
    """A guard whose kernel's ``enter`` raises (as a KeyedLimiter's table does without a key,
    or a kernel refusing a non-finite clock reading)."""

    def __init__(self, kernels, clock) -> None:
        base = kernels("kernel").GuardKernel

        class Kernel(base):  # type: ignore[misc, valid-type]
            def enter(self, now):
                raise TypeError("this guard needs a key")

        self._init_guard("needs-key", clock)
        self._kernel = Kernel()

    def _rejection(self, now):
        return RejectedError("refused", retry_after=None, name=self.name)


FORMS = ("call", "with", "acall", "async_with")


def run_form(form, guard, body=lambda: "ok"):
    """``body()`` under ``guard`` as a decorated call, a decorated coroutine, ``with`` or
    ``async with``: its value, or the exception raised."""
    async def abody():
        return body()

    async def async_with():
        async with guard:
            return body()

    try:
        if form == "call":
            return guard(body)()
        if form == "with":
            with guard:
                return body()
        if form == "acall":
            return asyncio.run(guard(abody)())
        return asyncio.run(async_with())
    except BaseException as exc:  # reported to the test
        return exc


def test_inner_enter_raising_releases_outer_permits(twin, kernels):
    """Defect: pipeline(Bulkhead(3), <a guard whose enter raises>) gave TypeError three
    times, then BulkheadFullError for ever."""
    clock = ManualClock(0.0)
    outer = Bulkhead(3, clock=clock)
    p = pipeline(outer, RaisingKernelGuard(kernels, clock))
    for _ in range(2):
        for form in FORMS:
            assert isinstance(run_form(form, p), TypeError), form
            assert outer.in_flight == 0, form


def test_throttle_rng_raising_inside_pipeline_releases_outer(twin):
    clock = ManualClock(0.0)
    outer = Bulkhead(2, clock=clock)
    probe = half_open_breaker(clock)
    p = pipeline(probe, outer, broken_throttle(clock))
    for _ in range(2):
        for form in FORMS:
            assert isinstance(run_form(form, p), RngBroke), form
            assert outer.in_flight == 0, form
            assert probe.state == "half_open" and probe_slot_free(probe, clock()), form


def test_listener_base_exception_after_admission_releases_every_permit(twin):
    """Open -> half-open happens inside ``enter``; the listener raising a BaseException
    from ``_service`` used to lose the outer bulkhead's slot and the admitted probe."""
    for form in FORMS:
        clock = ManualClock(0.0)
        outer = Bulkhead(1, clock=clock)
        b = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=1.0)
        b.record_failure()
        calls = []

        @b.on_state_change
        def stop(breaker, old, new):
            calls.append((old, new))
            if new == "half_open":
                raise Stop()

        clock.advance(1.0)
        assert isinstance(run_form(form, pipeline(outer, b)), Stop), form
        assert calls == [("open", "half_open")]
        assert outer.in_flight == 0
        assert b.state == "half_open" and probe_slot_free(b, clock()), form


class FlakyClock:
    """A ManualClock whose reads raise from the ``fail_from``-th one on."""

    def __init__(self, fail_from: int) -> None:
        self.inner = ManualClock(50.0)
        self.reads = 0
        self.fail_from = fail_from

    def __call__(self) -> float:
        self.reads += 1
        if self.reads >= self.fail_from:
            raise Stop("clock broke")
        return self.inner()


def guards_on(clock):
    b = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=10.0,
                       half_open_calls=1, slow_call_duration=1.0)
    b.record_failure()
    clock.inner.advance(10.0)
    return b, Bulkhead(1, clock=clock)


@pytest.mark.parametrize("shape", ["one", "pipeline"])
def test_clock_raising_on_exit_read_releases_with_no_outcome(twin, shape):
    """The exit read raising: every permit released as no outcome at t0 (the probe slot
    back, nothing recorded), then the clock's error (no caller exception)."""
    for form in FORMS:
        clock = FlakyClock(fail_from=10**9)
        b, bulk = guards_on(clock)
        guard = pipeline(b, bulk) if shape == "pipeline" else b
        clock.fail_from = clock.reads + 2  # the entry read works, the exit read raises
        result = run_form(form, guard)
        clock.fail_from = 10**9
        assert isinstance(result, Stop), (form, result)
        assert bulk.in_flight == 0
        assert b.state == "half_open" and probe_slot_free(b, clock()), form


def test_clock_raising_on_exit_read_keeps_the_callers_exception(twin, caplog):
    err = Boom()

    def body():
        raise err

    for form in FORMS:
        clock = FlakyClock(fail_from=10**9)
        b, bulk = guards_on(clock)
        clock.fail_from = clock.reads + 2
        with caplog.at_level(logging.ERROR, logger="gameguard"):
            result = run_form(form, pipeline(b, bulk), body)
        clock.fail_from = 10**9
        assert result is err, form
        assert "clock broke" in caplog.text, form
        caplog.clear()
        assert bulk.in_flight == 0
        assert b.state == "half_open" and probe_slot_free(b, clock()), form


class PickyKernelGuard(Guard):
    """A guard whose kernel refuses a NaN reading in ``exit`` (as kernels validate
    clocks): the permit must still come back, at the entry reading."""

    def __init__(self, kernels, clock) -> None:
        base = kernels("kernel").GuardKernel

        class Kernel(base):  # type: ignore[misc, valid-type]
            held = 0
            exits = []

            def enter(self, now):
                type(self).held += 1
                return 5

            def exit(self, token, now, duration, outcome):
                if now != now:
                    raise ValueError("clock reading is NaN")
                type(self).exits.append((now, duration, outcome))
                type(self).held -= 1

        self._init_guard("picky", clock)
        self._kernel = Kernel()

    def _rejection(self, now):
        return RejectedError("refused", retry_after=None, name=self.name)


def test_kernel_refusing_the_exit_reading_is_released_at_t0(twin, kernels):
    readings = []

    def clock():  # entry reads 3.0, exit reads NaN (once the readings are queued)
        return readings.pop() if readings else 3.0

    g = PickyKernelGuard(kernels, clock)
    outer = Bulkhead(1, clock=clock)
    for form in FORMS:
        readings[:] = [float("nan"), 3.0]
        result = run_form(form, pipeline(outer, g))
        assert isinstance(result, ValueError), form
        assert g._kernel.held == 0 and outer.in_flight == 0, form
        assert g._kernel.exits[-1] == (3.0, 0.0, 2), form  # at t0, no duration, IGNORED


def test_never_awaited_coroutine_releases_and_wakes_a_waiter(twin):
    """Defect: a compiled guarded coroutine dropped unawaited released its slot at dealloc
    but woke no waiter, who then waited for nothing (here: until max_wait)."""
    b = Bulkhead(1, max_wait=3600.0)

    @b
    async def f():
        return "done"

    async def main():
        dropped = f()                     # compiled: the slot is taken here
        waiter = asyncio.ensure_future(f())
        for _ in range(3):
            await asyncio.sleep(0)
        with pytest.warns(RuntimeWarning, match="never awaited"):
            del dropped
            gc.collect()
        for _ in range(10):
            await asyncio.sleep(0)
            if waiter.done():
                break
        assert waiter.done(), "the waiter was never woken"
        assert waiter.result() == "done"
        assert b.in_flight == 0

    asyncio.run(main())


def test_pipeline_refuses_a_guard_that_needs_a_key(twin):
    class Keyed(KeyedLimiter):
        _needs_key = True  # what KeyedLimiter declares

    with pytest.raises(ConfigurationError, match=r"bind\(key\)"):
        pipeline(Bulkhead(3), Keyed(rate=10))
    pipeline(Bulkhead(3), Keyed(rate=10).bind("player-1"))  # one key: a guard like others


# -- the twins decide alike through every form -------------------------------------------------
STEP = st.tuples(st.sampled_from(FORMS), st.sampled_from(["ok", "boom", "ignored"]),
                 st.sampled_from([0.0, 0.5, 3.0]))


@settings(max_examples=60, deadline=None)
@given(st.lists(STEP, max_size=25))
def test_twins_decide_alike_through_every_form(steps):
    """The same calls, outcomes and clock through pipeline(breaker, bulkhead, breaker) on
    the fast and the pure twin: the same results, breaker states and permits."""
    if not _impl.FAST_AVAILABLE:
        pytest.fail("the compiled twin is not built")
    seen = []
    for which in ("fast", "pure"):
        clock = ManualClock(0.0)
        with _impl.use(which):
            outer = CircuitBreaker("outer", clock=clock, consecutive_failures=2,
                                   open_duration=2.0, ignore=KeyError)
            bulk = Bulkhead(1, clock=clock)
            inner = CircuitBreaker("inner", clock=clock, failure_rate=0.5, minimum_calls=2,
                                   window=4.0, buckets=4, open_duration=1.0)
            p = pipeline(outer, bulk, inner)
        trace = []
        for form, outcome, dt in steps:
            def body(outcome=outcome):
                if outcome == "boom":
                    raise Boom()
                if outcome == "ignored":
                    raise KeyError("ignored")
                return "ok"
            result = run_form(form, p, body)
            trace.append((type(result).__name__, getattr(result, "name", None), outer.state,
                          inner.state, bulk.in_flight))
            clock.advance(dt)
        seen.append(trace)
    assert seen[0] == seen[1]


def test_a_task_started_inside_a_block_keeps_its_own_permits(twin):
    """A task copies the context of the block that starts it: each must still close its
    own permit (here the parent's permit is from a stale breaker epoch, the child's not:
    exiting with the child's would count the parent's failure)."""
    b = CircuitBreaker(clock=ManualClock(0.0), consecutive_failures=1)

    async def main():
        entered, release = asyncio.Event(), asyncio.Event()

        async def child():
            async with b:
                entered.set()
                await release.wait()

        with pytest.raises(Boom):
            async with b:
                b.force_open()
                b.reset()                  # a new epoch: the parent's permit is stale now
                task = asyncio.ensure_future(child())
                await entered.wait()
                raise Boom()               # a stale permit's outcome counts for nothing
        assert b.state == "closed"
        release.set()
        await task
        assert b.state == "closed"

    asyncio.run(main())


def test_blocks_in_fresh_tasks_leave_nothing_for_the_cyclic_gc(twin):
    """A task that opens a block gets its own stack of open blocks, held by the task's
    context: it must go with the context, not wait for the cyclic GC (10,000 fresh tasks,
    the collector off: no stack and no garbage cycle is left behind)."""
    from gameguard.rules import Rules

    guards = [Bulkhead(4), Rules({"resource": {"r": {"bulkhead": {"max_concurrent": 4}}}})
              .guard("r")]

    async def one(g):
        async with g:
            pass
        with g:
            pass

    async def main(g):
        for _ in range(10_000):
            await asyncio.create_task(one(g))

    def stacks():
        return len([o for o in gc.get_objects() if type(o).__name__ == "PermitStack"])

    for g in guards:
        gc.collect()
        gc.disable()
        try:
            before = stacks()  # other tests' threads keep theirs
            asyncio.run(main(g))
            assert stacks() - before <= 2, g
        finally:
            gc.enable()
        assert gc.collect() < 1_000, g  # without the fix: 4 or 6 objects a task


def test_a_dead_contexts_stack_is_not_found_at_its_address(twin):
    """The stack of open blocks records its context weakly: once the context is gone, a new
    context at the same address (CPython reuses them at once) has no open blocks."""
    import contextvars

    g, other = Bulkhead(2), Bulkhead(1)
    ctx = contextvars.Context()
    ctx.run(g.__enter__)          # left open: that context's stack has a block of g
    address = id(ctx)
    del ctx
    kept = []
    for _ in range(1_000):
        new = contextvars.Context()
        if id(new) == address:
            break
        kept.append(new)
    else:
        pytest.fail("no new context took the dead one's address")
    with pytest.raises(RuntimeError, match="without a matching"):
        new.run(g.__exit__, None, None, None)
    new.run(other.__enter__)
    assert (g.in_flight, other.in_flight) == (1, 1)
    new.run(other.__exit__, None, None, None)
    assert other.in_flight == 0


@pytest.mark.parametrize("impl", ["fast", "pure"])
def test_a_task_cannot_close_the_block_its_parent_opened(impl: str) -> None:
    """A task inherits a copy of its parent's context, open blocks included; closing one of
    them from the child is refused on both twins, so the permit is released once, by the
    parent."""
    with _impl.use(impl):
        bulkhead = Bulkhead(1, name=f"inherit-{impl}")

    async def child() -> None:
        with pytest.raises(RuntimeError, match="__exit__"):
            bulkhead.__exit__(None, None, None)

    async def parent() -> None:
        with bulkhead:
            await asyncio.create_task(child())
            assert bulkhead.snapshot()["in_flight"] == 1  # still the parent's
        assert bulkhead.snapshot()["in_flight"] == 0

    asyncio.run(parent())
    with bulkhead:  # the one slot is free again, exactly once
        assert bulkhead.snapshot()["in_flight"] == 1
