"""The public CircuitBreaker, on each twin, against a plain reference model of the documented rules.

Times are multiples of 1/8 s and bucket lengths dyadic, so every boundary comparison is
exact and the model can count with plain lists. Calls overlap: each in-flight call runs its
``with`` in its own ``contextvars.Context``, so calls finish in any order.
"""
from __future__ import annotations

import asyncio
import contextvars
import math
from dataclasses import dataclass, field
from typing import Optional

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, initialize,
                                 invariant, precondition, rule)

from gameguard import CircuitBreaker, CircuitOpenError, ManualClock, RejectedError, _impl


class Recorded(Exception):
    pass


class Ignored(Recorded):  # matches record too: ignore wins
    pass


class Answered(Exception):  # not in record: the dependency answered
    pass


class InnerRejection(RejectedError):
    pass


OUTCOMES = {
    "ok": None,
    "fail": Recorded,
    "answered": Answered,
    "ignored": Ignored,
    "inner_rejected": InnerRejection,
    "cancelled": asyncio.CancelledError,
    "interrupt": KeyboardInterrupt,
}
COUNTED = {"ok": False, "answered": False, "fail": True}  # others count as nothing


@dataclass
class Call:
    ctx: contextvars.Context
    kind: str            # "closed" (epoch-bound) or "probe"
    epoch: int
    start: float
    probe: Optional[int] = None


@dataclass
class Model:
    """The documented breaker rules, written out the long way."""
    cfg: dict
    state: str = "closed"
    epoch: int = 0                 # bumped by every transition and every reset
    events: list = field(default_factory=list)
    records: list = field(default_factory=list)   # (time, failure, slow)
    consecutive: int = 0
    open_until: float = 0.0
    probes: dict = field(default_factory=dict)    # probe id -> deadline (in flight)
    done: int = 0
    next_probe: int = 0

    def bucket(self, t: float) -> int:
        return math.floor(t / (self.cfg["window"] / self.cfg["buckets"]))

    def live(self, now: float) -> list:
        head = self.bucket(now)
        return [r for r in self.records if self.bucket(r[0]) > head - self.cfg["buckets"]]

    def move(self, new: str) -> None:
        old, self.state = self.state, new
        self.epoch += 1
        self.probes.clear()
        self.done = 0
        if new == "closed":
            self.records.clear()
            self.consecutive = 0
        if old != new:
            self.events.append((old, new))

    def open(self, now: float) -> None:
        self.move("open")
        self.open_until = now + self.cfg["open_duration"]

    def poll(self, now: float) -> str:
        if self.state == "open" and now >= self.open_until:
            self.move("half_open")
        return self.state

    def enter(self, now: float):
        """('admit', kind, probe id) or ('reject', retry_after)."""
        state = self.poll(now)
        if state in ("closed", "disabled"):
            return ("admit", "closed", None)
        if state == "forced_open":
            return ("reject", None)
        if state == "open":
            return ("reject", self.open_until - now)
        for pid, deadline in list(self.probes.items()):
            if now >= deadline:
                del self.probes[pid]          # stuck: loses its slot
        if len(self.probes) + self.done < self.cfg["half_open_calls"]:
            self.next_probe += 1
            self.probes[self.next_probe] = now + self.cfg["open_duration"]
            return ("admit", "probe", self.next_probe)
        return ("reject", max(min(self.probes.values()) - now, 0.0))

    def slow(self, duration: float) -> bool:
        scd = self.cfg["slow_call_duration"]
        return scd is not None and duration >= scd

    def exit(self, call: Call, now: float, outcome: str) -> None:
        duration = now - call.start
        if call.kind == "closed":
            if self.state != "closed" or call.epoch != self.epoch or outcome not in COUNTED:
                return
            failure = COUNTED[outcome]
            self.records.append((now, failure, self.slow(duration)))
            self.consecutive = self.consecutive + 1 if failure else 0
            live = self.live(now)
            calls = len(live)
            failures = sum(r[1] for r in live)
            slows = sum(r[2] for r in live)
            cfg = self.cfg
            trip = (cfg["consecutive_failures"] is not None
                    and self.consecutive >= cfg["consecutive_failures"])
            trip |= cfg["failure_count"] is not None and failures >= cfg["failure_count"]
            if calls >= cfg["minimum_calls"]:
                trip |= failures / calls >= cfg["failure_rate"]
                trip |= (cfg["slow_call_duration"] is not None
                         and slows / calls >= cfg["slow_call_rate"])
            if trip:
                self.open(now)
            return
        if self.state != "half_open" or call.epoch != self.epoch or call.probe not in self.probes:
            return
        deadline = self.probes[call.probe]
        if outcome not in COUNTED or now >= deadline:
            del self.probes[call.probe]       # no outcome, or too late to count
        elif COUNTED[outcome] or self.slow(duration):
            self.open(now)
        else:
            del self.probes[call.probe]
            self.done += 1
            if self.done >= self.cfg["half_open_calls"]:
                self.move("closed")

    def force(self, state: str, now: float) -> None:
        self.poll(now)
        self.move(state)


