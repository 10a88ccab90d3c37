"""The guard protocol as users meet it: decorators (bare and called, sync and async), with,
async with, pipeline, fallbacks, signatures and ``__wrapped__``, methods, generator
rejection, and a user's exception passing through unchanged (same object, same traceback)."""
from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import traceback

import pytest

from gameguard import (AdaptiveThrottle, Bulkhead, BulkheadFullError, CircuitBreaker,
                       CircuitOpenError, ManualClock, RejectedError, pipeline)


class Boom(Exception):
    pass


@pytest.fixture
def clock():
    return ManualClock(0.0)


def open_breaker(clock, **kw):
    b = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=10.0, **kw)
    b.force_open()
    return b


GUARDS = {
    "breaker": lambda clock: CircuitBreaker(clock=clock),
    "throttle": lambda clock: AdaptiveThrottle(clock=clock, rng=lambda: 0.5),
    "bulkhead": lambda clock: Bulkhead(2, clock=clock),
    "pipeline": lambda clock: pipeline(CircuitBreaker(clock=clock), Bulkhead(2, clock=clock)),
}


@pytest.fixture(params=sorted(GUARDS))
def guard(request, twin, clock):
    return GUARDS[request.param](clock)


# -- decorating --------------------------------------------------------------------------------
def test_bare_and_called_decorator(guard):
    @guard
    def f(x, y=2, *, z=3):
        """doc of f"""
        return x + y + z

    @guard(fallback=lambda *a, **k: "fb")
    def g(x):
        return x * 2

    assert f(1) == 6
    assert f(1, 1, z=1) == 3
    assert g(21) == 42


def test_wrapper_keeps_signature_and_metadata(guard):
    def f(a: int, b: str = "x", *args: int, c: float, **kw: object) -> str:
        """Docstring."""
        return b

    wrapped = guard(f)
    assert wrapped.__wrapped__ is f
    assert wrapped.__name__ == "f"
    assert wrapped.__qualname__ == f.__qualname__
    assert wrapped.__doc__ == "Docstring."
    assert wrapped.__module__ == f.__module__
    assert inspect.signature(wrapped) == inspect.signature(f)
    assert not inspect.iscoroutinefunction(wrapped)


def test_async_wrapper_keeps_signature_and_is_a_coroutine_function(guard):
    async def f(a: int, *, b: int = 1) -> int:
        """Async doc."""
        return a + b

    wrapped = guard(f)
    assert wrapped.__wrapped__ is f
    assert wrapped.__name__ == "f"
    assert wrapped.__doc__ == "Async doc."
    assert inspect.signature(wrapped) == inspect.signature(f)
    assert inspect.iscoroutinefunction(wrapped)
    assert asyncio.run(wrapped(1, b=2)) == 3


def test_methods(guard):
    class Handler:
        def __init__(self):
            self.n = 0

        @guard
        def on_rpc(self, x):
            self.n += x
            return self

        @guard
        async def on_rpc_async(self, x):
            self.n += x
            return self

        @staticmethod
        @guard
        def static(x):
            return x

        @classmethod
        @guard
        def klass(cls, x):
            return cls, x

    h = Handler()
    assert h.on_rpc(2) is h
    assert asyncio.run(h.on_rpc_async(3)) is h
    assert h.n == 5
    assert Handler.static(4) == 4
    assert Handler.klass(5) == (Handler, 5)
    assert Handler.on_rpc(h, 1) is h     # through the class, self passed explicitly
    bound = h.on_rpc
    assert bound.__self__ is h
    assert inspect.signature(bound) == inspect.signature(lambda x: None)


def test_callables_and_partials(guard):
    class AsyncCallable:
        async def __call__(self, x):
            return x + 1

    async def add(a, b):
        return a + b

    assert asyncio.run(guard(AsyncCallable())(1)) == 2
    assert asyncio.run(guard(functools.partial(add, 1))(2)) == 3
    assert guard(functools.partial(max, 1))(5) == 5


def test_generators_are_rejected(guard):
    def gen():
        yield 1

    async def agen():
        yield 1

    with pytest.raises(TypeError, match="generator"):
        guard(gen)
    with pytest.raises(TypeError, match="generator"):
        guard(agen)


