"""CircuitBreaker: exact timing with ManualClock (the documented rules), outcome classification,
manual states, listeners, snapshot; and the breaker kernel's twins in lockstep."""
from __future__ import annotations

import asyncio
import contextvars
import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import both_twins
from gameguard import (Bulkhead, CircuitBreaker, CircuitOpenError, ManualClock,
                       RejectedError, pipeline)


class Boom(Exception):
    pass


class Harmless(Boom):
    """Matches ``record`` (it is a Boom) but is ignored: ignore wins."""


class Other(Exception):
    pass


def run(b, clock, exc=None, duration=0.0):
    """One call through ``with b:`` lasting ``duration`` (ManualClock time), ending in ``exc``."""
    with b:
        clock.advance(duration)
        if exc is not None:
            raise exc
    return "ok"


def ok(b, clock, duration=0.0):
    return run(b, clock, None, duration)


def fail(b, clock, duration=0.0, exc=None):
    with pytest.raises(Boom):
        run(b, clock, exc if exc is not None else Boom(), duration)


def rejected(b, clock):
    with pytest.raises(CircuitOpenError) as info:
        run(b, clock)
    assert info.value.name == b.name
    return info.value


@pytest.fixture
def clock():
    return ManualClock(100.0)


def breaker(clock, **kw):
    kw.setdefault("name", "dep")
    return CircuitBreaker(clock=clock, **kw)


# -- opening -------------------------------------------------------------------------------
def test_failure_rate_opens_at_threshold_not_before(twin, clock):
    b = breaker(clock, failure_rate=0.5, minimum_calls=4)
    ok(b, clock)
    fail(b, clock)
    ok(b, clock)
    assert b.state == "closed"          # 3 calls < minimum_calls
    fail(b, clock)                       # 4 calls, 2 failures: 0.5 >= 0.5
    assert b.state == "open"
    rejected(b, clock)


def test_below_failure_rate_stays_closed(twin, clock):
    b = breaker(clock, failure_rate=0.5, minimum_calls=4)
    for _ in range(100):
        ok(b, clock)
        ok(b, clock)
        fail(b, clock)                   # 1/3 < 0.5
    assert b.state == "closed"
    assert b.snapshot()["calls"] == 300


def test_minimum_calls_reached_by_a_success(twin, clock):
    b = breaker(clock, failure_rate=0.5, minimum_calls=4)
    for _ in range(3):
        fail(b, clock)
    assert b.state == "closed"
    ok(b, clock)                         # 4 calls, 3 failures
    assert b.state == "open"


def test_consecutive_failures(twin, clock):
    b = breaker(clock, consecutive_failures=3, minimum_calls=1000)
    fail(b, clock)
    fail(b, clock)
    ok(b, clock)                         # breaks the run
    fail(b, clock)
    fail(b, clock)
    assert b.state == "closed"
    assert b.snapshot()["consecutive_failures"] == 2
    fail(b, clock)
    assert b.state == "open"


def test_failure_count(twin, clock):
    b = breaker(clock, failure_count=3, minimum_calls=1000, window=10.0, buckets=10)
    for _ in range(10):
        ok(b, clock)
    fail(b, clock)
    fail(b, clock)
    assert b.state == "closed"
    fail(b, clock)
    assert b.state == "open"


def test_window_expiry_forgets_old_failures(twin, clock):
    clock = ManualClock(0.0)
    b = breaker(clock, failure_count=2, minimum_calls=1000, window=10.0, buckets=10)
    clock.advance(3.5)
    fail(b, clock)                       # bucket [3, 4)
    clock.advance(9.5)                   # now 13.0: bucket 3 just fell out
    fail(b, clock)
    assert b.state == "closed"
    assert b.snapshot()["failures"] == 1
    clock.advance(9.999)                 # 22.999: the failure at 13.0 is still in the window
    fail(b, clock)
    assert b.state == "open"


