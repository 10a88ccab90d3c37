"""Rules as data: the file formats, rules.guard() in every form, reload (validated, atomic,
state kept for unchanged rules, the old set kept on every kind of bad file), and the route
kernel's twins forwarding alike."""
from __future__ import annotations

import asyncio
import inspect
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import both_twins
from gameguard import _impl
from gameguard import (Bulkhead, BulkheadFullError, CircuitBreaker, CircuitOpenError,
                       ConfigurationError, LeakyBucket, ManualClock, RateLimitExceeded,
                       TokenBucket)
from gameguard.rules import QueueingLeakyBucket, Rules

TOML = """
[resource."matchmaking:Find"]
breaker  = { failure_rate = 0.5, minimum_calls = 2, open_duration = 5.0 }
limit    = { kind = "token", rate = 1000, capacity = 1000 }
bulkhead = { max_concurrent = 64 }

[resource."shop:Buy"]
limit = { kind = "leaky", rate = 10, capacity = 2 }
"""


class Boom(Exception):
    pass


def spec(**resources):
    return {"resource": resources}


def write(path, text):
    path.write_text(text)
    return path


# -- formats -----------------------------------------------------------------------------------
def test_toml_file_builds_the_guards_it_names(twin, tmp_path):
    rules = Rules.load(write(tmp_path / "rules.toml", TOML), clock=ManualClock())
    assert rules.resources == ("matchmaking:Find", "shop:Buy")
    find = rules.rule("matchmaking:Find")
    assert isinstance(find.breaker, CircuitBreaker) and find.breaker.minimum_calls == 2
    assert isinstance(find.limit, TokenBucket) and (find.limit.rate, find.limit.capacity) == \
        (1000.0, 1000.0)
    assert isinstance(find.bulkhead, Bulkhead) and find.bulkhead.max_concurrent == 64
    assert find.guards == (find.breaker, find.limit, find.bulkhead)
    assert {g.name for g in find.guards} == {"matchmaking:Find"}
    shop = rules.rule("shop:Buy")
    assert type(shop.limit) is LeakyBucket and shop.breaker is None and shop.bulkhead is None
    assert rules.rule("nope") is None


def test_json_file_has_the_same_shape(twin, tmp_path):
    data = {"resource": {"a": {"bulkhead": {"max_concurrent": 3, "max_wait": 0}}}}
    rules = Rules.load(write(tmp_path / "rules.json", json.dumps(data)))
    assert rules.rule("a").bulkhead.max_concurrent == 3
    assert rules.rule("a").settings == data["resource"]["a"]


@pytest.mark.parametrize("data, words", [
    ({"resources": {}}, ["'resources'"]),
    ({"resource": {"a": {"breakr": {}}}}, ["'a'", "'breakr'"]),
    ({"resource": {"a": {"breaker": {"failure_rat": 0.5}}}}, ["'a'", "breaker",
                                                              "'failure_rat'"]),
    ({"resource": {"a": {"breaker": {"failure_rate": 2}}}}, ["'a'", "breaker", "failure_rate",
                                                             "2"]),
    ({"resource": {"a": {"limit": {"rate": -1}}}}, ["'a'", "limit", "rate", "-1"]),
    ({"resource": {"a": {"limit": {"capacity": 5}}}}, ["'a'", "limit", "rate is required"]),
    ({"resource": {"a": {"limit": {"kind": "gcra", "rate": 1}}}}, ["'a'", "kind", "'gcra'"]),
    ({"resource": {"a": {"limit": {"kind": ["token"], "rate": 1}}}}, ["'a'", "kind"]),
    ({"resource": {"a": {"breaker": {"window": [1]}}}}, ["'a'", "breaker", "window"]),
    ({"resource": {"a": {"limit": {"rate": 1, "capacity": 0.5}}}}, ["'a'", "capacity"]),
    ({"resource": {"a": {"limit": {"kind": "leaky", "rate": 1, "initial": 1}}}},
     ["'a'", "initial"]),
    ({"resource": {"a": {"bulkhead": {"max_concurrent": 0}}}}, ["'a'", "max_concurrent", "0"]),
    ({"resource": {"a": {"bulkhead": {}}}}, ["'a'", "max_concurrent is required"]),
    ({"resource": {"a": {"limit": {"rate": 1, "max_wait": -1}}}}, ["'a'", "max_wait", "-1"]),
    ({"resource": {"a": 3}}, ["'a'"]),
    ([1, 2], ["mapping", "[1, 2]"]),
])
def test_bad_rules_name_resource_and_field(twin, data, words):
    with pytest.raises(ConfigurationError) as info:
        Rules(data)
    for word in words:
        assert word in str(info.value)