def test_non_callable_is_rejected(guard):
    with pytest.raises(TypeError):
        guard(42)


# -- exceptions pass through unchanged -------------------------------------------------------
def _frames(tb):
    return [f.f_code.co_name for f, _ in traceback.walk_tb(tb)]


def test_exception_passes_through_same_object_and_traceback(guard):
    err = Boom("x")
    cause = ValueError("cause")

    def deep():
        raise err from cause

    @guard
    def f():
        deep()

    with pytest.raises(Boom) as info:
        f()
    assert info.value is err
    assert err.__cause__ is cause
    frames = _frames(err.__traceback__)
    assert frames[-2:] == ["f", "deep"]   # the raising frames are still at the bottom
    assert err.args == ("x",)


def test_exception_passes_through_async(guard):
    err = Boom("y")

    @guard
    async def f():
        await asyncio.sleep(0)
        raise err

    with pytest.raises(Boom) as info:
        asyncio.run(f())
    assert info.value is err
    assert _frames(err.__traceback__)[-1] == "f"


def test_exception_passes_through_with(guard):
    err = Boom()
    with pytest.raises(Boom) as info:
        with guard:
            raise err
    assert info.value is err
    assert _frames(err.__traceback__)[-1] == "test_exception_passes_through_with"


def test_exception_passes_through_async_with(guard):
    err = Boom()

    async def main():
        async with guard:
            raise err

    with pytest.raises(Boom) as info:
        asyncio.run(main())
    assert info.value is err


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_base_exceptions_pass_through(guard, exc_type):
    err = exc_type()

    @guard
    def f():
        raise err

    with pytest.raises(exc_type) as info:
        f()
    assert info.value is err


def test_tuple_call_entry(guard, clock):
    """``type(f).__call__(f, ...)`` (the tp_call entry C callers use): same results."""
    err = Boom()

    @guard
    def f(x, *, y=0):
        if x is None:
            raise err
        return x + y

    assert type(f).__call__(f, 1, y=2) == 3
    with pytest.raises(Boom) as info:
        type(f).__call__(f, None)
    assert info.value is err


def test_decorated_exception_with_manual_clock(twin):
    """A custom (Python) clock read after the guarded function raised: the exception must
    still pass through (not a SystemError from calling the clock with an error set)."""
    clock = ManualClock(5.0)
    b = CircuitBreaker(clock=clock, consecutive_failures=2)
    err = Boom()

    @b
    def f():
        clock.advance(1.0)
        raise err

    for _ in range(2):
        with pytest.raises(Boom) as info:
            f()
        assert info.value is err
    assert b.state == "open"


def test_nested_guarded_calls_with_manual_clock(twin, clock):
    """An inner guard's rejection crossing an outer decorated guard."""
    outer = CircuitBreaker(clock=clock, consecutive_failures=1)
    inner = open_breaker(clock)

    @outer
    @inner
    def f():
        return 1

    with pytest.raises(CircuitOpenError) as info:
        f()
    assert info.value.name == inner.name
    assert outer.state == "closed"


# -- with / async with -------------------------------------------------------------------------
def test_with_returns_the_guard_and_releases(twin, clock):
    b = Bulkhead(1, clock=clock)
    with b as entered:
        assert entered is b
        assert b.in_flight == 1
    assert b.in_flight == 0


def test_exit_without_enter_is_an_error(twin, clock):
    b = Bulkhead(1, clock=clock)
    with pytest.raises(RuntimeError):
        b.__exit__(None, None, None)


def test_nested_with_same_guard(twin, clock):
    b = Bulkhead(3, clock=clock)
    with b:
        with b:
            assert b.in_flight == 2
        assert b.in_flight == 1
    assert b.in_flight == 0


def test_with_in_threads_keeps_each_threads_permit(twin, clock):
    b = Bulkhead(8, clock=clock)
    errors = []

    def worker():
        try:
            for _ in range(200):
                with b:
                    assert 1 <= b.in_flight <= 4
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert b.in_flight == 0