def test_window_keeps_failures_until_the_bucket_boundary(twin):
    clock = ManualClock(0.0)
    b = breaker(clock, failure_count=2, minimum_calls=1000, window=4.0, buckets=4)
    clock.advance(1.0)
    fail(b, clock)                       # bucket [1, 2)
    clock.advance(3.999)                 # 4.999: bucket 1 still inside [1, 5)
    fail(b, clock)
    assert b.state == "open"


def test_slow_call_rate(twin, clock):
    b = breaker(clock, slow_call_duration=1.0, slow_call_rate=0.5, minimum_calls=4)
    ok(b, clock, 0.875)
    ok(b, clock, 1.0)                    # slow: duration >= slow_call_duration
    ok(b, clock, 0.5)
    assert b.state == "closed"
    assert b.snapshot()["slow_calls"] == 1
    with pytest.raises(Other):           # an unrecorded exception is a success, but slow
        run(b, clock, Other(), 2.0)
    assert b.state == "open"


def test_slow_calls_not_tracked_without_slow_call_duration(twin, clock):
    b = breaker(clock, minimum_calls=2, slow_call_rate=0.5)
    for _ in range(5):
        ok(b, clock, 1000.0)
    assert b.state == "closed"
    assert b.snapshot()["slow_calls"] == 0


def test_unrecorded_exception_is_a_success(twin, clock):
    b = breaker(clock, record=Boom, minimum_calls=2, consecutive_failures=2)
    for _ in range(10):
        with pytest.raises(Other):
            run(b, clock, Other())
    assert b.state == "closed"
    snap = b.snapshot()
    assert (snap["calls"], snap["failures"]) == (10, 0)


def test_ignored_exceptions_count_as_nothing(twin, clock):
    b = breaker(clock, record=Boom, ignore=Harmless, minimum_calls=1, failure_rate=0.1)
    for _ in range(10):
        with pytest.raises(Harmless):
            run(b, clock, Harmless())
    assert b.state == "closed"
    assert b.snapshot()["calls"] == 0


def test_record_and_ignore_predicates(twin, clock):
    b = breaker(clock, record=lambda e: getattr(e, "code", 0) >= 500,
                ignore=lambda e: getattr(e, "code", 0) == 599, minimum_calls=1, failure_rate=1.0)
    e404, e599, e503 = Boom(), Boom(), Boom()
    e404.code, e599.code, e503.code = 404, 599, 503
    fail(b, clock, exc=e404)
    fail(b, clock, exc=e599)
    assert b.state == "closed"
    assert b.snapshot()["calls"] == 1    # 404: success; 599: nothing
    fail(b, clock, exc=e503)
    snap = b.snapshot()
    assert (snap["state"], snap["calls"], snap["failures"]) == ("closed", 2, 1)


def test_record_predicate_trips(twin, clock):
    b = breaker(clock, record=lambda e: isinstance(e, Boom), consecutive_failures=2)
    fail(b, clock)
    fail(b, clock)
    assert b.state == "open"


def test_broken_predicate_is_logged_and_the_exception_passes(twin, clock, caplog):
    def bad(e):
        raise RuntimeError("predicate bug")
    b = breaker(clock, record=bad, consecutive_failures=1)
    err = Boom()
    with caplog.at_level(logging.ERROR, logger="gameguard"):
        with pytest.raises(Boom) as info:
            run(b, clock, err)
    assert info.value is err
    assert b.state == "closed"           # no match: a success
    assert "predicate" in caplog.text


def test_rejection_from_inner_guard_counts_as_nothing(twin, clock):
    outer = breaker(clock, consecutive_failures=1, minimum_calls=1)
    inner = Bulkhead(1, clock=clock)

    @outer
    @inner
    def handler():
        return "ran"

    with inner:                          # the bulkhead is full
        for _ in range(5):
            with pytest.raises(RejectedError):
                handler()
    assert outer.state == "closed"
    assert outer.snapshot()["calls"] == 0
    assert handler() == "ran"
    assert outer.snapshot()["calls"] == 1


