"""gameguard.grpc.ServerInterceptor on a real grpc.aio server (127.0.0.1, OS-chosen port)."""
from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_status import rpc_status
from google.rpc import error_details_pb2

import gameguard as gg
from gameguard.grpc import ServerInterceptor, status_code

from grpc_fixtures import WAIT, Rejecting, aio_channel, aio_server, method, until

RE, UN = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE

REJECTIONS = [
    (gg.RateLimitExceeded("over budget", retry_after=0.2495, name="rl"), RE, "250"),
    (gg.BulkheadFullError("full", name="bh"), RE, None),
    (gg.CircuitOpenError("open", retry_after=3.0, name="cb"), UN, "3000"),
    (gg.DrainingError("draining", name="drain"), UN, None),
    (gg.OverloadedError("shedding", retry_after=0.001, name="shed"), UN, "1"),
]


def trailer(error: aio.AioRpcError, key: str) -> Any:
    return dict(error.trailing_metadata() or ()).get(key)


async def rpc_error(call: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        await call
    return info.value


@pytest.mark.asyncio
@pytest.mark.parametrize("error, code, retry_ms", REJECTIONS,
                         ids=[type(e).__name__ for e, _, _ in REJECTIONS])
async def test_rejection_maps_to_status_with_retry_after(error: gg.RejectedError,
                                                         code: grpc.StatusCode,
                                                         retry_ms: Any) -> None:
    assert status_code(error) == code
    async with aio_server([ServerInterceptor({"*": Rejecting(error)})]) as (port, seen, _, _s):
        async with aio_channel(port) as stub:
            err = await rpc_error(stub("Echo")(b"x", timeout=WAIT))
    assert err.code() == code
    assert err.details() == str(error)
    assert trailer(err, "retry-after-ms") == retry_ms
    status = rpc_status.from_call(err)  # also checks code and message agree with the call
    assert status is not None and status.code == code.value[0]
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    if retry_ms is None:
        assert infos == []
    else:
        info = error_details_pb2.RetryInfo()
        infos[0].Unpack(info)
        assert info.retry_delay.ToMilliseconds() == int(retry_ms)
    assert seen.calls == []  # a rejected call never reaches its handler


@pytest.mark.asyncio
async def test_real_limiter_rejects_on_both_twins(twin: str) -> None:
    bucket = gg.TokenBucket(1, 2, clock=gg.ManualClock())
    async with aio_server([ServerInterceptor({"*": bucket})]) as (port, seen, _, _s):
        async with aio_channel(port) as stub:
            assert [await stub("Echo")(b"%d" % i, timeout=WAIT) for i in range(2)] == [b"0", b"1"]
            err = await rpc_error(stub("Echo")(b"2", timeout=WAIT))
    assert err.code() == RE and trailer(err, "retry-after-ms") == "1000"
    assert seen.calls == ["Echo", "Echo"]


@pytest.mark.asyncio
async def test_keyed_limiter_spends_each_players_budget() -> None:
    limiter = gg.KeyedLimiter(1, 1, clock=gg.ManualClock())
    keys: list[tuple[str, Any]] = []

    def player(m: str, metadata: Any) -> Any:
        keys.append((m, dict(metadata).get("player-id")))
        return dict(metadata).get("player-id")

    async with aio_server([ServerInterceptor({"/t.Game/Echo": limiter}, key=player)]
                          ) as (port, seen, _, _s):
        async with aio_channel(port) as stub:
            echo = stub("Echo")
            assert await echo(b"a1", metadata=(("player-id", "ann"),), timeout=WAIT) == b"a1"
            err = await rpc_error(echo(b"a2", metadata=(("player-id", "ann"),), timeout=WAIT))
            assert await echo(b"b1", metadata=(("player-id", "bob"),), timeout=WAIT) == b"b1"
    assert err.code() == RE and "'ann'" in err.details()
    assert keys == [(method("Echo"), "ann")] * 2 + [(method("Echo"), "bob")]


def test_keyed_limiter_needs_a_key_function() -> None:
    with pytest.raises(gg.ConfigurationError, match=r"guards\['\*'\].*key="):
        ServerInterceptor({"*": gg.KeyedLimiter(5)})
    with pytest.raises(gg.ConfigurationError, match="key"):
        ServerInterceptor({"*": gg.KeyedLimiter(5)}, key="player-id")  # type: ignore[arg-type]


@pytest.mark.parametrize("guards", [{"*": 3}, {"*": object()}, ["*"], {"a*b": None}, {"": None}])
def test_bad_guards_table_is_a_configuration_error(guards: Any) -> None:
    with pytest.raises(gg.ConfigurationError, match="guards"):
        ServerInterceptor(guards)


@pytest.mark.asyncio
async def test_most_specific_pattern_wins_and_none_means_unguarded() -> None:
    closed = Rejecting(gg.CircuitOpenError("service open", name="svc"))
    table = {"*": Rejecting(gg.DrainingError("draining")), "/t.Game/*": closed,
             "/t.Game/Echo": None}
    async with aio_server([ServerInterceptor(table)]) as (port, seen, _, _s):
        async with aio_channel(port) as stub:
            assert await stub("Echo")(b"free", timeout=WAIT) == b"free"
            err = await rpc_error(stub("Abort")(b"OK", timeout=WAIT))
    assert err.code() == UN and err.details() == "service open"
    assert seen.calls == ["Echo"]


@pytest.mark.asyncio
@pytest.mark.parametrize("name, request_, failed", [
    ("Echo", b"x", 0),
    ("Abort", b"NOT_FOUND", 0),          # aborted, but the handler answered
    ("Abort", b"INVALID_ARGUMENT", 0),
    ("Abort", b"UNAVAILABLE", 1),         # aborted with a failure status
    ("Abort", b"INTERNAL", 1),
    ("Abort", b"UNKNOWN", 1),
    ("SetCode", b"DATA_LOSS", 1),         # returned after setting a failure status
    ("SetCode", b"ALREADY_EXISTS", 0),
    ("Crash", b"", 1),                    # a handler exception is a failure
])
async def test_breaker_judges_by_the_status_the_handler_set(name: str, request_: bytes,
                                                            failed: int, twin: str) -> None:
    breaker = gg.CircuitBreaker(minimum_calls=100, clock=gg.ManualClock())
    async with aio_server([ServerInterceptor({"*": breaker})]) as (port, seen, _, _s):
        async with aio_channel(port) as stub:
            try:
                await stub(name)(request_, timeout=WAIT)
            except aio.AioRpcError:
                pass
            # abort() sends the status before it raises: the client may hear first
            assert await until(lambda: breaker.snapshot()["calls"] == 1)
    snap = breaker.snapshot()
    assert (snap["calls"], snap["failures"]) == (1, failed)
    assert seen.calls == [name]


@pytest.mark.asyncio
async def test_failing_handler_opens_the_breaker_and_then_never_runs() -> None:
    breaker = gg.CircuitBreaker(consecutive_failures=2, open_duration=30,
                                clock=gg.ManualClock())
    async with aio_server([ServerInterceptor({"*": breaker})]) as (port, seen, _, _s):
        async with aio_channel(port) as stub:
            for _ in range(2):
                assert (await rpc_error(stub("Crash")(b"", timeout=WAIT))).code() == \
                    grpc.StatusCode.UNKNOWN
            err = await rpc_error(stub("Crash")(b"", timeout=WAIT))
    assert breaker.state == "open"
    assert err.code() == UN and trailer(err, "retry-after-ms") == "30000"
    assert seen.calls == ["Crash", "Crash"]


@pytest.mark.asyncio
async def test_rejection_raised_inside_the_handler_is_mapped_too() -> None:
    breaker = gg.CircuitBreaker(minimum_calls=100, clock=gg.ManualClock())
    async with aio_server([ServerInterceptor({"*": breaker})]) as (port, _seen, _, _s):
        async with aio_channel(port) as stub:
            err = await rpc_error(stub("Inner")(b"", timeout=WAIT))
    assert err.code() == RE and err.details() == "inner limit"
    assert trailer(err, "retry-after-ms") == "500"
    assert breaker.snapshot()["failures"] == 0  # local overload, not a failure


@pytest.mark.asyncio
async def test_bulkhead_slot_is_held_by_a_unary_call_in_flight() -> None:
    bulkhead = gg.Bulkhead(1)
    async with aio_server([ServerInterceptor({"*": bulkhead})]) as (port, seen, gate, _s):
        async with aio_channel(port) as stub:
            slow = asyncio.ensure_future(stub("Slow")(b"s", timeout=WAIT))
            assert await until(lambda: bulkhead.in_flight == 1)
            err = await rpc_error(stub("Echo")(b"x", timeout=WAIT))
            gate.set()
            assert await slow == b"s"
    assert err.code() == RE and "full" in err.details()
    assert bulkhead.in_flight == 0


# -- streams: a stream holds its permit for its whole life -----------------------------------
async def open_stream(stub: Any, name: str) -> Any:
    """Start a ``name`` call and wait until the server has answered or read its first message."""
    if name in ("Stream", "WriteStream"):
        call = stub(name)(b"", timeout=WAIT)
        assert await call.read() == b"first"
    else:
        call = stub(name)(timeout=WAIT)
        await call.write(b"hello")
        if name == "Chat":
            assert await call.read() == b"hello"
    return call


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["Stream", "WriteStream", "Collect", "Chat"])
async def test_stream_holds_its_permit_until_it_ends(name: str, twin: str) -> None:
    bulkhead = gg.Bulkhead(1)
    async with aio_server([ServerInterceptor({"*": bulkhead})]) as (port, seen, gate, _s):
        async with aio_channel(port) as stub:
            call = await open_stream(stub, name)
            assert await until(lambda: bulkhead.in_flight == 1)
            err = await rpc_error(stub("Echo")(b"x", timeout=WAIT))  # the slot is taken
            if name in ("Stream", "WriteStream"):
                gate.set()
                assert [await call.read(), await call.read()] == [b"second", aio.EOF]
            elif name == "Collect":
                await call.done_writing()
                assert await call == b"hello"
            else:
                await call.done_writing()
                assert await call.read() is aio.EOF
            assert await until(lambda: bulkhead.in_flight == 0)
            assert await stub("Echo")(b"y", timeout=WAIT) == b"y"
    assert err.code() == RE
    assert bulkhead.in_flight == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["Stream", "WriteStream", "Collect", "Chat"])