def test_with_exit_order_independent_across_contexts(twin, clock):
    b = Bulkhead(2, clock=clock)
    c1, c2 = contextvars.copy_context(), contextvars.copy_context()
    c1.run(b.__enter__)
    c2.run(b.__enter__)
    c1.run(b.__exit__, None, None, None)
    assert b.in_flight == 1
    c2.run(b.__exit__, None, None, None)
    assert b.in_flight == 0


def test_async_with_cancelled_releases(twin, clock):
    b = Bulkhead(1, clock=clock)

    async def main():
        async def hold():
            async with b:
                await asyncio.Event().wait()

        task = asyncio.create_task(hold())
        await asyncio.sleep(0)
        assert b.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert b.in_flight == 0

    asyncio.run(main())


def test_rejection_in_with_raises(twin, clock):
    b = open_breaker(clock)
    ran = []
    with pytest.raises(CircuitOpenError) as info:
        with b:
            ran.append(1)
    assert ran == []
    assert info.value.name == b.name


# -- fallbacks ----------------------------------------------------------------------------------
def test_fallback_gets_the_arguments(twin, clock):
    b = open_breaker(clock)
    calls = []

    @b(fallback=lambda *a, **k: calls.append((a, k)) or "fb")
    def f(x, *, y):
        raise AssertionError("must not run")

    assert f(1, y=2) == "fb"
    assert calls == [((1,), {"y": 2})]


def test_guard_fallback_wins_over_decorator_fallback(twin, clock):
    b = open_breaker(clock, fallback=lambda: "guard's")

    @b(fallback=lambda: "decorator's")
    def f():
        raise AssertionError

    assert f() == "guard's"


def test_async_fallbacks_sync_and_async(twin, clock):
    b = open_breaker(clock)

    async def async_fb(x):
        await asyncio.sleep(0)
        return ("async", x)

    @b(fallback=async_fb)
    async def f(x):
        raise AssertionError

    @b(fallback=lambda x: ("sync", x))
    async def g(x):
        raise AssertionError

    assert asyncio.run(f(1)) == ("async", 1)
    assert asyncio.run(g(2)) == ("sync", 2)


def test_fallback_exception_propagates(twin, clock):
    err = Boom()

    def fb():
        raise err

    b = open_breaker(clock, fallback=fb)

    @b
    def f():
        raise AssertionError

    with pytest.raises(Boom) as info:
        f()
    assert info.value is err


def test_rejection_carries_retry_after_and_name(twin, clock):
    b = CircuitBreaker("payments", clock=clock, consecutive_failures=1, open_duration=4.0)

    @b
    def f():
        raise Boom()

    with pytest.raises(Boom):
        f()
    clock.advance(1.5)
    with pytest.raises(CircuitOpenError) as info:
        f()
    assert isinstance(info.value, RejectedError)
    assert info.value.retry_after == 2.5
    assert info.value.name == "payments"
    assert "payments" in str(info.value)


# -- pipeline -----------------------------------------------------------------------------------
def test_pipeline_enters_outermost_first_and_exits_innermost_first(twin, clock):
    b1 = Bulkhead(1, clock=clock, name="outer")
    b2 = Bulkhead(1, clock=clock, name="inner")
    p = pipeline(b1, b2)
    seen = []

    @p
    def f():
        seen.append((b1.in_flight, b2.in_flight))
        return "ok"

    assert f() == "ok"
    assert seen == [(1, 1)]
    assert (b1.in_flight, b2.in_flight) == (0, 0)
    assert p.guards == (b1, b2)
    with b2:                             # inner full: outer is entered, then given back
        with pytest.raises(BulkheadFullError) as info:
            with p:
                pass
        assert info.value.name == "inner"
        assert b1.in_flight == 0
    with b1:                             # outer full: inner never entered
        with pytest.raises(BulkheadFullError) as info:
            f()
        assert info.value.name == "outer"
        assert b2.in_flight == 0


def test_decorated_pipeline_inner_rejection_releases_outer_once(twin, clock):
    """A rejection by an inner guard gives the outer guards' permits back exactly once
    (a double release drives a bulkhead's in_flight negative, and it then admits more
    than its bound)."""
    outer = Bulkhead(2, clock=clock, name="outer")
    inner = open_breaker(clock)

    @pipeline(outer, inner)
    def f():
        raise AssertionError("must not run")

    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            f()
        assert outer.in_flight == 0