def test_rejection_inside_pipeline_counts_as_nothing(twin, clock):
    outer = breaker(clock, consecutive_failures=1)
    inner = Bulkhead(1, clock=clock)
    p = pipeline(outer, inner)
    with inner:
        with pytest.raises(RejectedError):
            with p:
                pass
    assert outer.state == "closed"
    assert outer.snapshot()["calls"] == 0


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, asyncio.CancelledError, SystemExit,
                                      GeneratorExit])
def test_base_exception_counts_nothing(twin, clock, exc_type):
    b = breaker(clock, consecutive_failures=1)
    with pytest.raises(exc_type):
        run(b, clock, exc_type())
    assert b.state == "closed"
    assert b.snapshot()["calls"] == 0


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, asyncio.CancelledError])
def test_base_exception_releases_the_probe_slot(twin, clock, exc_type):
    b = breaker(clock, consecutive_failures=1, open_duration=2.0)
    fail(b, clock)
    clock.advance(2.0)
    with pytest.raises(exc_type):
        run(b, clock, exc_type())
    assert b.state == "half_open"        # nothing counted
    ok(b, clock)                         # the slot came back: another probe goes through
    assert b.state == "closed"


# -- open → half-open → closed ------------------------------------------------------------------
def open_breaker(clock, **kw):
    kw.setdefault("consecutive_failures", 1)
    b = breaker(clock, **kw)
    fail(b, clock)
    assert b.state == "open"
    return b


def test_half_open_exactly_at_open_duration(twin, clock):
    b = open_breaker(clock, open_duration=5.0)
    clock.advance(4.999)
    assert b.state == "open"
    err = rejected(b, clock)
    assert err.retry_after == pytest.approx(0.001)
    clock.advance(0.001)                 # exactly open_duration since it opened
    assert b.state == "half_open"


@pytest.mark.parametrize("start,duration", [(0.7, 0.1), (0.1, 0.2), (1e9 + 0.3, 0.7),
                                            (3.3, 5.0)])
def test_half_open_after_advancing_exactly_open_duration(twin, start, duration):
    """Decimal clock values: advance(open_duration) reaches the deadline even where
    ``now - opened_at`` rounds below ``open_duration`` (0.7 + 0.1 - 0.7 < 0.1)."""
    clock = ManualClock(start)
    b = open_breaker(clock, open_duration=duration)
    clock.advance(duration)
    assert b.state == "half_open"


def test_retry_after_is_the_remaining_open_time(twin, clock):
    b = open_breaker(clock, open_duration=8.0)
    assert rejected(b, clock).retry_after == 8.0
    assert b.snapshot()["retry_after"] == 8.0
    clock.advance(2.5)
    assert rejected(b, clock).retry_after == 5.5
    assert b.snapshot()["retry_after"] == 5.5
    clock.advance(5.25)
    assert rejected(b, clock).retry_after == 0.25


@settings(max_examples=60, deadline=None)
@given(start=st.floats(0.0, 1e6), duration=st.floats(1e-3, 100.0),
       waits=st.lists(st.floats(0.0, 50.0), max_size=6))
def test_rejected_means_retry_after_positive(impl, start, duration, waits):
    """Whenever a call is rejected as open, retry_after > 0; when retry_after would be 0, the
    breaker lets a probe through."""
    from gameguard import _impl
    with _impl.use(impl):
        clock = ManualClock(start)
        b = open_breaker(clock, open_duration=duration)
    for w in waits:
        clock.advance(w)
        try:
            with b:
                pass
        except CircuitOpenError as e:
            assert e.retry_after > 0
        else:
            break


def test_probe_success_closes_with_fresh_window(twin, clock):
    b = breaker(clock, failure_count=3, minimum_calls=1000, open_duration=1.0)
    for _ in range(3):
        fail(b, clock)
    assert b.state == "open"
    clock.advance(1.0)
    ok(b, clock)
    assert b.state == "closed"
    snap = b.snapshot()
    assert (snap["calls"], snap["failures"]) == (0, 0)   # fresh window
    fail(b, clock)
    fail(b, clock)
    assert b.state == "closed"          # old failures do not count any more