def test_guard_is_one_object_per_resource():
    rules = Rules()
    assert rules.guard("a") is rules.guard("a")
    assert rules.guard("a") is not rules.guard("b")
    assert rules.guard("a", fallback=len) is not rules.guard("a")
    with pytest.raises(ConfigurationError, match="resource"):
        rules.guard(["a"])  # type: ignore[arg-type]


def test_rules_argument_is_checked():
    with pytest.raises(ConfigurationError, match="mapping"):
        Rules(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="resource"):
        Rules().guard("")
    with pytest.raises(ConfigurationError, match="fallback"):
        Rules().guard("a", fallback=3)  # type: ignore[arg-type]


def test_file_errors(tmp_path):
    with pytest.raises(ConfigurationError, match=".toml or .json"):
        Rules.load(write(tmp_path / "rules.yaml", "a: 1"))
    with pytest.raises(ConfigurationError, match="cannot read"):
        Rules.load(tmp_path / "absent.toml")
    with pytest.raises(ConfigurationError, match="syntax error"):
        Rules.load(write(tmp_path / "bad.toml", "[resource.\n"))


# -- rules.guard() ---------------------------------------------------------------------------
def one_call_limit(clock):
    return Rules(spec(a={"limit": {"rate": 1, "capacity": 1}}), clock=clock)


def test_decorator_applies_the_rule_and_keeps_the_function(twin):
    rules = one_call_limit(ManualClock())

    @rules.guard("a")
    def handler(x, *, y=1):
        """Doc."""
        return x + y

    assert (handler.__name__, handler.__doc__, handler.__wrapped__(1)) == ("handler", "Doc.", 2)
    assert str(inspect.signature(handler)) == "(x, *, y=1)"
    assert handler(1, y=2) == 3
    with pytest.raises(RateLimitExceeded) as info:
        handler(1)
    assert info.value.name == "a"


def test_decorated_method_binds(twin):
    rules = Rules(spec(a={"bulkhead": {"max_concurrent": 1}}))

    class Service:
        def __init__(self):
            self.n = 5

        @rules.guard("a")
        def get(self, k):
            return self.n + k

    assert Service().get(1) == 6


def test_resource_without_rule_passes_through(twin):
    rules = Rules()

    @rules.guard("free")
    def f(x):
        return x * 2

    assert f(21) == 42
    with rules.guard("free"):
        pass


def test_fallback_answers_refused_calls(twin):
    rules = Rules(spec(a={"limit": {"rate": 1, "capacity": 1}}), clock=ManualClock())

    @rules.guard("a", fallback=lambda x: ("fallback", x))
    def f(x):
        return ("ran", x)

    assert f(1) == ("ran", 1)
    assert f(2) == ("fallback", 2)


def test_exceptions_pass_through_unchanged(twin):
    rules = Rules(spec(a={"breaker": {"minimum_calls": 1, "failure_rate": 1.0}}),
                  clock=ManualClock())
    boom = Boom()

    @rules.guard("a")
    def f():
        raise boom

    with pytest.raises(Boom) as info:
        f()
    assert info.value is boom
    assert rules.rule("a").breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        f()


def test_order_is_breaker_then_limit_then_bulkhead(twin):
    clock = ManualClock()
    rules = Rules(spec(a={"bulkhead": {"max_concurrent": 1},
                          "limit": {"rate": 1, "capacity": 5},
                          "breaker": {"minimum_calls": 100}}), clock=clock)
    rule = rules.rule("a")
    assert [type(g) for g in rule.entry.guards] == [CircuitBreaker, TokenBucket, Bulkhead]
    with rules.guard("a"):
        # the bulkhead (innermost) refuses: the limit, entered before it, already paid
        with pytest.raises(BulkheadFullError):
            with rules.guard("a"):
                pass
    assert rule.limit.tokens == 3.0
    assert rule.breaker.snapshot()["calls"] == 1  # the refused call counts as nothing