configs = st.fixed_dictionaries({
    "failure_rate": st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    "slow_call_rate": st.sampled_from([0.5, 1.0]),
    "slow_call_duration": st.sampled_from([None, None, 0.5, 1.0]),
    "minimum_calls": st.integers(1, 5),
    "window": st.sampled_from([1.0, 2.0, 4.0]),
    "buckets": st.sampled_from([1, 2, 4, 8]),
    "consecutive_failures": st.sampled_from([None, 1, 2, 3]),
    "failure_count": st.sampled_from([None, 2, 4]),
    "open_duration": st.sampled_from([0.5, 1.0, 1.5]),
    "half_open_calls": st.integers(1, 3),
})
eighths = st.integers(0, 16).map(lambda i: i / 8)
durations = st.sampled_from([0.0, 0.0, 0.125, 0.25, 0.5, 1.0, 1.5, 2.0])
outcomes = st.sampled_from(["ok", "fail", "fail", "answered", "ignored", "inner_rejected",
                            "cancelled", "interrupt", "ok", "fail"])


class BreakerMachine(RuleBasedStateMachine):
    twin = "pure"
    calls = Bundle("calls")

    @initialize(cfg=configs, start=st.integers(0, 1000).map(lambda i: i / 8))
    def setup(self, cfg, start):
        self.clock = ManualClock(start)
        with _impl.use(self.twin):
            self.b = CircuitBreaker("sm", record=Recorded, ignore=Ignored, clock=self.clock,
                                    **cfg)
        assert self.b._kernel.__class__.__module__ == f"gameguard._{self.twin}.breaker"
        self.model = Model(cfg)
        self.events: list = []
        self.b.on_state_change(lambda br, old, new: self.events.append((old, new)))
        self.in_flight = 0

        def body(outcome, duration):
            self.clock.advance(duration)
            exc = OUTCOMES[outcome]
            if exc is not None:
                raise exc()
            return outcome

        self.guarded = self.b(body)

    def now(self):
        return self.clock()

    def check_rejection(self, err: CircuitOpenError, expected) -> None:
        assert err.name == "sm"
        if expected is None:
            assert err.retry_after is None
        else:
            assert err.retry_after == expected

    @rule(dt=eighths)
    def advance(self, dt):
        self.clock.advance(dt)

    @rule(outcome=outcomes, duration=durations)
    def call(self, outcome, duration):
        """A decorated call that lasts ``duration`` and ends in ``outcome``."""
        start = self.now()
        expected = self.model.enter(start)
        exc_type = OUTCOMES[outcome]
        try:
            result = self.guarded(outcome, duration)
        except CircuitOpenError as err:
            if exc_type is InnerRejection:
                pass  # CircuitOpenError is not an InnerRejection: this is the guard's own
            assert expected[0] == "reject", expected
            self.check_rejection(err, expected[1])
            return
        except BaseException as err:  # the body's own exception passes through
            assert exc_type is not None and type(err) is exc_type
        else:
            assert result == outcome and exc_type is None
        assert expected[0] == "admit", expected
        call = Call(None, expected[1], self.model.epoch, start, expected[2])
        self.model.exit(call, self.now(), outcome)

    @rule(target=calls)
    def start(self):
        """Enter a call that stays in flight (its own context)."""
        now = self.now()
        expected = self.model.enter(now)
        ctx = contextvars.copy_context()
        try:
            ctx.run(self.b.__enter__)
        except CircuitOpenError as err:
            assert expected[0] == "reject", expected
            self.check_rejection(err, expected[1])
            return None
        assert expected[0] == "admit", expected
        self.in_flight += 1
        return Call(ctx, expected[1], self.model.epoch, now, expected[2])

    @rule(call=consumes(calls), outcome=outcomes)
    def finish(self, call, outcome):
        if call is None:
            return
        self.in_flight -= 1
        exc_type = OUTCOMES[outcome]
        exc = exc_type() if exc_type is not None else None
        suppressed = call.ctx.run(self.b.__exit__, exc_type, exc, None)
        assert suppressed is False
        self.model.exit(call, self.now(), outcome)

    @precondition(lambda self: self.model.state != "closed" or self.model.records)
    @rule(which=st.sampled_from(["force_open", "disable", "reset", "reset"]))
    def manual(self, which):
        getattr(self.b, which)()
        self.model.force({"force_open": "forced_open", "disable": "disabled",
                          "reset": "closed"}[which], self.now())

    @precondition(lambda self: self.model.state in ("open", "half_open"))
    @rule(call_after=st.booleans(), outcome=outcomes, duration=durations)
    def to_deadline(self, call_after, outcome, duration):
        """Advance exactly to the next deadline (open_until, or the first probe's), and
        maybe call at once, before anything else polls the state."""
        m = self.model
        if m.state == "open":
            target = m.open_until
        elif m.probes:
            target = min(m.probes.values())
        else:
            return
        self.clock.advance(max(target - self.now(), 0.0))
        if call_after:
            self.call(outcome, duration)

    @precondition(lambda self: self.in_flight == 0)
    @rule()
    def manual_allow(self):
        """allow() then record: the permit API."""
        now = self.now()
        expected = self.model.enter(now)
        admitted = self.b.allow()
        assert admitted == (expected[0] == "admit")
        if admitted:
            self.b.record_failure()
            self.model.exit(Call(None, expected[1], self.model.epoch, now, expected[2]), now,
                            "fail")

    @invariant()
    def agrees(self):
        if not hasattr(self, "b"):
            return
        now = self.now()
        assert self.b.state == self.model.poll(now)
        assert self.events == self.model.events
        snap = self.b.snapshot()
        if self.model.state == "closed":
            live = self.model.live(now)
            assert snap["calls"] == len(live)
            assert snap["failures"] == sum(r[1] for r in live)
            assert snap["slow_calls"] == sum(r[2] for r in live)
            assert snap["consecutive_failures"] == self.model.consecutive
            assert snap["retry_after"] is None
        elif self.model.state == "open":
            assert snap["retry_after"] == self.model.open_until - now
        elif self.model.state == "forced_open":
            assert snap["retry_after"] is None