def test_probe_failure_reopens_for_a_new_open_duration(twin, clock):
    b = open_breaker(clock, open_duration=3.0)
    clock.advance(3.0)
    fail(b, clock, 0.5)
    assert b.state == "open"
    assert rejected(b, clock).retry_after == 3.0
    clock.advance(2.999)
    assert b.state == "open"
    clock.advance(0.001)
    assert b.state == "half_open"


def test_slow_probe_reopens(twin, clock):
    b = open_breaker(clock, open_duration=3.0, slow_call_duration=1.0)
    clock.advance(3.0)
    ok(b, clock, 1.0)
    assert b.state == "open"
    clock.advance(3.0)
    ok(b, clock, 0.5)
    assert b.state == "closed"


def test_half_open_calls_limit_probes(twin, clock):
    b = open_breaker(clock, open_duration=2.0, half_open_calls=3)
    clock.advance(2.0)
    ctxs = [contextvars.copy_context() for _ in range(3)]
    for ctx in ctxs:
        ctx.run(b.__enter__)
    assert b.state == "half_open"
    err = rejected(b, clock)             # all three slots taken
    assert err.retry_after == 2.0        # the first probe loses its slot in 2 s
    clock.advance(0.5)
    ctxs[0].run(b.__exit__, None, None, None)
    ctxs[1].run(b.__exit__, None, None, None)
    assert b.state == "half_open"        # 2 of 3 succeeded
    rejected(b, clock)                   # done probes keep their slots
    ctxs[2].run(b.__exit__, None, None, None)
    assert b.state == "closed"


def test_one_failed_probe_of_several_reopens(twin, clock):
    b = open_breaker(clock, open_duration=2.0, half_open_calls=2)
    clock.advance(2.0)
    c1, c2 = contextvars.copy_context(), contextvars.copy_context()
    c1.run(b.__enter__)
    c2.run(b.__enter__)
    c1.run(b.__exit__, None, None, None)
    c2.run(b.__exit__, Boom, Boom(), None)
    assert b.state == "open"


def test_stuck_probe_loses_its_slot_and_late_outcome_counts_nothing(twin, clock):
    b = open_breaker(clock, open_duration=2.0)
    clock.advance(2.0)
    stuck = contextvars.copy_context()
    stuck.run(b.__enter__)
    clock.advance(1.999)
    assert rejected(b, clock).retry_after == pytest.approx(0.001)
    clock.advance(0.001)                 # the probe has been in flight open_duration
    second = contextvars.copy_context()
    second.run(b.__enter__)              # takes the slot
    stuck.run(b.__exit__, Boom, Boom(), None)   # late failure: nothing
    assert b.state == "half_open"
    second.run(b.__exit__, None, None, None)
    assert b.state == "closed"


def test_late_probe_outcome_counts_nothing_even_if_no_one_took_the_slot(twin, clock):
    b = open_breaker(clock, open_duration=2.0)
    clock.advance(2.0)
    with pytest.raises(Boom):
        run(b, clock, Boom(), 2.0)      # failed, but after open_duration in flight
    assert b.state == "half_open"
    ok(b, clock, 2.0)                    # a late success does not close it either
    assert b.state == "half_open"
    ok(b, clock, 1.999)
    assert b.state == "closed"


def test_closed_call_finishing_after_open_counts_nothing(twin, clock):
    b = breaker(clock, consecutive_failures=2, open_duration=1.0)
    early = contextvars.copy_context()
    early.run(b.__enter__)
    fail(b, clock)
    fail(b, clock)
    assert b.state == "open"
    clock.advance(1.0)
    ok(b, clock)                         # probe closes it
    assert b.state == "closed"
    early.run(b.__exit__, Boom, Boom(), None)   # from the previous closed epoch
    assert b.snapshot()["calls"] == 0
    assert b.snapshot()["consecutive_failures"] == 0