def test_with_and_async_with(twin):
    rules = Rules(spec(a={"bulkhead": {"max_concurrent": 1}}))
    bulkhead = rules.rule("a").bulkhead
    guard = rules.guard("a")
    with guard:
        assert bulkhead.in_flight == 1
    assert bulkhead.in_flight == 0

    async def main():
        async with guard:
            assert bulkhead.in_flight == 1
            with pytest.raises(BulkheadFullError):
                async with guard:
                    pass
        assert bulkhead.in_flight == 0
    asyncio.run(main())


def test_block_exception_is_recorded_and_propagates(twin):
    rules = Rules(spec(a={"breaker": {"minimum_calls": 1, "failure_rate": 1.0}}),
                  clock=ManualClock())
    with pytest.raises(Boom):
        with rules.guard("a"):
            raise Boom()
    assert rules.rule("a").breaker.state == "open"


def test_async_decorator(twin):
    clock = ManualClock()
    rules = Rules(spec(a={"limit": {"rate": 1, "capacity": 1}}), clock=clock)

    @rules.guard("a")
    async def f(x):
        await asyncio.sleep(0)
        return x

    assert inspect.iscoroutinefunction(f)

    async def main():
        assert await f(3) == 3
        with pytest.raises(RateLimitExceeded):
            await f(4)
    asyncio.run(main())


def test_sentinel_style_queue_waits_on_the_clock(twin):
    clock = ManualClock()
    rules = Rules(spec(a={"limit": {"kind": "leaky", "rate": 10, "capacity": 1,
                                    "max_wait": 0.25}}), clock=clock)
    limit = rules.rule("a").limit
    assert isinstance(limit, QueueingLeakyBucket) and limit.max_wait == 0.25

    @rules.guard("a")
    def f():
        return clock()

    times = [f(), f(), f()]  # the queue paces them 0.1 s apart on the guard's clock
    assert times == pytest.approx([0.0, 0.1, 0.2])
    short = Rules(spec(a={"limit": {"kind": "leaky", "rate": 10, "capacity": 1,
                                    "max_wait": 0.05}}), clock=clock)
    g = short.guard("a")(lambda: clock())
    assert g() == pytest.approx(clock())
    with pytest.raises(RateLimitExceeded):  # its turn is 0.1 s away: past max_wait
        g()

    clock.advance(10)
    start = clock()
    paced = rules.guard("a")(_async_now(clock))

    async def main():
        times = [await paced() for _ in range(3)]
        async with rules.guard("a"):  # the block form waits its turn too
            times.append(clock())
        return times
    assert asyncio.run(main()) == pytest.approx([start, start + 0.1, start + 0.2, start + 0.3])


def _async_now(clock):
    async def now():
        return clock()
    return now


# -- reload ------------------------------------------------------------------------------------
def test_reload_swaps_and_counts(twin, tmp_path):
    path = write(tmp_path / "rules.toml", '[resource.a]\nlimit = { rate = 1, capacity = 1 }\n')
    clock = ManualClock()
    rules = Rules.load(path, clock=clock)

    @rules.guard("a")
    def f():
        return "ok"

    assert f() == "ok"
    with pytest.raises(RateLimitExceeded):
        f()
    write(path, '[resource.a]\nlimit = { rate = 1, capacity = 3 }\n')
    assert rules.reload() is True
    assert [f(), f(), f()] == ["ok"] * 3  # a fresh bucket of the new capacity
    assert rules.reload() is False  # nothing changed
    assert (rules.reloads_succeeded, rules.reloads_failed, rules.last_reload_successful) == \
        (2, 0, True)
    write(path, "# no rules: every resource passes through\n")  # (an empty file is refused)
    assert rules.reload() is True
    assert rules.resources == ()
    assert [f() for _ in range(5)] == ["ok"] * 5  # no rule any more: passes through


