"""The middleware's request path kernel (``gameguard._fast.edge`` / ``_pure.edge``): the
coroutine protocol of what a call returns (awaited in another task, closed, dropped,
cancelled before it starts), what servers inspect, scopes that are not plain dicts, and
a hypothesis test that both twins answer and count alike."""
from __future__ import annotations

import asyncio
import gc
import inspect
import logging
from collections import UserDict
from typing import Any, Optional

import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st

import gameguard as gg
from gameguard.asgi import GuardMiddleware

from conftest import both_twins


def _scope(path: str = "/x", kind: str = "http") -> dict[str, Any]:
    return {"type": kind, "path": path, "headers": [], "query_string": b"p=1"}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def responder(status: int, sent: Optional[list[Any]] = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def collector(sent: list[Any]) -> Any:
    async def send(message: Any) -> None:
        sent.append(message)
    return send


def test_servers_see_an_asgi3_coroutine_function() -> None:
    mw = GuardMiddleware(responder(200), {"*": gg.Bulkhead(2)})
    assert inspect.iscoroutinefunction(mw.__call__)
    assert asyncio.iscoroutinefunction(mw.__call__)
    config = uvicorn.Config(mw, interface="auto", lifespan="off")
    config.load()
    assert config.interface == "asgi3"


@pytest.mark.asyncio
async def test_explicit_dunder_call_serves_too(twin: str) -> None:
    breaker = gg.CircuitBreaker(consecutive_failures=1, clock=gg.ManualClock())
    sent: list[Any] = []
    mw = GuardMiddleware(responder(503), {"*": breaker})
    await mw.__call__(_scope(), _receive, collector(sent))
    assert sent[0]["status"] == 503 and breaker.state == "open"


@pytest.mark.asyncio
async def test_awaited_in_a_task_of_its_own(twin: str) -> None:
    """Entered when first awaited: a call made in one task and awaited in another (a
    copied context) still finds its permit there."""
    bulkhead = gg.Bulkhead(1)
    sent: list[Any] = []
    mw = GuardMiddleware(responder(200), {"*": bulkhead})
    await asyncio.create_task(mw(_scope(), _receive, collector(sent)))
    assert bulkhead.in_flight == 0 and sent[0]["status"] == 200
    assert bulkhead.snapshot()["counters"]["successful"] == 1


@pytest.mark.asyncio
async def test_never_awaited_takes_nothing(twin: str) -> None:
    bulkhead = gg.Bulkhead(1)
    mw = GuardMiddleware(responder(200), {"*": bulkhead})
    pending = mw(_scope(), _receive, collector([]))
    assert bulkhead.in_flight == 0
    pending.close()
    del pending
    gc.collect()
    assert bulkhead.in_flight == 0


@pytest.mark.asyncio
async def test_closed_or_dropped_midway_gives_the_permit_back(twin: str) -> None:
    bulkhead = gg.Bulkhead(2)
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()

    mw = GuardMiddleware(app, {"*": bulkhead})
    for finish in ("close", "drop"):
        call = mw(_scope(), _receive, collector([]))
        assert call.send(None) is not None  # suspended inside the app, the slot held
        assert bulkhead.in_flight == 1
        if finish == "close":
            call.close()
        else:
            del call
            gc.collect()
        assert bulkhead.in_flight == 0


@pytest.mark.asyncio
async def test_cancelled_before_it_starts(twin: str) -> None:
    bulkhead = gg.Bulkhead(1)
    mw = GuardMiddleware(responder(200), {"*": bulkhead})
    call = mw(_scope(), _receive, collector([]))
    with pytest.raises(asyncio.CancelledError):
        call.throw(asyncio.CancelledError())
    assert bulkhead.in_flight == 0 and bulkhead.snapshot()["counters"]["successful"] == 0


@pytest.mark.asyncio
async def test_app_that_raises_before_its_coroutine_is_a_failure(twin: str) -> None:
    breaker = gg.CircuitBreaker(consecutive_failures=1, clock=gg.ManualClock())

    def app(scope: Any, receive: Any, send: Any) -> Any:  # not even a coroutine
        raise LookupError("no such app")

    with pytest.raises(LookupError, match="no such app"):
        await GuardMiddleware(app, {"*": breaker})(_scope(), _receive, collector([]))
    assert breaker.state == "open"


@pytest.mark.asyncio
async def test_a_scope_that_is_not_a_dict(twin: str) -> None:
    breaker = gg.CircuitBreaker(consecutive_failures=1, clock=gg.ManualClock())
    sent: list[Any] = []
    mw = GuardMiddleware(responder(500), {"/x": breaker})
    await mw(UserDict(_scope()), _receive, collector(sent))
    assert sent[0]["status"] == 500 and breaker.state == "open"
    await mw(UserDict(_scope()), _receive, collector(sent))
    assert sent[2]["status"] == 503


@pytest.mark.asyncio
async def test_a_release_error_never_hides_the_apps_exception(
        twin: str, caplog: pytest.LogCaptureFixture) -> None:
    """The permit stack lost (a block exited behind the middleware's back): the app's
    own exception still reaches the server, the release error is logged."""
    bulkhead = gg.Bulkhead(2)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        bulkhead.__exit__(None, None, None)  # pops the request's own permit
        raise KeyError("the app's")

    mw = GuardMiddleware(app, {"*": bulkhead})
    with caplog.at_level(logging.ERROR, logger="gameguard"):
        with pytest.raises(KeyError, match="the app's"):
            await mw(_scope(), _receive, collector([]))
    assert "raised while releasing" in caplog.text
    assert bulkhead.in_flight == 0


# -- both twins decide alike ------------------------------------------------------------------
#: what one request's app does: respond with a status, raise, respond then raise, or leave
#: without responding; on a WebSocket: accept then close with a code
ACTIONS = st.one_of(
    st.tuples(st.just("status"), st.sampled_from([200, 204, 404, 429, 500, 502, 503])),
    st.tuples(st.just("raise"), st.just(0)),
    st.tuples(st.just("respond_raise"), st.sampled_from([200, 500])),
    st.tuples(st.just("silent"), st.just(0)),
    st.tuples(st.just("ws_close"), st.sampled_from([1000, 1001, 1011])))


async def _run(twin: str, route: str, actions: list[tuple[str, int]]) -> tuple[Any, ...]:
    clock = gg.ManualClock()
    with gg._impl.use(twin):
        breaker = gg.CircuitBreaker(consecutive_failures=3, open_duration=5.0, clock=clock)
        players = gg.KeyedLimiter(1.0, 4, clock=clock)
        limiter = gg.TokenBucket(2.0, 6, clock=clock)
    guards: dict[str, Any] = {"/b": breaker, "/k": players, "/kb": [players, breaker],
                              "/lb": [limiter, breaker], "/bkl": [breaker, players, limiter]}
    current: list[tuple[str, int]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        what, n = current[0]
        if what == "ws_close":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": n})
            return
        if what in ("status", "respond_raise"):
            await send({"type": "http.response.start", "status": n, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        if what in ("raise", "respond_raise"):
            raise ValueError("app")

    with gg._impl.use(twin):
        mw = GuardMiddleware(app, {route: guards[route]}, key=lambda s: s["query_string"])
    seen: list[Any] = []
    for action in actions:
        current[:] = [action]
        sent: list[Any] = []
        ws = action[0] == "ws_close"
        queue = [{"type": "websocket.connect"}] if ws else []

        async def receive() -> Any:
            return queue.pop(0) if queue else {"type": "http.disconnect"}

        try:
            await mw(_scope(route, "websocket" if ws else "http"), receive, collector(sent))
            raised = None
        except ValueError as exc:
            raised = str(exc)
        seen.append((raised, [(m["type"], m.get("status"), m.get("code"),
                               dict(m.get("headers", [])).get(b"retry-after"))
                              for m in sent]))
        clock.advance(0.25)
    return (seen, breaker.state, breaker.snapshot()["calls"], breaker.snapshot()["counters"],
            limiter.tokens)


@settings(max_examples=60, deadline=None)
@given(route=st.sampled_from(["/b", "/k", "/kb", "/lb", "/bkl"]),
       actions=st.lists(ACTIONS, min_size=1, max_size=14))
def test_both_twins_answer_and_count_alike(route: str, actions: list[tuple[str, int]]) -> None:
    both_twins("edge")
    results = [asyncio.run(_run(twin, route, actions)) for twin in ("fast", "pure")]
    assert results[0] == results[1]