# -- manual states ------------------------------------------------------------------------------
def test_force_open_disable_reset(twin, clock):
    b = breaker(clock, consecutive_failures=1)
    b.force_open()
    assert b.state == "forced_open"
    err = rejected(b, clock)
    assert err.retry_after is None
    clock.advance(1e6)
    assert b.state == "forced_open"
    assert b.snapshot()["retry_after"] is None
    b.disable()
    assert b.state == "disabled"
    for _ in range(10):
        fail(b, clock)
    assert b.state == "disabled"
    assert b.snapshot()["calls"] == 0
    b.reset()
    assert b.state == "closed"
    fail(b, clock)
    assert b.state == "open"
    b.reset()
    assert b.state == "closed"
    ok(b, clock)


def test_reset_gives_a_fresh_window(twin, clock):
    b = breaker(clock, failure_count=2, minimum_calls=1000)
    fail(b, clock)
    b.reset()
    fail(b, clock)
    assert b.state == "closed"


def test_manual_allow_and_record(twin, clock):
    b = breaker(clock, consecutive_failures=2, open_duration=1.0)
    assert b.allow()
    b.record_failure()
    assert b.allow()
    b.record_failure(duration=0.5)
    assert b.state == "open"
    assert not b.allow()
    clock.advance(1.0)
    assert b.allow()
    assert not b.allow()                 # one probe at a time
    b.record_success()
    assert b.state == "closed"


def run_in_thread(fn):
    import threading
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def test_outcome_reported_from_another_thread_uses_the_permit(twin, clock):
    """allow() on one thread, record_*() on a completion thread: the half-open probe's
    outcome counts and its slot is not left busy for open_duration."""
    b = open_breaker(clock, open_duration=2.0)
    clock.advance(2.0)
    assert b.allow()                     # the probe, on this thread
    run_in_thread(b.record_success)      # reported elsewhere
    assert b.state == "closed"
    for _ in range(1000):                # closed: permits do not pile up either
        assert b.allow()
        run_in_thread(b.record_success) if _ == 0 else b.record_success()
    assert b._probes == []
    assert b.snapshot()["calls"] == 1000


def test_record_without_allow_counts(twin, clock):
    b = breaker(clock, consecutive_failures=2)
    b.record_failure()
    b.record_failure()
    assert b.state == "open"


# -- listeners -------------------------------------------------------------------------------
def test_listeners_order_and_arguments(twin, clock):
    b = breaker(clock, consecutive_failures=1, open_duration=1.0)
    seen = []
    b.on_state_change(lambda br, old, new: seen.append(("first", br, old, new)))

    @b.on_state_change
    def second(br, old, new):
        seen.append(("second", br, old, new))
        assert br.state == new           # called after the change

    fail(b, clock)
    clock.advance(1.0)
    ok(b, clock)
    b.force_open()
    b.disable()
    b.reset()
    b.reset()                            # already closed: no event
    transitions = [("closed", "open"), ("open", "half_open"), ("half_open", "closed"),
                   ("closed", "forced_open"), ("forced_open", "disabled"),
                   ("disabled", "closed")]
    assert seen == [(who, b, old, new) for old, new in transitions
                    for who in ("first", "second")]


def test_reset_of_due_open_breaker_reports_half_open_first(twin, clock):
    b = open_breaker(clock, open_duration=1.0)
    seen = []
    b.on_state_change(lambda br, old, new: seen.append((old, new)))
    clock.advance(5.0)
    b.reset()
    assert seen == [("open", "half_open"), ("half_open", "closed")]


def test_listener_that_changes_state_keeps_the_order(twin, clock):
    """A listener reacting to a change by making another (here: forcing open on close):
    every listener still sees the changes in the order they happened."""
    b = open_breaker(clock, open_duration=1.0)
    seen = []

    @b.on_state_change
    def pin_open(br, old, new):
        if new == "closed":
            br.force_open()

    b.on_state_change(lambda br, old, new: seen.append((old, new)))
    clock.advance(1.0)
    ok(b, clock)
    assert b.state == "forced_open"
    assert seen == [("open", "half_open"), ("half_open", "closed"), ("closed", "forced_open")]