def test_unchanged_rules_keep_their_state(twin):
    clock = ManualClock()
    current = {"a": {"breaker": {"minimum_calls": 1, "failure_rate": 1.0},
                     "limit": {"rate": 1, "capacity": 4}},
               "b": {"limit": {"rate": 1, "capacity": 2}}}
    rules = Rules(lambda: {"resource": current}, clock=clock)
    a, b = rules.rule("a"), rules.rule("b")
    with pytest.raises(Boom):
        with rules.guard("a"):
            raise Boom()
    assert a.breaker.state == "open" and a.limit.tokens == 3.0
    assert b.limit.try_acquire()

    current = {"a": {"breaker": {"minimum_calls": 1, "failure_rate": 1.0},
                     "limit": {"rate": 1, "capacity": 5}},  # the limit changes, not the breaker
               "b": {"limit": {"rate": 1, "capacity": 2}},
               "c": {"bulkhead": {"max_concurrent": 1}}}
    assert rules.reload() is True
    assert rules.rule("b") is b and b.limit.tokens == 1.0  # untouched rule: same guards
    a2 = rules.rule("a")
    assert a2 is not a and a2.breaker is a.breaker and a2.breaker.state == "open"
    assert a2.limit is not a.limit and a2.limit.tokens == 5.0
    with pytest.raises(CircuitOpenError):  # the kept breaker is still open
        with rules.guard("a"):
            pass


