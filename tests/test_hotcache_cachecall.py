"""The async ``cached`` hit path kernel (``cachecall`` twins): the compiled and the pure
``AsyncCachedCall`` key calls alike, answer the same hits with a finished ``Ready`` and send
the same misses to the slow path."""
from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import both_twins

FAST, PURE = both_twins("cachecall")
TFAST, TPURE = both_twins("cachetable")

ATOMS = st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b", ""]), st.booleans(),
                  st.floats(allow_nan=False, min_value=-2, max_value=2))
ARGS = st.lists(ATOMS, max_size=3).map(tuple)
KWARGS = st.dictionaries(st.sampled_from(["x", "y"]), ATOMS, max_size=2)
CALLS = st.lists(st.tuples(ARGS, KWARGS, st.booleans()), min_size=1, max_size=30)


def make_key(args, kwargs):
    return args + ("<kw>",) + tuple(sorted(kwargs.items()))


def run_trace(callmod, tablemod, calls, keyed):
    """Drive one twin: each call either hits (its key was stored) or reaches ``slow``,
    which stores the key's value; returns what every call answered."""
    table = tablemod.CacheTable(1000, 4, 7, clock=lambda: 0.0, absent="ABSENT")
    seen = []

    def slow(key, marker, args, kwargs):
        table.put(key, ("v", key), 10.0, 10.0, 0.0)
        seen.append(("slow", key, repr(marker), args, kwargs))

        async def coro():
            return ("loaded", key)
        return coro()

    keyfunc = (lambda *a, **kw: ("custom", a, tuple(sorted(kw.items())))) if keyed else None
    wrapper = callmod.AsyncCachedCall(lambda *a, **kw: None, table, keyfunc, make_key, slow,
                                      None)
    out = []
    for args, kwargs, store_absent in calls:
        aw = wrapper(*args, **kwargs)
        kind = type(aw).__name__
        value = asyncio.run(_await(aw))
        out.append((kind, value))
        if store_absent and kind == "Ready" and value is not None:
            key = keyfunc(*args, **kwargs) if keyed else value[1]
            table.put(key, "ABSENT", 10.0, 10.0, 0.0)
    return out, seen


async def _await(aw):
    return await aw


@settings(max_examples=60, deadline=None)
@given(calls=CALLS, keyed=st.booleans())
def test_twins_key_and_answer_alike(calls, keyed):
    fast = run_trace(FAST, TFAST, calls, keyed)
    pure = run_trace(PURE, TPURE, calls, keyed)
    assert fast == pure
    answers, seen = fast
    assert all(kind in ("Ready", "coroutine") for kind, _ in answers)
    assert len(seen) == sum(kind == "coroutine" for kind, _ in answers)


def test_ready_behaves_as_a_finished_coroutine():
    for mod in (FAST, PURE):
        r = mod.Ready(5)
        assert r.__await__() is r and iter(r) is r
        for step in (lambda: next(r), lambda: r.send(None)):
            try:
                step()
            except StopIteration as stop:
                assert stop.value == 5
            else:
                raise AssertionError("a Ready is done at once")
        assert asyncio.iscoroutine(r) and repr(r) == "<ready 5>"
        try:
            r.throw(KeyError("k"))
        except KeyError as exc:
            assert exc.args == ("k",)
        else:
            raise AssertionError("throw must raise")
        r.close()
        assert asyncio.run(_await(r)) == 5 and asyncio.run(_await(r)) == 5
