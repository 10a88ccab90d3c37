"""GuardMiddleware driven in process by a raw ASGI driver: what a real server cannot be made
to do on cue (cancellation at a given await, an app that never answers), the shared status
and header rules, and configuration errors. Real-server tests: test_asgi.py."""
from __future__ import annotations

import asyncio
from typing import Any, Optional

import pytest

import gameguard as gg
from gameguard import _http
from gameguard.asgi import GuardMiddleware

DEADLINE = 10.0


async def _drive(app: Any, scope: dict[str, Any], messages: list[dict[str, Any]],
                 sent: Optional[list[dict[str, Any]]] = None) -> None:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()  # nothing more: wait until cancelled
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if sent is not None:
            sent.append(message)

    await app(scope, receive, send)


def _http_scope(path: str = "/x") -> dict[str, Any]:
    return {"type": "http", "path": path, "method": "GET", "headers": [],
            "query_string": b""}


async def holder_and_waiter(guards: Any, bulkhead: gg.Bulkhead,
                            **options: Any) -> tuple[Any, Any]:
    """Two requests through ``GuardMiddleware(app, guards)`` whose app waits for ever: the
    first holds ``bulkhead``'s slot, the second is left waiting for it."""
    started = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await receive()

    mw = GuardMiddleware(app, guards, **options)
    holder = asyncio.ensure_future(_drive(mw, _http_scope(), []))
    await asyncio.wait_for(started.wait(), DEADLINE)
    waiter = asyncio.ensure_future(_drive(mw, _http_scope(), []))
    for _ in range(100):
        if bulkhead.snapshot()["waiting"] == 1:
            break
        await asyncio.sleep(0)
    assert bulkhead.snapshot()["waiting"] == 1
    return holder, waiter


@pytest.mark.asyncio
async def test_cancellation_gives_the_permit_back(twin: str) -> None:
    bulkhead = gg.Bulkhead(1)
    started = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await receive()  # never answered

    mw = GuardMiddleware(app, {"*": bulkhead})
    task = asyncio.ensure_future(_drive(mw, _http_scope(), []))
    await asyncio.wait_for(started.wait(), DEADLINE)
    assert bulkhead.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bulkhead.in_flight == 0


@pytest.mark.asyncio
async def test_cancelled_while_waiting_for_a_slot_takes_nothing(twin: str) -> None:
    bulkhead = gg.Bulkhead(1, max_wait=None)
    limiter = gg.TokenBucket(100.0, 10, clock=bulkhead.clock)  # outer: taken before the wait
    holder, waiter = await holder_and_waiter({"*": [limiter, bulkhead]}, bulkhead)
    waiter.cancel()
    holder.cancel()
    for t in (waiter, holder):
        with pytest.raises(asyncio.CancelledError):
            await t
    assert bulkhead.in_flight == 0 and bulkhead.snapshot()["waiting"] == 0


@pytest.mark.asyncio
async def test_app_that_never_responds_counts_as_failed() -> None:
    breaker = gg.CircuitBreaker(consecutive_failures=1, clock=gg.ManualClock())

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    await _drive(GuardMiddleware(app, {"*": breaker}), _http_scope(), [])
    assert breaker.state == "open"


@pytest.mark.asyncio
async def test_other_scope_types_pass_untouched() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    limiter = gg.TokenBucket(1.0, 1, clock=gg.ManualClock())
    mw = GuardMiddleware(app, {"*": limiter})
    scope = {"type": "custom.thing"}  # no path at all
    await _drive(mw, scope, [])
    await _drive(mw, {"type": "lifespan"}, [])
    assert seen[0] is scope and len(seen) == 2
    assert limiter.tokens == 1.0