async def test_cancelled_stream_gives_its_permit_back(name: str, twin: str) -> None:
    bulkhead = gg.Bulkhead(1)
    breaker = gg.CircuitBreaker(minimum_calls=100)
    async with aio_server([ServerInterceptor({"*": gg.pipeline(breaker, bulkhead)})]
                          ) as (port, seen, _gate, _s):
        async with aio_channel(port) as stub:
            call = await open_stream(stub, name)
            assert await until(lambda: bulkhead.in_flight == 1)
            call.cancel()
            assert await until(lambda: bulkhead.in_flight == 0)
            assert await until(lambda: seen.cleaned == [name])  # the handler was closed too
            assert await stub("Echo")(b"y", timeout=WAIT) == b"y"
    assert breaker.snapshot()["failures"] == 0  # a cancelled call is no outcome


@pytest.mark.asyncio
async def test_unguarded_server_methods_pass_through_and_unknown_methods_stay_unknown() -> None:
    async with aio_server([ServerInterceptor({"/t.Game/Abort": gg.Bulkhead(1)})]
                          ) as (port, seen, _, _s):
        async with aio_channel(port) as stub:
            assert await stub("Echo")(b"x", timeout=WAIT) == b"x"
            async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                missing = ch.unary_unary("/t.Game/Nope")
                err = await rpc_error(missing(b"", timeout=WAIT))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert seen.calls == ["Echo"]