def test_decorated_pipeline_inner_rejection_releases_outer_once_tuple_call(twin, clock):
    """The same through the tp_call entry (``type(f).__call__(f, ...)``, as C code calling
    ``PyObject_Call`` reaches it), not the vectorcall one."""
    outer = Bulkhead(2, clock=clock, name="outer")
    inner = open_breaker(clock)

    @pipeline(outer, inner)
    def f(x):
        raise AssertionError("must not run")

    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            type(f).__call__(f, 1)
        assert outer.in_flight == 0


def test_decorated_async_pipeline_inner_rejection_releases_outer_once(twin, clock):
    outer = Bulkhead(2, clock=clock, name="outer")
    inner = open_breaker(clock)

    @pipeline(outer, inner)
    async def f():
        raise AssertionError("must not run")

    async def main():
        for _ in range(3):
            with pytest.raises(CircuitOpenError):
                await f()
            assert outer.in_flight == 0

    asyncio.run(main())


def test_decorated_pipeline_bound_holds_after_rejections(twin, clock):
    outer = Bulkhead(1, clock=clock, name="outer")
    inner = open_breaker(clock)
    p = pipeline(outer, inner)

    @p
    def f():
        return 1

    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            f()
    inner.reset()
    with outer:                          # the one slot is taken: the next call is refused
        with pytest.raises(BulkheadFullError):
            f()


def test_pipeline_fallback(twin, clock):
    inner = open_breaker(clock)
    outer = Bulkhead(1, clock=clock)
    p = pipeline(outer, inner, fallback=lambda x: ("pipeline", x))

    @p
    def f(x):
        raise AssertionError

    @p
    async def g(x):
        raise AssertionError

    assert f(1) == ("pipeline", 1)
    assert outer.in_flight == 0
    assert asyncio.run(g(2)) == ("pipeline", 2)
    assert outer.in_flight == 0

    @p(fallback=lambda x: ("decorator", x))
    def h(x):
        raise AssertionError

    assert h(3) == ("decorator", 3)


def test_pipeline_exception_reaches_every_guard(twin, clock):
    b1 = CircuitBreaker(clock=clock, consecutive_failures=1, name="b1")
    b2 = CircuitBreaker(clock=clock, consecutive_failures=1, name="b2")
    err = Boom()

    @pipeline(b1, b2)
    def f():
        raise err

    with pytest.raises(Boom) as info:
        f()
    assert info.value is err
    assert (b1.state, b2.state) == ("open", "open")


def test_pipeline_async_with_and_cancellation(twin, clock):
    b1 = Bulkhead(1, clock=clock)
    br = CircuitBreaker(clock=clock, consecutive_failures=1, open_duration=1.0)
    br.record_failure()
    clock.advance(1.0)
    p = pipeline(b1, br)

    async def main():
        async def hold():
            async with p:
                await asyncio.Event().wait()

        task = asyncio.create_task(hold())
        await asyncio.sleep(0)
        assert b1.in_flight == 1 and br.state == "half_open"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert b1.in_flight == 0
        async with p:                    # the probe slot came back
            pass
        assert br.state == "closed"

    asyncio.run(main())


def test_only_lag_tolerant_kernels_take_the_coarse_clock(twin):
    """Compiled wrappers read CLOCK_MONOTONIC_COARSE (up to a tick behind) only for kernels
    that declare precise=False; limiters must see exact time or they could admit up to
    rate x tick more than capacity + rate x elapsed."""
    import gameguard as gg

    exact = [gg.TokenBucket(10), gg.LeakyBucket(10, 2), gg.HybridLimiter().burst,
             gg.HybridLimiter().steady, gg.KeyedLimiter(5).bind("player-1"),
             gg.CircuitBreaker(slow_call_duration=0.5)]
    lag_tolerant = [gg.CircuitBreaker(), gg.AdaptiveThrottle(), gg.Bulkhead(3)]
    for guard in exact:
        assert guard._kernel.precise, guard
    for guard in lag_tolerant:
        assert not guard._kernel.precise, guard