BAD_FILES = {
    "syntax": '[resource.a\nlimit = { rate = 1 }\n',
    "unknown field": '[resource.a]\nlimit = { rate = 1, burst = 3 }\n',
    "bad value": '[resource.a]\nbreaker = { failure_rate = 1.5 }\n',
    "half-written": '[resource.a]\nlimit = { rate = 1, capa',
    "empty": "",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("ext", ["toml", "json"])
def test_bad_file_keeps_the_old_set(twin, tmp_path, kind, ext):
    good = {"resource": {"a": {"limit": {"rate": 1, "capacity": 2}}}}
    path = tmp_path / f"rules.{ext}"
    write(path, json.dumps(good) if ext == "json" else
          '[resource.a]\nlimit = { rate = 1, capacity = 2 }\n')
    clock = ManualClock()
    rules = Rules.load(path, clock=clock)
    before = rules.rule("a")

    @rules.guard("a")
    def f():
        return 1

    assert f() == 1
    if ext == "json":
        bad = {"syntax": '{"resource": {"a": }}',
               "unknown field": json.dumps({"resource": {"a": {"limit": {"rate": 1,
                                                                         "burst": 3}}}}),
               "bad value": json.dumps({"resource": {"a": {"breaker": {"failure_rate": 1.5}}}}),
               "half-written": json.dumps(good)[:-7],
               "empty": ""}[kind]
    else:
        bad = BAD_FILES[kind]
    write(path, bad)
    with pytest.raises(ConfigurationError) as info:
        rules.reload()
    if kind in ("unknown field", "bad value"):
        assert "'a'" in str(info.value)
        assert ("burst" if kind == "unknown field" else "failure_rate") in str(info.value)
    assert rules.rule("a") is before
    assert (rules.reloads_failed, rules.last_reload_successful) == (1, False)
    assert rules.last_error == str(info.value)
    assert f() == 1
    with pytest.raises(RateLimitExceeded):  # still the old bucket, with its level
        f()
    write(path, json.dumps(good) if ext == "json" else
          '[resource.a]\nlimit = { rate = 1, capacity = 2 }\n')
    assert rules.reload() is False  # back to the set in force: nothing changes
    assert (rules.reloads_succeeded, rules.reloads_failed, rules.last_reload_successful) == \
        (1, 1, True)


def test_a_source_that_raises_is_a_failed_reload(twin):
    calls = []

    def source():
        calls.append(1)
        if len(calls) > 1:
            raise OSError("etcd unreachable")
        return spec(a={"bulkhead": {"max_concurrent": 1}})

    rules = Rules(source)
    with pytest.raises(ConfigurationError, match="etcd unreachable"):
        rules.reload()
    assert rules.rule("a") is not None and rules.reloads_failed == 1


def test_call_in_flight_finishes_under_its_rule(twin):
    version = {"n": 1}
    rules = Rules(lambda: spec(a={"bulkhead": {"max_concurrent": version["n"]}}))
    old = rules.rule("a").bulkhead
    inside = threading.Event()
    release = threading.Event()

    @rules.guard("a")
    def slow():
        inside.set()
        assert release.wait(20)
        return "done"

    result = []
    t = threading.Thread(target=lambda: result.append(slow()))
    t.start()
    assert inside.wait(20)
    version["n"] = 2
    rules.reload()
    new = rules.rule("a").bulkhead
    assert new is not old and (old.in_flight, new.in_flight) == (1, 0)
    with rules.guard("a"):  # the new rule: its own slots
        assert new.in_flight == 1
    release.set()
    t.join(20)
    assert result == ["done"] and old.in_flight == 0


def test_atomic_under_threads_while_reloading(twin):
    """8 threads call through rules.guard while the rules alternate 1,000 times between two
    versions differing in every guard: each version's guards must see exactly the same calls
    (a call under version i's breaker but another version's limit would unbalance them)."""
    clock = ManualClock()
    big = 10 ** 9
    versions = [spec(r={"breaker": {"minimum_calls": big, "failure_rate": 0.9},
                        "limit": {"rate": 1, "capacity": big},
                        "bulkhead": {"max_concurrent": 100}}),
                spec(r={"breaker": {"minimum_calls": big, "failure_rate": 0.8},
                        "limit": {"rate": 1, "capacity": big + 1},
                        "bulkhead": {"max_concurrent": 101}})]
    turn = {"i": 0}
    rules = Rules(lambda: versions[turn["i"] % 2], clock=clock)
    seen = [rules.rule("r")]
    counts = [0] * 8
    stop = threading.Event()

    @rules.guard("r")
    def call():
        return None

    def caller(k):
        while not stop.is_set():
            call()
            with rules.guard("r"):
                pass
            counts[k] += 2

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 1001):
            turn["i"] = i
            assert rules.reload() is True
            seen.append(rules.rule("r"))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert len({id(rule) for rule in seen}) == 1001
    total = 0
    for rule in seen:
        calls = rule.breaker.snapshot()["calls"]
        taken = rule.limit.capacity - rule.limit.tokens
        assert calls == taken, rule
        assert rule.bulkhead.in_flight == 0
        total += calls
    assert total == sum(counts) > 0
    assert rules.reloads_succeeded == 1000


# -- the route kernel's twins ------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(args=st.lists(st.integers(), max_size=4),
       kwargs=st.dictionaries(st.sampled_from("xyz"), st.integers(), max_size=3),
       raises=st.booleans())
def test_route_twins_forward_alike(args, kwargs, raises):
    outcomes = []
    for mod in both_twins("route"):
        def target(*a, **k):
            if raises:
                raise Boom(a, k)
            return (a, k)
        route = mod.Route(len, target)
        try:
            outcomes.append(("ok", route(*args, **kwargs)))
        except Boom as exc:
            outcomes.append(("raised", exc.args))
        route.target = lambda *a, **k: "swapped"
        outcomes.append(route(*args, **kwargs))
        assert route.func is len
    assert outcomes[:2] == outcomes[2:]



