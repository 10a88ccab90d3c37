"""Bad input: every constructor raises ConfigurationError (a ValueError) naming the
parameter and the value; nothing is silently accepted."""
from __future__ import annotations

import math

import pytest

from gameguard import (AdaptiveThrottle, Bulkhead, CircuitBreaker, ConfigurationError,
                       ManualClock, pipeline)

NAN, INF = math.nan, math.inf


def bad(factory, param, value, **kw):
    with pytest.raises(ConfigurationError) as info:
        factory(**{param: value}, **kw)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert param in msg, msg
    if not (isinstance(value, float) and math.isnan(value)):
        assert repr(value) in msg or str(value) in msg, msg
    return info.value


BREAKER_BAD = [
    ("failure_rate", 0), ("failure_rate", 0.0), ("failure_rate", -0.1), ("failure_rate", 1.5),
    ("failure_rate", NAN), ("failure_rate", INF), ("failure_rate", "0.5"),
    ("failure_rate", True), ("failure_rate", None),
    ("slow_call_rate", 0.0), ("slow_call_rate", 2), ("slow_call_rate", NAN),
    ("slow_call_duration", 0), ("slow_call_duration", -1.0), ("slow_call_duration", NAN),
    ("slow_call_duration", INF), ("slow_call_duration", "1s"),
    ("minimum_calls", 0), ("minimum_calls", -3), ("minimum_calls", 2.0),
    ("minimum_calls", True), ("minimum_calls", None),
    ("window", 0), ("window", -10.0), ("window", NAN), ("window", INF), ("window", "10"),
    ("buckets", 0), ("buckets", -1), ("buckets", 2.5), ("buckets", 1 << 30),
    ("consecutive_failures", 0), ("consecutive_failures", -1), ("consecutive_failures", 1.5),
    ("failure_count", 0), ("failure_count", 2.0),
    ("open_duration", 0), ("open_duration", -5.0), ("open_duration", NAN),
    ("open_duration", INF), ("open_duration", None),
    ("half_open_calls", 0), ("half_open_calls", 1.0), ("half_open_calls", 1 << 40),
    ("name", 42), ("name", b"bytes"),
    ("fallback", 42), ("fallback", "f"),
    ("clock", 42), ("clock", "monotonic"),
]


@pytest.mark.parametrize("param,value", BREAKER_BAD)
def test_breaker_rejects(twin, param, value):
    bad(CircuitBreaker, param, value)


def test_breaker_bucket_too_short(twin):
    with pytest.raises(ConfigurationError, match="buckets"):
        CircuitBreaker(window=1e-3, buckets=10_000)


@pytest.mark.parametrize("param,value", [("record", 42), ("record", "Exception"),
                                         ("record", (ValueError, 3)), ("record", int),
                                         ("ignore", 42), ("ignore", [KeyError, "x"]),
                                         ("ignore", object)])
def test_breaker_rejects_bad_exception_specs(twin, param, value):
    with pytest.raises(ConfigurationError) as info:
        CircuitBreaker(**{param: value})
    assert param in str(info.value)


def test_breaker_accepts_the_documented_forms(twin):
    CircuitBreaker("n", failure_rate=1, slow_call_rate=1.0, slow_call_duration=1,
                   minimum_calls=1, window=1, buckets=1, consecutive_failures=1,
                   failure_count=1, open_duration=0.001, half_open_calls=3,
                   record=(KeyError, ValueError), ignore=lambda e: False,
                   fallback=lambda: None, clock=ManualClock())
    CircuitBreaker(record=[KeyError], ignore=KeyError)


def test_breaker_positional_only_name(twin):
    with pytest.raises(TypeError):
        CircuitBreaker("n", 0.5)          # everything but the name is keyword-only


@pytest.mark.parametrize("clock", [lambda: "now", lambda: None, lambda: NAN, lambda x: 1.0,
                                   lambda: True])
def test_bad_clocks(twin, clock):
    with pytest.raises(ConfigurationError, match="clock"):
        CircuitBreaker(clock=clock)
    with pytest.raises(ConfigurationError, match="clock"):
        Bulkhead(1, clock=clock)
    with pytest.raises(ConfigurationError, match="clock"):
        AdaptiveThrottle(clock=clock)


def test_raising_clock(twin):
    def clock():
        raise OSError("no time")

    with pytest.raises(ConfigurationError, match="clock"):
        CircuitBreaker(clock=clock)


