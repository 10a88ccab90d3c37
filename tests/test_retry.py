"""Retry: attempts, backoff and jitter on a ManualClock, retry_on, the RejectedError floor,
sync and async, inside pipeline() with a breaker counting every attempt, cancellation of the
backoff sleep, the user's exception passing through unchanged, and construction checks."""
from __future__ import annotations

import asyncio
import inspect
import traceback

import pytest

from gameguard import (Bulkhead, CircuitBreaker, CircuitOpenError, ConfigurationError,
                       ManualClock, RateLimitExceeded, pipeline, registry)
from gameguard.retry import Retry, RetryBudget, backoff_delay

SAFETY = 5.0  # seconds: a bound on any real wait in these tests, never a sleep


class Boom(Exception):
    pass


class Other(Exception):
    pass


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(0.0)


def failing(times: int, exc: type = Boom, value: object = "ok"):
    """A function failing its first ``times`` calls; ``.calls`` counts every call."""
    def f(*args, **kwargs):
        f.calls += 1
        if f.calls <= times:
            raise exc(f.calls)
        return value
    f.calls = 0
    return f


def afailing(times: int, exc: type = Boom, value: object = "ok"):
    async def f(*args, **kwargs):
        f.calls += 1
        await asyncio.sleep(0)
        if f.calls <= times:
            raise exc(f.calls)
        return value
    f.calls = 0
    return f


# -- the delay formula ---------------------------------------------------------------------
def test_backoff_delay_doubles_up_to_the_cap():
    assert [backoff_delay(n, 0.1, 1.0, 1.0) for n in range(1, 7)] == \
        pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff_delay(3, 0.1, 1.0, 0.5) == pytest.approx(0.2)  # the jitter draw scales it
    assert backoff_delay(10_000, 0.1, 2.0, 1.0) == 2.0  # a huge retry number does not overflow
    assert backoff_delay(1, 0.0, 2.0, 1.0) == 0.0


def test_backoff_delay_waits_at_least_a_rejections_retry_after_capped():
    assert backoff_delay(1, 0.1, 2.0, 1.0, RateLimitExceeded("x", retry_after=0.7)) == 0.7
    assert backoff_delay(1, 0.1, 2.0, 1.0, RateLimitExceeded("x", retry_after=9.0)) == 2.0
    assert backoff_delay(4, 0.1, 2.0, 1.0, RateLimitExceeded("x", retry_after=0.1)) == \
        pytest.approx(0.8)
    assert backoff_delay(1, 0.1, 2.0, 1.0, Boom()) == pytest.approx(0.1)  # not a rejection


def test_backoff_delay_is_the_sagas_formula():
    """The saga's runner computes the same delay (it is to call this function)."""
    for tries, base, cap, u, exc in [(1, 0.05, 5.0, 0.3, Boom()), (7, 0.05, 5.0, 0.9, Boom()),
                                     (2, 0.05, 5.0, 0.1, CircuitOpenError("o", retry_after=3)),
                                     (1, 0.5, 0.2, 0.5, None)]:
        saga = u * min(cap, base * 2.0 ** (tries - 1))
        if isinstance(exc, CircuitOpenError) and exc.retry_after:
            saga = max(saga, min(float(exc.retry_after), cap))
        assert backoff_delay(tries, base, cap, u, exc) == saga


# -- sync ----------------------------------------------------------------------------------
def test_success_first_time_calls_once_and_never_sleeps(twin, clock):
    f = failing(0)
    assert Retry(3, clock=clock)(f)(1) == "ok"
    assert f.calls == 1 and clock() == 0.0


def test_retries_with_exponential_backoff_on_the_clock(twin, clock):
    f = failing(2)
    retry = Retry(3, backoff=0.1, jitter="none", clock=clock)
    assert retry(f)("a", k=1) == "ok"
    assert f.calls == 3
    assert clock() == pytest.approx(0.1 + 0.2)
    snap = retry.snapshot()
    assert snap["retries"] == 2 and snap["recovered"] == 1 and snap["exhausted"] == 0