@pytest.mark.parametrize("guards, key, match", [
    ([("*", 1)], None, "guards must map"),
    ({"*": 3}, None, "guards\\['\\*'\\] must be a guard"),
    ({"*": []}, None, "is empty"),
    ({"/a*": gg.Bulkhead(1)}, None, "pattern"),
    ({"*": gg.KeyedLimiter(1.0)}, None, "pass key="),
    ({"*": gg.Bulkhead(1)}, "player", "key must be"),
])
def test_bad_configuration_is_refused_at_construction(guards: Any, key: Any,
                                                      match: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    with pytest.raises(gg.ConfigurationError, match=match):
        GuardMiddleware(app, guards, key=key)


def test_one_route_needs_one_clock_and_distinct_guards() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    b = gg.Bulkhead(1)
    with pytest.raises(gg.ConfigurationError, match="one clock"):
        GuardMiddleware(app, {"*": [b, gg.TokenBucket(1.0, clock=gg.ManualClock())]})
    with pytest.raises(gg.ConfigurationError, match="twice"):
        GuardMiddleware(app, {"*": [b, gg.pipeline(b)]})


@pytest.mark.asyncio
async def test_cancelled_in_an_inner_wait_releases_the_outer_blocks(twin: str) -> None:
    outer = gg.Bulkhead(4)
    per_player = gg.KeyedLimiter(100.0, 10)
    inner = gg.Bulkhead(1, max_wait=None)
    holder, waiter = await holder_and_waiter({"*": [outer, per_player, inner]}, inner,
                                             key=lambda s: "p")
    assert outer.in_flight == 2
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (outer.in_flight, inner.in_flight) == (1, 1)
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert (outer.in_flight, inner.in_flight) == (0, 0)


@pytest.mark.asyncio
async def test_inner_rejection_releases_outer_blocks_as_no_outcome(twin: str) -> None:
    clock = gg.ManualClock()
    breaker = gg.CircuitBreaker(consecutive_failures=1, clock=clock)
    per_player = gg.KeyedLimiter(1.0, 1, clock=clock)
    outer = gg.Bulkhead(2, clock=clock)
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = GuardMiddleware(app, {"*": [breaker, outer, per_player]}, key=lambda s: 1)
    await _drive(mw, _http_scope(), [], sent)
    await _drive(mw, _http_scope(), [], sent)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200, 429]
    assert outer.in_flight == 0
    assert breaker.snapshot()["calls"] == 1  # the rejected request counted as nothing


@pytest.mark.parametrize("error, status", [
    (gg.RateLimitExceeded(retry_after=0.2), 429), (gg.BulkheadFullError(), 429),
    (gg.CircuitOpenError(retry_after=3.0), 503), (gg.DrainingError(), 503),
    (gg.OverloadedError(retry_after=1.5), 503), (gg.RejectedError(), 503)])
def test_status_of_each_rejection(error: gg.RejectedError, status: int) -> None:
    assert _http.status_of(error) == status


@pytest.mark.parametrize("retry_after, header", [
    (None, None), (0.0, "1"), (0.2, "1"), (1.0, "1"), (1.0001, "2"), (59.5, "60"),
    (float("inf"), None), (float("nan"), None)])
def test_retry_after_header_is_whole_seconds_rounded_up(retry_after: Optional[float],
                                                         header: Optional[str]) -> None:
    headers = dict(_http.rejection_headers(gg.CircuitOpenError(retry_after=retry_after)))
    assert headers.get("Retry-After") == header


def test_close_reason_fits_a_close_frame_on_a_character_boundary() -> None:
    long = gg.CircuitOpenError("é" * 200, retry_after=2.0)
    reason = _http.close_reason(long)
    assert len(reason.encode("utf-8")) <= 123 and set(reason) == {"é"}
    assert _http.close_reason(gg.CircuitOpenError("busy", retry_after=2.5)) == \
        "busy; retry after 3 s"


@pytest.mark.asyncio
async def test_forced_open_breaker_is_503_without_retry_after(twin: str) -> None:
    breaker = gg.CircuitBreaker()
    breaker.force_open()
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a rejected request never reaches the app")

    await _drive(GuardMiddleware(app, {"/x": breaker}), _http_scope(), [], sent)
    start = sent[0]
    assert start["status"] == 503
    assert b"retry-after" not in dict(start["headers"])
    assert breaker.name in sent[1]["body"].decode()