def test_listeners_see_a_consistent_chain_under_threads(twin, clock):
    """Transitions made by several threads reach a listener one at a time, in order: each
    event starts where the previous one ended."""
    import threading
    b = breaker(clock)
    seen = []
    b.on_state_change(lambda br, old, new: seen.append((old, new)))

    def worker(i):
        for _ in range(300):
            (b.force_open if i % 2 else b.disable)()
            b.reset()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen and seen[0][0] == "closed"
    for (_, prev_new), (old, _) in zip(seen, seen[1:]):
        assert old == prev_new
    assert seen[-1][1] == b.state == "closed"


def test_raising_listener_is_logged_and_does_not_break_the_call(twin, clock, caplog):
    b = breaker(clock, consecutive_failures=1)
    after = []

    def bad(br, old, new):
        raise RuntimeError("listener bug")

    b.on_state_change(bad)
    b.on_state_change(lambda br, old, new: after.append((old, new)))
    err = Boom()
    with caplog.at_level(logging.ERROR, logger="gameguard"):
        with pytest.raises(Boom) as info:
            run(b, clock, err)
    assert info.value is err             # the caller's exception, not the listener's
    assert b.state == "open"
    assert after == [("closed", "open")]
    assert "listener" in caplog.text and "RuntimeError" in caplog.text


def test_listener_on_a_successful_call(twin, clock):
    b = open_breaker(clock, open_duration=1.0)
    b.on_state_change(lambda br, old, new: 1 / 0)
    clock.advance(1.0)
    assert ok(b, clock) == "ok"
    assert b.state == "closed"


# -- snapshot ---------------------------------------------------------------------------------
def test_snapshot(twin, clock):
    b = breaker(clock, slow_call_duration=2.0, minimum_calls=100, open_duration=4.0)
    ok(b, clock, 1.0)
    ok(b, clock, 3.0)
    fail(b, clock, 2.0)
    ok(b, clock, 2.0)
    snap = b.snapshot()
    assert snap["name"] == "dep"
    assert snap["state"] == "closed"
    assert (snap["calls"], snap["failures"], snap["slow_calls"]) == (4, 1, 3)
    assert snap["failure_rate"] == 0.25
    assert snap["slow_call_rate"] == 0.75
    assert snap["mean_duration"] == 2.0
    assert snap["consecutive_failures"] == 0
    assert snap["retry_after"] is None
    assert snap["config"]["open_duration"] == 4.0
    assert snap["config"]["slow_call_duration"] == 2.0
    b.force_open()
    assert b.snapshot()["state"] == "forced_open"


def test_snapshot_empty(twin, clock):
    snap = breaker(clock).snapshot()
    assert snap["calls"] == 0 and snap["failure_rate"] == 0.0 and snap["mean_duration"] == 0.0


def test_default_name_and_repr(twin):
    b = CircuitBreaker()
    assert b.name == "breaker" or b.name.startswith("breaker-")
    n = 1 if b.name == "breaker" else int(b.name.rsplit("-", 1)[1])
    assert CircuitBreaker().name == f"breaker-{n + 1}"  # stable, by order of creation
    assert b.name in repr(b)
    assert b.state == "closed"


# -- the kernel twins in lockstep -----------------------------------------------------------------
kernel_params = st.fixed_dictionaries({
    "failure_rate": st.sampled_from([0.1, 0.25, 0.5, 1.0 / 3.0, 1.0]),
    "slow_call_rate": st.sampled_from([0.3, 0.5, 1.0]),
    "slow_call_duration": st.sampled_from([math.inf, 0.1, 0.5, 1.0]),
    "minimum_calls": st.integers(1, 6),
    "window": st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    "buckets": st.integers(1, 10),
    "consecutive_failures": st.integers(0, 4),
    "failure_count": st.integers(0, 5),
    "open_duration": st.sampled_from([0.1, 0.3, 0.7, 1.0, 2.5]),
    "half_open_calls": st.integers(1, 3),
})
BAD_NOW = [math.nan, math.inf, -math.inf, 2.0 ** 52, -(2.0 ** 52), 1e300]
thresholds = st.tuples(                       # what configure() may change, in its order
    st.sampled_from([0.1, 0.5, 1.0 / 3.0, 1.0]), st.sampled_from([0.3, 1.0]),
    st.integers(1, 6), st.integers(0, 3), st.integers(0, 4),
    st.sampled_from([0.1, 0.7, 2.5]), st.integers(1, 3))