def test_attempts_counts_every_call_and_the_last_failure_propagates(twin, clock):
    f = failing(10)
    with pytest.raises(Boom) as info:
        Retry(4, clock=clock)(f)()
    assert f.calls == 4 and info.value.args == (4,)
    g = failing(10)
    with pytest.raises(Boom):
        Retry(1, clock=clock)(g)()
    assert g.calls == 1


def test_the_users_exception_is_the_same_object_with_its_traceback(twin, clock):
    raised = []

    def f():
        exc = Boom("mine")
        raised.append(exc)
        raise exc

    with pytest.raises(Boom) as info:
        Retry(2, clock=clock)(f)()
    assert info.value is raised[-1]
    frames = [fr.name for fr in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "f"
    assert info.value.__context__ is None  # not chained to the earlier attempt's failure


@pytest.mark.parametrize("jitter,u,expected", [("full", 0.25, 0.025), ("equal", 0.25, 0.0625),
                                               ("none", 0.25, 0.1)])
def test_jitter_modes_scale_the_delay(twin, clock, jitter, u, expected):
    Retry(2, backoff=0.1, jitter=jitter, rng=lambda: u, clock=clock)(failing(1))()
    assert clock() == pytest.approx(expected)


def test_a_seed_makes_the_jitter_reproducible():
    waits = []
    for _ in range(2):
        c = ManualClock()
        Retry(5, backoff=0.1, seed=42, clock=c)(failing(4))()
        waits.append(c())
    assert waits[0] == waits[1] and 0.0 < waits[0] < 0.1 + 0.2 + 0.4 + 0.8


@pytest.mark.parametrize("retry_on", [Other, (Other, KeyError), [Other],
                                      lambda e: isinstance(e, Other)])
def test_retry_on_types_or_a_predicate(twin, clock, retry_on):
    f = failing(1, exc=Boom)
    with pytest.raises(Boom):
        Retry(3, retry_on=retry_on, clock=clock)(f)()
    assert f.calls == 1
    g = failing(1, exc=Other)
    assert Retry(3, retry_on=retry_on, clock=clock)(g)() == "ok"
    assert g.calls == 2


def test_a_predicate_that_raises_means_no_retry(twin, clock):
    def broken(exc):
        raise RuntimeError("bad predicate")
    f = failing(1)
    with pytest.raises(Boom):
        Retry(3, retry_on=broken, clock=clock)(f)()
    assert f.calls == 1


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_base_exceptions_are_never_retried(twin, clock, exc):
    f = failing(1, exc=exc)
    with pytest.raises(exc):
        Retry(3, retry_on=BaseException, clock=clock)(f)()
    assert f.calls == 1


def test_wrapper_keeps_signature_wrapped_and_binds_as_a_method(twin, clock):
    retry = Retry(2, clock=clock)

    class Service:
        @retry
        def handle(self, x: int, *, y: int = 2) -> int:
            """doc"""
            return x + y

    assert Service().handle(1) == 3
    assert Service.handle.__wrapped__.__name__ == "handle"
    assert Service.handle.__doc__ == "doc"
    assert list(inspect.signature(Service.handle).parameters) == ["self", "x", "y"]


class CallableObject:
    """A callable with no vectorcall slot of its own (``tp_call`` only)."""

    def __init__(self, fails: int) -> None:
        self.calls, self.fails = 0, fails

    def __call__(self, x: int, *, y: int = 0) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.fails:
            raise Boom(self.calls)
        return (x, y)


@pytest.mark.parametrize("budget", [False, True])
@pytest.mark.parametrize("kind", ["object", "bound method", "builtin", "partial"])
def test_any_callable_and_its_arguments_pass_through(twin, clock, kind, budget):
    """The first attempt hands the caller's arguments (positional and keyword) to callees
    with and without a vectorcall slot; a failure is retried with the same arguments."""
    import functools

    target = CallableObject(fails=1)
    f = {"object": target, "bound method": target.__call__, "builtin": divmod,
         "partial": functools.partial(target, y=5)}[kind]
    retry = Retry(2, backoff=0.0, clock=clock,
                  budget=RetryBudget(clock=clock) if budget else None)
    wrapped = retry(f)
    if kind == "builtin":
        assert wrapped(7, 2) == (3, 1)
        with pytest.raises(ZeroDivisionError):
            wrapped(1, 0)
        assert retry.snapshot()["retries"] == 1
        return
    expected = (1, 5) if kind == "partial" else (1, 3)
    assert (wrapped(1) if kind == "partial" else wrapped(1, y=3)) == expected
    assert target.calls == 2 and retry.snapshot()["recovered"] == 1
    assert (wrapped(x=4) if kind == "partial" else wrapped(4)) == ((4, 5) if kind == "partial"
                                                                  else (4, 0))
    assert target.calls == 3
    if budget:
        snap = retry.budget.snapshot()
        assert (snap["calls"], snap["retries"]) == (2, 1)


# -- rejections from inner guards ----------------------------------------------------------
def test_pipeline_breaker_counts_each_attempt(twin, clock):
    breaker = CircuitBreaker(clock=clock, consecutive_failures=10)
    f = failing(2)
    assert pipeline(Retry(3, clock=clock), breaker)(f)() == "ok"
    snap = breaker.snapshot()
    assert (snap["calls"], snap["failures"]) == (3, 2)


def test_an_open_breaker_inside_is_retried_after_its_retry_after_capped(twin, clock):
    breaker = CircuitBreaker(clock=clock, consecutive_failures=2, open_duration=10.0)
    f = failing(100)
    retry = Retry(4, backoff=0.01, max_backoff=2.0, jitter="none", clock=clock)
    with pytest.raises(CircuitOpenError):
        pipeline(retry, breaker)(f)()
    assert f.calls == 2  # attempts 3 and 4 were refused by the open breaker
    assert breaker.snapshot()["failures"] == 2
    assert clock() == pytest.approx(0.01 + 0.02 + 2.0)  # the third: the capped retry_after


def test_retry_on_can_exclude_rejections(twin, clock):
    breaker = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=10.0)
    f = failing(100)
    retry = Retry(5, retry_on=lambda e: isinstance(e, Boom), clock=clock)
    with pytest.raises(CircuitOpenError):
        pipeline(retry, breaker)(f)()
    assert f.calls == 1