@pytest.mark.asyncio
async def test_sync_handler_on_an_aio_server_is_refused_loudly() -> None:
    def sync_echo(req: bytes, ctx: Any) -> bytes:
        return req

    interceptor = ServerInterceptor({"*": gg.Bulkhead(1)})
    handler = grpc.unary_unary_rpc_method_handler(sync_echo)
    with pytest.raises(TypeError, match="SyncServerInterceptor"):
        interceptor._guarded("/t.Game/SyncEcho", handler)


@pytest.mark.asyncio
async def test_guard_fallback_answers_instead_of_a_status() -> None:
    breaker = gg.CircuitBreaker(fallback=lambda request, context: b"fallback:" + request)
    breaker.force_open()
    async with aio_server([ServerInterceptor({"/t.Game/Echo": breaker})]) as (port, seen, _, _s):
        async with aio_channel(port) as stub:
            assert await stub("Echo")(b"x", timeout=WAIT) == b"fallback:x"
    assert seen.calls == []


@pytest.mark.asyncio
async def test_registered_method_handlers_are_guarded_too() -> None:
    # what code generated by recent grpcio-tools registers: pre-registered methods
    calls: list[bytes] = []

    async def find(req: bytes, ctx: Any) -> bytes:
        calls.append(req)
        return req

    bucket = gg.TokenBucket(1, 1, clock=gg.ManualClock())
    server = aio.server(interceptors=[ServerInterceptor({"/game.Match/Find": bucket})])
    server.add_registered_method_handlers(
        "game.Match", {"Find": grpc.unary_unary_rpc_method_handler(find)})
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = ch.unary_unary("/game.Match/Find", _registered_method=True)
            assert await stub(b"a", timeout=WAIT) == b"a"
            err = await rpc_error(stub(b"b", timeout=WAIT))
    finally:
        await server.stop(None)
    assert err.code() == RE and calls == [b"a"]
