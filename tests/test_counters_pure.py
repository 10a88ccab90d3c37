"""The shortcuts of the pure call protocol's per-call path (``_pure/call.py``), on both
twins: a call without keywords is made as ``func(*args)``, ``__exit__`` builds an exception
only when handed a bare type, ``finish`` surfaces a machinery error only when there is one,
and ``release`` walks the permits innermost first with a counter, not a range."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import pytest

import gameguard as gg

NAMES = ("successful", "failed", "ignored", "rejected", "fallbacks")


class Recorded(Exception):
    """A failure for the breakers below."""


class Unbuildable(Exception):
    def __init__(self, needed: str) -> None:
        super().__init__(needed)


def counters(guard: Any) -> Dict[str, int]:
    return dict(zip(NAMES, guard._kernel.counters()))


def shapes(clock: gg.ManualClock) -> List[Any]:
    """One guard (the inline one-guard path) and a pipeline (the general path)."""
    return [gg.CircuitBreaker(clock=clock, record=Recorded),
            gg.pipeline(gg.CircuitBreaker(clock=clock, record=Recorded),
                        gg.Bulkhead(2, clock=clock))]


@pytest.mark.parametrize("shape", [0, 1])
def test_positional_and_keyword_arguments_reach_the_function(twin: str, shape: int) -> None:
    guard = shapes(gg.ManualClock())[shape]
    seen: List[Tuple[Tuple[Any, ...], Dict[str, Any]]] = []

    def body(*args: Any, **kwargs: Any) -> int:
        seen.append((args, dict(kwargs)))
        kwargs["added"] = True  # the callee's own dict: the caller's must not see it
        return len(args) + len(kwargs)

    f = guard(body)

    mine = {"y": 2}
    assert f(1, 2) == 3
    assert f(1, **mine) == 3
    assert f() == 1
    assert mine == {"y": 2}
    assert seen == [((1, 2), {}), ((1,), {"y": 2}), ((), {})]
    first = guard._guards[0]
    assert counters(first)["successful"] == 3


def test_exit_given_only_a_type_counts_the_outcome_of_that_type(twin: str) -> None:
    breaker = gg.CircuitBreaker(clock=gg.ManualClock(), record=Recorded, minimum_calls=100)
    breaker.__enter__()
    assert breaker.__exit__(Recorded, None, None) is False  # built and classified: a failure
    breaker.__enter__()
    assert breaker.__exit__(Unbuildable, None, None) is False  # cannot be built: no outcome
    breaker.__enter__()
    assert breaker.__exit__(None, None, None) is False
    assert counters(breaker) == dict(zip(NAMES, (1, 1, 1, 0, 0)))


class Stop(BaseException):
    """Raised by a listener: a BaseException is not logged away, it reaches the protocol."""


def listening_breaker(clock: gg.ManualClock, stop_on: str, seen: List[str]) -> gg.CircuitBreaker:
    """A breaker opened by one failure and closed by one probe, whose listener raises
    ``Stop`` on the change to ``stop_on``."""
    breaker = gg.CircuitBreaker(clock=clock, consecutive_failures=1, record=Recorded,
                                open_duration=10.0, half_open_calls=1)

    @breaker.on_state_change
    def listener(b: Any, old: str, new: str) -> None:
        seen.append(new)
        if new == stop_on:
            raise Stop(f"{old} -> {new}")

    return breaker


def test_a_machinery_error_after_a_clean_block_is_raised_and_the_call_counted(twin: str) -> None:
    clock = gg.ManualClock()
    seen: List[str] = []
    breaker = listening_breaker(clock, "closed", seen)
    bulkhead = gg.Bulkhead(1, clock=clock)
    breaker.record_failure()
    clock.advance(10.0)
    with pytest.raises(Stop):
        with gg.pipeline(bulkhead, breaker):
            pass  # the probe succeeds: the breaker closes and its listener raises
    assert seen == ["open", "half_open", "closed"]
    assert breaker.state == "closed" and bulkhead.in_flight == 0
    assert counters(breaker)["successful"] == 1 and counters(bulkhead)["successful"] == 1


def test_the_callers_exception_wins_over_a_machinery_error(
        twin: str, caplog: pytest.LogCaptureFixture) -> None:
    clock = gg.ManualClock()
    seen: List[str] = []
    breaker = listening_breaker(clock, "open", seen)
    bulkhead = gg.Bulkhead(1, clock=clock)
    error: Optional[BaseException] = None
    with caplog.at_level(logging.ERROR, logger="gameguard"):
        try:
            with gg.pipeline(bulkhead, breaker):
                raise Recorded()  # trips the breaker: its listener raises on the way out
        except Recorded as e:
            error = e
    assert isinstance(error, Recorded)
    assert seen == ["open"] and breaker.state == "open"
    assert "raised while releasing permits" in caplog.text
    assert bulkhead.in_flight == 0
    assert counters(breaker)["failed"] == 1
    assert counters(bulkhead)["ignored"] == 1