def test_a_guard_outside_the_retry_admits_the_call_once(twin, clock):
    bulkhead = Bulkhead(1, clock=clock)
    breaker = CircuitBreaker(clock=clock, consecutive_failures=10)
    seen = []

    def f():
        seen.append(bulkhead.in_flight)
        if len(seen) < 3:
            raise Boom()
        return "ok"

    assert pipeline(bulkhead, Retry(3, clock=clock), breaker)(f)() == "ok"
    assert seen == [1, 1, 1] and bulkhead.in_flight == 0
    assert breaker.snapshot()["calls"] == 3


def test_pipeline_fallback_answers_an_inner_rejection_without_a_retry(twin, clock):
    breaker = CircuitBreaker(clock=clock)
    breaker.force_open()
    f = failing(0)
    guarded = pipeline(Retry(3, clock=clock), breaker, fallback=lambda: "fb")(f)
    assert guarded() == "fb" and f.calls == 0 and clock() == 0.0


def test_with_blocks_are_refused(twin, clock):
    retry = Retry(clock=clock)
    with pytest.raises(TypeError, match="decorate"):
        with retry:
            pass
    with pytest.raises(TypeError, match="decorate"):
        with pipeline(retry, CircuitBreaker(clock=clock)):
            pass


@pytest.mark.asyncio
async def test_async_with_blocks_are_refused(clock):
    with pytest.raises(TypeError, match="decorate"):
        async with Retry(clock=clock):
            pass


# -- async ---------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_async_retries_with_backoff_on_the_clock(twin, clock):
    f = afailing(2)
    retry = Retry(3, backoff=0.1, jitter="none", clock=clock)
    guarded = retry(f)
    assert inspect.iscoroutinefunction(guarded)
    assert await guarded(1) == "ok"
    assert f.calls == 3 and clock() == pytest.approx(0.3)
    assert retry.snapshot()["recovered"] == 1


@pytest.mark.asyncio
async def test_async_pipeline_breaker_counts_each_attempt(twin, clock):
    breaker = CircuitBreaker(clock=clock, consecutive_failures=10)
    f = afailing(5)
    with pytest.raises(Boom):
        await pipeline(Retry(3, clock=clock), breaker)(f)()
    snap = breaker.snapshot()
    assert f.calls == 3 and (snap["calls"], snap["failures"]) == (3, 3)