class FastBreakerMachine(BreakerMachine):
    twin = "fast"


SETTINGS = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestBreakerMachinePure = BreakerMachine.TestCase
TestBreakerMachinePure.settings = SETTINGS
TestBreakerMachineFast = FastBreakerMachine.TestCase
TestBreakerMachineFast.settings = SETTINGS


def test_model_sanity():
    """The reference model itself on a hand-checked run."""
    m = Model({"failure_rate": 0.5, "slow_call_rate": 1.0, "slow_call_duration": None,
               "minimum_calls": 2, "window": 2.0, "buckets": 2, "consecutive_failures": None,
               "failure_count": None, "open_duration": 1.0, "half_open_calls": 1})
    c = Call(None, "closed", 0, 0.0)
    m.exit(c, 0.0, "ok")
    m.exit(c, 0.0, "fail")
    assert m.state == "open" and m.enter(0.5) == ("reject", 0.5)
    kind = m.enter(1.0)
    assert kind == ("admit", "probe", 1)
    m.exit(Call(None, "probe", m.epoch, 1.0, 1), 1.0, "ok")
    assert m.state == "closed"
    assert m.events == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


@pytest.mark.parametrize("twin_name", ["fast", "pure"])
def test_machine_twins_build(twin_name):
    """Both machines really build on their twin (guards against a silent fallback)."""
    machine = FastBreakerMachine() if twin_name == "fast" else BreakerMachine()
    machine.setup(cfg={"failure_rate": 0.5, "slow_call_rate": 1.0, "slow_call_duration": None,
                       "minimum_calls": 1, "window": 1.0, "buckets": 1,
                       "consecutive_failures": None, "failure_count": None,
                       "open_duration": 1.0, "half_open_calls": 1}, start=0.0)
    machine.call("fail", 0.0)
    machine.agrees()
    assert machine.b.state == "open"
    machine.teardown()