kernel_ops = st.lists(st.tuples(
    st.sampled_from(["enter", "enter", "exit", "exit", "advance", "retry_after", "poll",
                     "force", "totals", "configure", "bad_enter", "bad_exit", "bad_query"]),
    st.one_of(st.floats(0.0, 1.5), st.integers(0, 30).map(lambda i: i / 10)),
    st.integers(0, 50),                       # which in-flight token
    st.sampled_from([0, 0, 1, 1, 2]),         # outcome
    st.floats(0.0, 2.0),                      # duration
    st.sampled_from([0, 1, 3, 4]),            # forced state
    thresholds, st.sampled_from(BAD_NOW)), max_size=120)

ORDER = ("failure_rate", "slow_call_rate", "slow_call_duration", "minimum_calls", "window",
         "buckets", "consecutive_failures", "failure_count", "open_duration", "half_open_calls")


def breaker_state(k, now):
    return (k.state, k.generation, k.consecutive, k.transitions, list(k.log), k.tickets,
            k.probes_done, k.half_open_calls, list(k.probe_owner), list(k.probe_until),
            k.opened_at, k.open_until, k.pending, k.precise, k.totals(now), k.retry_after(now))


def outcome_of(fn, *args):
    try:
        return ("ok", fn(*args))
    except ValueError as exc:
        return ("ValueError", str(exc))


@settings(max_examples=300, deadline=None)
@given(params=kernel_params, start=st.floats(0.0, 1e5), ops=kernel_ops)
def test_kernel_twins_identical(params, start, ops):
    """Both twins decide alike, live changes (configure) and unusable clock readings
    included: enter and the queries raise the same ValueError, exit records nothing."""
    fast_mod, pure_mod = both_twins("breaker")
    args = [params[k] for k in ORDER]
    fast, pure = fast_mod.BreakerKernel(*args), pure_mod.BreakerKernel(*args)
    now = start
    tokens: list[int] = []
    for op, dt, which, outcome, duration, state, new, bad in ops:
        if op == "advance":
            now += dt
        elif op == "enter":
            tf, tp = fast.enter(now), pure.enter(now)
            assert tf == tp
            if tf >= 0:
                tokens.append(tf)
        elif op in ("exit", "bad_exit") and tokens:
            token = tokens.pop(which % len(tokens))
            at = bad if op == "bad_exit" else now
            fast.exit(token, at, duration, outcome)
            pure.exit(token, at, duration, outcome)
        elif op == "retry_after":
            assert fast.retry_after(now) == pure.retry_after(now)
        elif op == "poll":
            assert fast.poll(now) == pure.poll(now)
        elif op == "force":
            fast.force(state, now)
            pure.force(state, now)
        elif op == "configure":
            rate, slow_rate, minimum, consecutive, count, open_duration, half_open = new
            for k in (fast, pure):
                k.configure(rate, slow_rate, params["slow_call_duration"], minimum,
                            consecutive, count, open_duration, half_open, now)
        elif op == "bad_enter":
            assert outcome_of(fast.enter, bad) == outcome_of(pure.enter, bad)
            assert outcome_of(fast.enter, bad)[0] == "ValueError"
        elif op == "bad_query":
            for name in ("poll", "retry_after", "totals"):
                assert outcome_of(getattr(fast, name), bad) == \
                    outcome_of(getattr(pure, name), bad)
        assert breaker_state(fast, now) == breaker_state(pure, now)
        if fast.pending and which % 3 == 0:  # the public layer clears it when serviced
            fast.pending = pure.pending = 0