class BlockingSleepClock:
    """A clock whose sleeps never end by themselves (the test cancels them)."""

    def __init__(self) -> None:
        self.sleeping = asyncio.Event()

    def __call__(self) -> float:
        return 0.0

    async def sleep_async(self, seconds: float) -> None:
        self.sleeping.set()
        await asyncio.Event().wait()


@pytest.mark.asyncio
async def test_cancelling_the_caller_cancels_the_backoff_sleep(twin):
    clock = BlockingSleepClock()
    bulkhead = Bulkhead(1, clock=clock)
    f = afailing(10)
    task = asyncio.ensure_future(pipeline(Retry(3, clock=clock), bulkhead)(f)())
    await asyncio.wait_for(clock.sleeping.wait(), SAFETY)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, SAFETY)
    assert f.calls == 1 and bulkhead.in_flight == 0


@pytest.mark.asyncio
async def test_cancelling_an_attempt_in_flight_is_not_retried(twin, clock):
    started = asyncio.Event()
    calls = []

    async def f():
        calls.append(1)
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(Retry(3, clock=clock)(f)())
    await asyncio.wait_for(started.wait(), SAFETY)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, SAFETY)
    assert calls == [1]


@pytest.mark.asyncio
async def test_a_sync_backoff_on_the_loop_thread_warns(clock):
    with pytest.warns(RuntimeWarning, match="blocks the event loop"):
        assert Retry(2, clock=clock)(failing(1))() == "ok"


@pytest.mark.asyncio
async def test_the_warning_raised_as_an_error_keeps_the_failure_attached(clock):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning) as info:
            Retry(2, clock=clock)(failing(1))()
    assert isinstance(info.value.__cause__, Boom)


# -- construction --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(attempts=0), "attempts.*0"), (dict(attempts=2.5), "attempts.*2.5"),
    (dict(backoff=-1), "backoff.*-1"), (dict(max_backoff=float("nan")), "max_backoff"),
    (dict(jitter="half"), "jitter.*half"), (dict(retry_on=5), "retry_on.*5"),
    (dict(budget=3), "budget.*3"), (dict(rng=4), "rng.*4"), (dict(seed=-1), "seed.*-1"),
    (dict(name=7), "name.*7"),
])
def test_bad_arguments_name_the_parameter_and_value(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        Retry(**kwargs)


def test_settings_are_read_only_and_registered():
    budget = RetryBudget()
    retry = Retry(5, backoff=0.2, max_backoff=3.0, jitter="equal", budget=budget, name="db")
    assert (retry.attempts, retry.backoff, retry.max_backoff, retry.jitter, retry.budget) == \
        (5, 0.2, 3.0, "equal", budget)
    with pytest.raises(AttributeError):
        retry.attempts = 2
    assert retry.name == "db" and retry.snapshot()["config"]["budget"] == budget.name
    live = registry()
    assert any(o is retry for o in live) and any(o is budget for o in live)


def test_default_names_are_stable():
    a, b = Retry(), Retry()
    assert a.name.startswith("retry") and b.name.startswith("retry") and a.name != b.name


def test_pipeline_needs_one_clock():
    with pytest.raises(ConfigurationError, match="clock"):
        pipeline(Retry(clock=ManualClock()), CircuitBreaker())


def test_sync_retries_load_no_asyncio():
    """A sync server using Retry, RetryBudget (and importing Timeout, Hedge) pays nothing for
    asyncio: those modules import it only when an async call runs."""
    import json
    import subprocess
    import sys

    code = ("import gameguard as gg, sys\n"
            "from gameguard.retry import Retry, RetryBudget\n"
            "from gameguard.timeout import Timeout\n"
            "from gameguard.hedge import Hedge\n"
            "clock = gg.ManualClock()\n"
            "n = []\n"
            "def f():\n"
            "    n.append(1)\n"
            "    if len(n) < 2: raise ValueError\n"
            "    return 1\n"
            "assert Retry(3, budget=RetryBudget(clock=clock), clock=clock)(f)() == 1\n"
            "Timeout(1.0), Hedge(0.1)\n"
            "import json; print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert "asyncio" not in json.loads(out)