def test_importing_rules_drain_health_stays_cheap():
    """Importing the modules behind gg.Rules, gg.Drain and gg.health loads nothing that
    `import gameguard` must not (test_import's heavy list), nor the TOML parser or signal."""
    import subprocess
    import sys

    from test_import import HEAVY

    # the names load on first use, so typing (annotations) may come with them; what must
    # not is the heavy rest, the TOML parser (loaded with the first file) and signal
    heavy = sorted(set(HEAVY) - {"typing", "re", "enum", "contextlib", "random",
                                 "gameguard.rules"} | {"tomllib", "tomli", "signal"})
    code = ("import sys\nimport gameguard.rules, gameguard.drain, gameguard.health\n"
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"


# -- live changes: the same validation as the rules --------------------------------------------
LIVE = {"breaker": {"minimum_calls": 5},
        "limit": {"kind": "leaky", "rate": 10, "capacity": 2, "max_wait": 0.5},
        "bulkhead": {"max_concurrent": 4}}


@pytest.mark.parametrize("kind, field, bad", [
    ("breaker", "failure_rate", 2), ("breaker", "minimum_calls", 0),
    ("breaker", "open_duration", -1), ("limit", "rate", -1), ("limit", "capacity", "x"),
    ("limit", "max_wait", -2), ("bulkhead", "max_concurrent", 0), ("bulkhead", "max_wait", -1),
])
def test_configure_refuses_what_the_rules_refuse(twin, kind, field, bad):
    guard = getattr(Rules(spec(a=LIVE)).rule("a"), kind)
    before = guard.snapshot()
    with pytest.raises(ConfigurationError) as live:
        guard.configure(**{field: bad})
    assert guard.snapshot() == before  # refused: nothing applied
    with pytest.raises(ConfigurationError) as loaded:
        Rules(spec(a={**LIVE, kind: {**LIVE[kind], field: bad}}))
    assert str(live.value) in str(loaded.value)
    assert field in str(live.value) and repr(bad) in str(live.value)


def test_configure_applies_live_to_a_rule_guard(twin):
    rules = Rules(spec(a=LIVE), clock=ManualClock())
    rule = rules.rule("a")
    rule.breaker.configure(minimum_calls=7)
    rule.limit.configure(rate=20, max_wait=0.25)
    rule.bulkhead.configure(max_concurrent=8)
    assert (rule.breaker.minimum_calls, rule.limit.rate, rule.limit.max_wait,
            rule.bulkhead.max_concurrent) == (7, 20.0, 0.25, 8)
    with pytest.raises(ConfigurationError):  # all or nothing: the bad rate stops max_wait
        rule.limit.configure(rate=-1, max_wait=0.1)
    assert (rule.limit.rate, rule.limit.max_wait) == (20.0, 0.25)
    with pytest.raises(AttributeError):
        rule.limit.max_wait = 3


def test_block_keeps_the_rule_it_entered_under(twin):
    version = {"n": 1}
    rules = Rules(lambda: spec(a={"bulkhead": {"max_concurrent": version["n"]}}))
    guard = rules.guard("a")
    old = rules.rule("a").bulkhead
    with guard:
        version["n"] = 2
        rules.reload()
        new = rules.rule("a").bulkhead
        assert (old.in_flight, new.in_flight) == (1, 0)
        with guard:  # entered under the new rule
            assert (old.in_flight, new.in_flight) == (1, 1)
        assert new.in_flight == 0
    assert old.in_flight == 0


def test_blocks_closed_out_of_order(twin):
    rules = Rules(spec(a={"bulkhead": {"max_concurrent": 1}},
                       b={"bulkhead": {"max_concurrent": 1}}))
    a, b = rules.guard("a"), rules.guard("b")
    ba, bb = rules.rule("a").bulkhead, rules.rule("b").bulkhead
    a.__enter__()
    b.__enter__()
    assert a.__exit__(None, None, None) is False  # a closes first
    assert (ba.in_flight, bb.in_flight) == (0, 1)
    b.__exit__(None, None, None)
    assert bb.in_flight == 0
    with pytest.raises(RuntimeError, match="without a matching"):
        a.__exit__(None, None, None)
    assert repr(a) == "<rules.guard('a')>"


def test_async_blocks_of_interleaved_tasks_keep_their_own_rules(twin):
    version = {"n": 2}
    rules = Rules(lambda: spec(a={"bulkhead": {"max_concurrent": version["n"]}}))
    guard = rules.guard("a")

    async def main():
        first = rules.rule("a").bulkhead
        a_in, b_in, a_out = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def task_a():
            async with guard:
                a_in.set()
                await b_in.wait()
            a_out.set()

        async def task_b():
            await a_in.wait()
            version["n"] = 3
            rules.reload()  # b enters under the new rule, a still holds the old one
            async with guard:
                b_in.set()
                await a_out.wait()
                assert (first.in_flight, rules.rule("a").bulkhead.in_flight) == (0, 1)
        await asyncio.wait_for(asyncio.gather(task_a(), task_b()), 20)
        assert rules.rule("a").bulkhead.in_flight == 0
    asyncio.run(main())


# -- blocks: one record per block, the plan it entered kept with its permits -----------------
class Recorder:
    """A context manager entry of another kind (not a guard): what it saw, and whether it
    suppresses the block's exception."""

    def __init__(self, suppress=False):
        self.seen = []
        self.suppress = suppress

    def __enter__(self):
        self.seen.append("enter")
        return self

    def __exit__(self, exc_type, exc, tb):
        self.seen.append(("exit", exc_type))
        return self.suppress

    async def __aenter__(self):
        self.seen.append("aenter")
        return self

    async def __aexit__(self, exc_type, exc, tb):
        self.seen.append(("aexit", exc_type))
        return self.suppress


def test_block_of_another_kind_of_entry_uses_its_methods(twin, kernels):
    route = kernels("route")
    first, second = Recorder(suppress=True), Recorder()
    slot = route.Slot(first)
    block = route.Block(slot, "r", lambda func: func)
    assert slot.entry is first
    with block:
        slot.entry = second        # a reload: this block still exits what it entered
        raise Boom()               # suppressed by the entry it entered
    assert first.seen == ["enter", ("exit", Boom)] and second.seen == []
    with block:
        pass
    assert second.seen == ["enter", ("exit", None)]

    async def main():
        async with block:
            slot.entry = first
        slot.entry = None          # pass-through
        async with block:
            pass
    asyncio.run(main())
    assert second.seen[2:] == ["aenter", ("aexit", None)] and len(first.seen) == 2


def test_block_of_a_guard_of_the_other_twin(impl, kernels):
    """A guard whose kernel runs on the pure twin has no compiled plan (the compiled block
    enters it through its own methods); the pure block runs the protocol over compiled
    kernels too. Either way a block exits what it entered, whatever a reload swaps."""
    route = kernels("route")
    with _impl.use("pure"):
        pure = Bulkhead(1)
    compiled = Bulkhead(1)
    slot = route.Slot(pure)
    block = route.Block(slot, "r", lambda func: func)
    with block:
        slot.entry = compiled
        assert (pure.in_flight, compiled.in_flight) == (1, 0)
        with block:
            assert (pure.in_flight, compiled.in_flight) == (1, 1)
            with pytest.raises(BulkheadFullError):
                with block:
                    pass
    assert (pure.in_flight, compiled.in_flight) == (0, 0)


def test_block_of_a_wrapping_pipeline_refuses_like_the_pipeline(twin, kernels):
    """An entry that overrides the block methods keeps them (here: a pipeline with a retry
    is a decorator only)."""
    from gameguard import Retry, pipeline

    entry = pipeline(Retry(attempts=2), Bulkhead(1))
    block = kernels("route").Block(kernels("route").Slot(entry), "r", lambda func: func)
    with pytest.raises(TypeError) as direct:
        with entry:
            pass
    with pytest.raises(TypeError) as ruled:
        with block:
            pass
    assert str(ruled.value) == str(direct.value)


def test_rules_blocks_and_the_guards_own_blocks_close_in_any_order(twin):
    rules = Rules(spec(a={"bulkhead": {"max_concurrent": 3}}))
    guard, bulkhead = rules.guard("a"), rules.rule("a").bulkhead
    guard.__enter__()
    bulkhead.__enter__()
    guard.__enter__()
    assert bulkhead.in_flight == 3
    assert guard.__exit__(None, None, None) is False   # the newest of guard's blocks
    bulkhead.__exit__(Boom, Boom(), None)
    assert bulkhead.in_flight == 1
    with pytest.raises(RuntimeError, match="without a matching"):
        bulkhead.__exit__(None, None, None)
    guard.__exit__(None, None, None)
    assert bulkhead.in_flight == 0
    counters = bulkhead.snapshot()["counters"]
    assert counters["successful"] == 2 and sum(counters.values()) == 3


def test_rules_block_cannot_be_exited_from_another_thread(twin):
    rules = Rules(spec(a={"bulkhead": {"max_concurrent": 1}}))
    guard, bulkhead = rules.guard("a"), rules.rule("a").bulkhead
    errors = []

    def other():
        try:
            guard.__exit__(None, None, None)
        except RuntimeError as exc:
            errors.append(exc)
    with guard:
        t = threading.Thread(target=other)
        t.start()
        t.join(20)
        assert not t.is_alive() and len(errors) == 1 and bulkhead.in_flight == 1
    assert bulkhead.in_flight == 0


def test_task_started_inside_a_rules_block_has_its_own_blocks(twin):
    rules = Rules(spec(a={"bulkhead": {"max_concurrent": 2}}))
    guard, bulkhead = rules.guard("a"), rules.rule("a").bulkhead

    async def child():
        async with guard:
            return bulkhead.in_flight

    async def main():
        async with guard:
            assert await asyncio.wait_for(asyncio.ensure_future(child()), 20) == 2
            assert bulkhead.in_flight == 1  # the child closed its own block, not this one
    asyncio.run(main())
    assert bulkhead.in_flight == 0


def test_async_block_that_waits_exits_the_rule_it_waited_for(twin):
    version = {"n": 1}
    rules = Rules(lambda: spec(a={"bulkhead": {"max_concurrent": version["n"],
                                               "max_wait": 20}}))
    guard, old = rules.guard("a"), rules.rule("a").bulkhead

    async def main():
        order = []

        async def waiter():
            async with guard:  # waits for the old rule's one slot
                order.append(("in", old.in_flight))
                version["n"] = 5
                rules.reload()
            order.append(("out", old.in_flight))

        async with guard:
            task = asyncio.ensure_future(waiter())
            for _ in range(100):
                if old.snapshot().get("waiting", 0) or task.done():
                    break
                await asyncio.sleep(0)
            assert not task.done() and old.in_flight == 1
        await asyncio.wait_for(task, 20)
        return order
    assert asyncio.run(main()) == [("in", 1), ("out", 0)]
    assert rules.rule("a").bulkhead is not old and rules.rule("a").bulkhead.in_flight == 0


BLOCK_STEP = st.one_of(st.tuples(st.just("enter"), st.sampled_from("ab")),
                       st.tuples(st.just("exit"), st.integers(0, 7)),
                       st.tuples(st.just("reload"), st.integers(1, 3)))


def _run_blocks(steps):
    """Blocks opened, closed (any open one, by position) and rules reloaded; returns what
    was seen after each step."""
    version = {"n": 1}
    rules = Rules(lambda: spec(a={"bulkhead": {"max_concurrent": version["n"]}},
                               b={"bulkhead": {"max_concurrent": 2}}))
    bulkheads, open_, seen = [], [], []
    for op, arg in steps:
        if op == "enter":
            try:
                rules.guard(arg).__enter__()
                open_.append(arg)
                seen.append(("entered", arg))
            except BulkheadFullError:
                seen.append(("full", arg))
        elif op == "exit" and open_:
            seen.append(("exit", rules.guard(open_.pop(arg % len(open_))).__exit__(
                None, None, None)))
        elif op == "reload":
            version["n"] = arg
            rules.reload()
        bulkheads.extend(b for b in (rules.rule(r).bulkhead for r in "ab")
                         if all(b is not known for known in bulkheads))
        seen.append(tuple(b.in_flight for b in bulkheads))
    while open_:
        rules.guard(open_.pop()).__exit__(None, None, None)
    seen.append(tuple(b.in_flight for b in bulkheads))
    return seen


@settings(max_examples=60, deadline=None)
@given(st.lists(BLOCK_STEP, max_size=20))
def test_route_twins_decide_blocks_alike(steps):
    both_twins("route")
    results = []
    for which in ("fast", "pure"):
        with _impl.use(which):
            results.append(_run_blocks(steps))
    assert results[0] == results[1]
    assert set(results[0][-1]) <= {0}