THROTTLE_BAD = [
    ("k", 0), ("k", -1.0), ("k", 0.5), ("k", NAN), ("k", INF), ("k", "2"),
    ("protection", -1), ("protection", NAN), ("protection", INF), ("protection", "5"),
    ("protection", True),
    ("window", 0), ("window", NAN), ("buckets", 0), ("buckets", 1.5),
    ("rng", 0.5), ("seed", 1.5), ("seed", "x"), ("seed", True),
    ("name", 1), ("fallback", 1), ("clock", 1),
]


@pytest.mark.parametrize("param,value", THROTTLE_BAD)
def test_throttle_rejects(twin, param, value):
    bad(AdaptiveThrottle, param, value)


def test_throttle_bad_record_spec(twin):
    with pytest.raises(ConfigurationError, match="record"):
        AdaptiveThrottle(record="nope")


BULKHEAD_BAD = [
    ("max_concurrent", 0), ("max_concurrent", -1), ("max_concurrent", 1.0),
    ("max_concurrent", True), ("max_concurrent", None), ("max_concurrent", "4"),
    ("max_wait", -0.1), ("max_wait", NAN), ("max_wait", INF), ("max_wait", "1"),
    ("name", 3), ("fallback", 3), ("clock", 3),
]


@pytest.mark.parametrize("param,value", BULKHEAD_BAD)
def test_bulkhead_rejects(twin, param, value):
    kw = {} if param == "max_concurrent" else {"max_concurrent": 2}
    bad(Bulkhead, param, value, **kw)


def test_bulkhead_max_concurrent_is_required(twin):
    with pytest.raises(TypeError):
        Bulkhead()


@pytest.mark.parametrize("start", [NAN, INF, -INF])
def test_manual_clock_rejects_non_finite_start(start):
    with pytest.raises(ConfigurationError, match="start"):
        ManualClock(start)


@pytest.mark.parametrize("start", ["abc", None, [1]])
def test_manual_clock_rejects_non_numbers(start):
    """A wrong type is a TypeError or a ConfigurationError naming ``start`` — never a bare
    conversion error that does not say which argument was wrong."""
    with pytest.raises((TypeError, ConfigurationError)) as info:
        ManualClock(start)
    assert "start" in str(info.value)


@pytest.mark.parametrize("seconds", [-1.0, -1e-9, NAN, INF])
def test_manual_clock_advance_rejects(seconds):
    c = ManualClock(1.0)
    with pytest.raises(ValueError, match="seconds"):
        c.advance(seconds)
    assert c() == 1.0


def test_manual_clock_basics():
    c = ManualClock()
    assert c() == 0.0
    assert c.advance(2.5) == 2.5
    c.sleep(0.5)
    c.sleep(-1.0)                         # a negative sleep is no sleep
    assert c() == 3.0
    assert "3.0" in repr(c)


# -- pipeline ------------------------------------------------------------------------------------
def test_pipeline_needs_guards(twin):
    with pytest.raises(ConfigurationError, match="at least one"):
        pipeline()


def test_pipeline_rejects_non_guards(twin):
    b = Bulkhead(1)
    for thing in (42, lambda f: f, "guard", None):
        with pytest.raises(ConfigurationError):
            pipeline(b, thing)


def test_pipeline_rejects_nested_pipeline_and_duplicates(twin):
    c = ManualClock()
    b1, b2 = Bulkhead(1, clock=c), Bulkhead(1, clock=c)
    with pytest.raises(ConfigurationError):
        pipeline(b1, pipeline(b2))
    with pytest.raises(ConfigurationError, match="twice"):
        pipeline(b1, b2, b1)


def test_pipeline_needs_one_clock(twin):
    with pytest.raises(ConfigurationError, match="clock"):
        pipeline(Bulkhead(1, clock=ManualClock()), Bulkhead(1, clock=ManualClock()))
    with pytest.raises(ConfigurationError, match="clock"):
        pipeline(Bulkhead(1), Bulkhead(1, clock=ManualClock()))
    pipeline(Bulkhead(1), CircuitBreaker())     # both on the default clock


def test_pipeline_too_long(twin):
    c = ManualClock()
    guards = [Bulkhead(1, clock=c) for _ in range(17)]
    with pytest.raises(ConfigurationError, match="16"):
        pipeline(*guards)
    pipeline(*guards[:16])


def test_pipeline_bad_fallback(twin):
    with pytest.raises(ConfigurationError, match="fallback"):
        pipeline(Bulkhead(1), fallback=42)


def test_decorator_bad_fallback(twin):
    b = Bulkhead(1)
    with pytest.raises(ConfigurationError, match="fallback"):
        b(fallback="x")


def test_on_state_change_needs_a_callable(twin):
    with pytest.raises(ConfigurationError, match="callback"):
        CircuitBreaker().on_state_change(42)
