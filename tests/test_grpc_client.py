"""gameguard.grpc.ClientInterceptor on a grpc.aio channel to a real grpc.aio server."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
import pytest
from grpc import aio

import gameguard as gg
from gameguard.grpc import FAILURE_CODES, ClientInterceptor

from grpc_fixtures import WAIT, aio_channel, aio_server, method

FAILING = ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "DATA_LOSS", "RESOURCE_EXHAUSTED"]
ANSWERED = ["NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "ALREADY_EXISTS",
            "FAILED_PRECONDITION", "UNAUTHENTICATED", "UNKNOWN"]


def test_failure_codes_are_go_zeros_plus_resource_exhausted() -> None:
    assert {c.name for c in FAILURE_CODES} == set(FAILING)


def breaker(**kw: Any) -> gg.CircuitBreaker:
    kw.setdefault("consecutive_failures", 1)
    return gg.CircuitBreaker(open_duration=10.0, clock=kw.pop("clock", gg.ManualClock()), **kw)


@pytest.mark.asyncio
@pytest.mark.parametrize("code", FAILING)
async def test_failure_code_counts_and_open_breaker_fails_fast_locally(code: str,
                                                                       twin: str) -> None:
    cb = breaker()
    async with aio_server() as (port, seen, _, _s):
        async with aio_channel(port, [ClientInterceptor({"/t.Game/*": cb})]) as stub:
            with pytest.raises(aio.AioRpcError) as info:
                await stub("Abort")(code.encode(), timeout=WAIT)
            assert info.value.code().name == code
            assert cb.state == "open"
            with pytest.raises(gg.CircuitOpenError) as opened:
                await stub("Echo")(b"x", timeout=WAIT)
    assert opened.value.retry_after == pytest.approx(10.0)
    assert seen.calls == ["Abort"]  # the rejected call never reached the server


@pytest.mark.asyncio
@pytest.mark.parametrize("code", ANSWERED)
async def test_other_codes_mean_the_service_answered(code: str) -> None:
    cb = breaker()
    async with aio_server() as (port, seen, _, _s):
        async with aio_channel(port, [ClientInterceptor({"*": cb})]) as stub:
            for _ in range(3):
                with pytest.raises(aio.AioRpcError) as info:
                    await stub("Abort")(code.encode(), timeout=WAIT)
                assert info.value.code().name == code and info.value.details() == "told to"
    assert cb.state == "closed" and cb.snapshot()["failures"] == 0
    assert cb.snapshot()["calls"] == 3 and seen.calls == ["Abort"] * 3


@pytest.mark.asyncio
async def test_success_returns_the_call_with_its_metadata() -> None:
    cb = breaker()
    async with aio_server() as (port, _, _g, _s):
        async with aio_channel(port, [ClientInterceptor({"*": cb})]) as stub:
            call = stub("Echo")(b"hi", timeout=WAIT)
            assert await call == b"hi"
            assert await call.code() == grpc.StatusCode.OK
            assert await call.trailing_metadata() is not None
    assert cb.snapshot()["calls"] == 1 and cb.state == "closed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.asyncio
async def test_server_down_opens_the_breaker_then_calls_fail_without_the_network() -> None:
    clock = gg.ManualClock()
    cb = breaker(consecutive_failures=2, clock=clock)
    port = free_port()  # nothing listens there
    async with aio_channel(port, [ClientInterceptor({"*": cb})]) as stub:
        for _ in range(2):
            with pytest.raises(aio.AioRpcError) as info:
                await stub("Echo")(b"x", timeout=WAIT)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cb.state == "open"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(gg.CircuitOpenError):
            await stub("Echo")(b"x", timeout=WAIT)
        assert loop.time() - t0 < 1.0  # local: no connection attempt, no timeout
    # the server comes back: after open_duration one probe goes and closes the breaker
    async with aio_server() as (up, seen, _, _s):
        async with aio_channel(up, [ClientInterceptor({"*": cb})]) as stub:
            clock.advance(10.0)
            assert await stub("Echo")(b"probe", timeout=WAIT) == b"probe"
    assert cb.state == "closed" and seen.calls == ["Echo"]


@pytest.mark.asyncio
async def test_client_deadline_is_a_failure() -> None:
    cb = breaker()
    async with aio_server() as (port, _, _g, _s):
        async with aio_channel(port, [ClientInterceptor({"*": cb})]) as stub:
            with pytest.raises(aio.AioRpcError) as info:
                await stub("Slow")(b"", timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cb.state == "open"


@pytest.mark.asyncio
async def test_patterns_and_pipelines_per_method() -> None:
    bulkhead = gg.Bulkhead(1)
    cb = gg.CircuitBreaker(minimum_calls=100)
    guards = {"/t.Game/Slow": gg.pipeline(cb, bulkhead), "/t.Game/Abort": None,
              "*": gg.CircuitBreaker(consecutive_failures=1)}
    async with aio_server() as (port, seen, gate, _s):
        async with aio_channel(port, [ClientInterceptor(guards)]) as stub:
            slow = asyncio.ensure_future(stub("Slow")(b"s", timeout=WAIT))
            for _ in range(500):  # bounded: until the first call holds the slot
                if bulkhead.in_flight:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(gg.BulkheadFullError):  # local: the slot is held
                await stub("Slow")(b"t", timeout=WAIT)
            gate.set()
            assert await slow == b"s"
            for _ in range(2):  # unguarded: failures count nowhere
                with pytest.raises(aio.AioRpcError):
                    await stub("Abort")(b"INTERNAL", timeout=WAIT)
            assert await stub("Echo")(b"e", timeout=WAIT) == b"e"
    assert seen.calls == ["Slow", "Abort", "Abort", "Echo"]
    assert cb.snapshot()["calls"] == 1 and cb.snapshot()["failures"] == 0


@pytest.mark.asyncio
async def test_cancelled_call_releases_its_permit_and_counts_nothing() -> None:
    bulkhead = gg.Bulkhead(1)
    cb = gg.CircuitBreaker(minimum_calls=100)
    async with aio_server() as (port, seen, _gate, _s):
        async with aio_channel(port, [ClientInterceptor({"*": gg.pipeline(cb, bulkhead)})]
                               ) as stub:
            task = asyncio.ensure_future(stub("Slow")(b"s", timeout=WAIT))
            for _ in range(500):
                if seen.calls:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert bulkhead.in_flight == 0
            assert await stub("Echo")(b"e", timeout=WAIT) == b"e"
    assert cb.snapshot()["failures"] == 0


@pytest.mark.asyncio
async def test_fallback_answers_a_rejected_call() -> None:
    def cached(request: bytes, details: Any, continuation: Any) -> bytes:
        assert details.method in (method("Echo"), method("Echo").encode())
        return b"cached:" + request

    cb = gg.CircuitBreaker(fallback=cached)
    cb.force_open()
    async with aio_server() as (port, seen, _, _s):
        async with aio_channel(port, [ClientInterceptor({"*": cb})]) as stub:
            assert await stub("Echo")(b"x", timeout=WAIT) == b"cached:x"
    assert seen.calls == []


def test_client_guards_are_checked() -> None:
    with pytest.raises(gg.ConfigurationError, match="per key"):
        ClientInterceptor({"*": gg.KeyedLimiter(5)})
    with pytest.raises(gg.ConfigurationError, match="guards"):
        ClientInterceptor({"*": "breaker"})  # type: ignore[dict-item]
    with pytest.raises(gg.ConfigurationError, match="guards"):
        ClientInterceptor(None)  # type: ignore[arg-type]


# -- streaming calls: the permit is held until the status arrives ----------------------------
@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["Stream", "Collect", "Chat"])
async def test_client_stream_holds_its_permit_until_its_status(name: str, twin: str) -> None:
    bulkhead = gg.Bulkhead(1)
    async with aio_server() as (port, seen, gate, _s):
        async with aio_channel(port, ClientInterceptor({"*": bulkhead}).all()) as stub:
            call = stub(name)(b"", timeout=WAIT) if name == "Stream" else stub(name)(
                timeout=WAIT)
            if name == "Stream":
                assert await call.read() == b"first"
            else:
                await call.write(b"hello")
            assert bulkhead.in_flight == 1
            with pytest.raises(gg.BulkheadFullError):  # raised locally, where it is read
                await stub("Stream")(b"", timeout=WAIT).read()
            if name == "Stream":
                gate.set()
                assert [await call.read(), await call.read()] == [b"second", aio.EOF]
            else:
                await call.done_writing()
                if name == "Collect":
                    assert await call == b"hello"
                else:
                    assert [await call.read(), await call.read()] == [b"hello", aio.EOF]
            for _ in range(500):  # the done callback runs on the loop: bounded wait
                if bulkhead.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert bulkhead.in_flight == 0
    assert seen.calls == [name]


@pytest.mark.asyncio
@pytest.mark.parametrize("code, opens", [("UNAVAILABLE", True), ("DATA_LOSS", True),
                                         ("NOT_FOUND", False), ("CANCELLED", False)])
async def test_client_stream_status_counts_once(code: str, opens: bool) -> None:
    cb = breaker()
    async with aio_server() as (port, seen, _, _s):
        async with aio_channel(port, ClientInterceptor({"*": cb}).all()) as stub:
            call = stub("StreamAbort")(code.encode(), timeout=WAIT)
            assert await call.read() == b"first"
            with pytest.raises(aio.AioRpcError) as info:
                await call.read()
            assert info.value.code().name == code
            for _ in range(500):
                if cb.snapshot()["calls"] == (0 if code == "CANCELLED" else 1):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # time for a wrong second count to show
            if opens:
                with pytest.raises(gg.CircuitOpenError):
                    await stub("Stream")(b"", timeout=WAIT).read()
    assert cb.state == ("open" if opens else "closed")
    assert seen.calls == ["StreamAbort"]
    # a stream grpc reports cancelled (whoever cancelled it) counts nothing, like any
    # cancellation; every other status counts once
    assert (cb.snapshot()["calls"], cb.snapshot()["failures"]) == (
        0 if code == "CANCELLED" else 1, 1 if opens else 0)


@pytest.mark.asyncio
async def test_cancelled_client_stream_gives_its_permit_back() -> None:
    bulkhead = gg.Bulkhead(1)
    cb = gg.CircuitBreaker(minimum_calls=100)
    async with aio_server() as (port, seen, _gate, _s):
        async with aio_channel(port, ClientInterceptor({"*": gg.pipeline(cb, bulkhead)}).all()
                               ) as stub:
            call = stub("Stream")(b"", timeout=WAIT)
            assert await call.read() == b"first"
            call.cancel()
            for _ in range(500):
                if bulkhead.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert bulkhead.in_flight == 0
    assert cb.snapshot()["calls"] == 0  # no outcome
