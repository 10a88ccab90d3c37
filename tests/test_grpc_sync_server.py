"""gameguard.grpc.SyncServerInterceptor on a real grpc.server (thread pool, 127.0.0.1)."""
from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status
from google.rpc import error_details_pb2

import gameguard as gg
from gameguard.grpc import SyncServerInterceptor

from grpc_fixtures import WAIT, Rejecting, method, sync_server, wait_until

RE, UN = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=WAIT, **kwargs)
    return info.value


@pytest.mark.parametrize("error, code", [
    (gg.RateLimitExceeded("over", retry_after=1.5, name="rl"), RE),
    (gg.BulkheadFullError("full", name="bh"), RE),
    (gg.CircuitOpenError("open", retry_after=0.0004, name="cb"), UN),
    (gg.DrainingError("draining", name="d"), UN),
    (gg.OverloadedError("shed", name="s"), UN),
])
def test_rejection_maps_to_status(error: gg.RejectedError, code: grpc.StatusCode) -> None:
    with sync_server([SyncServerInterceptor({"*": Rejecting(error)})]) as (stub, seen, _):
        err = rpc_error(stub("Echo"), b"x")
    assert err.code() == code and err.details() == str(error)
    trailers = dict(err.trailing_metadata())
    status = rpc_status.from_call(err)
    assert status is not None and status.code == code.value[0]
    if error.retry_after is None:
        assert "retry-after-ms" not in trailers and list(status.details) == []
    else:
        ms = {1.5: 1500, 0.0004: 1}[error.retry_after]
        assert trailers["retry-after-ms"] == str(ms)
        info = error_details_pb2.RetryInfo()
        status.details[0].Unpack(info)
        assert info.retry_delay.ToMilliseconds() == ms
    assert seen.calls == []


def test_keyed_limiter_per_player(twin: str) -> None:
    limiter = gg.KeyedLimiter(1, 1, clock=gg.ManualClock())
    interceptor = SyncServerInterceptor(
        {"/t.Game/*": limiter}, key=lambda m, md: (m, dict(md).get("player-id")))
    with sync_server([interceptor]) as (stub, seen, _):
        echo = stub("Echo")
        assert echo(b"a", metadata=(("player-id", "ann"),), timeout=WAIT) == b"a"
        err = rpc_error(echo, b"a", metadata=(("player-id", "ann"),))
        assert echo(b"b", metadata=(("player-id", "bob"),), timeout=WAIT) == b"b"
    assert err.code() == RE and "ann" in err.details()
    assert (method("Echo"), "bob") in limiter


@pytest.mark.parametrize("name, request_, failed", [
    ("Echo", b"x", 0), ("Abort", b"NOT_FOUND", 0), ("Abort", b"DEADLINE_EXCEEDED", 1),
    ("Abort", b"RESOURCE_EXHAUSTED", 1), ("Crash", b"", 1), ("Inner", b"", 0),
])
def test_breaker_judges_by_status(name: str, request_: bytes, failed: int, twin: str) -> None:
    breaker = gg.CircuitBreaker(minimum_calls=100, clock=gg.ManualClock())
    with sync_server([SyncServerInterceptor({"*": breaker})]) as (stub, seen, _):
        try:
            stub(name)(request_, timeout=WAIT)
        except grpc.RpcError as err:
            if name == "Inner":  # the handler's own rejection is mapped too
                assert err.code() == RE and err.details() == "inner bulkhead"
    snap = breaker.snapshot()
    assert (snap["calls"], snap["failures"]) == ((0 if name == "Inner" else 1), failed)
    assert seen.calls == [name]


def test_stream_holds_its_permit_until_it_ends(twin: str) -> None:
    bulkhead = gg.Bulkhead(1)
    with sync_server([SyncServerInterceptor({"*": bulkhead})]) as (stub, seen, gate):
        responses = stub("Stream")(b"", timeout=WAIT)
        assert next(responses) == b"first"
        assert bulkhead.in_flight == 1
        assert rpc_error(stub("Echo"), b"x").code() == RE
        gate.set()
        assert list(responses) == [b"second"]
        assert wait_until(lambda: bulkhead.in_flight == 0)
        assert stub("Echo")(b"y", timeout=WAIT) == b"y"
        assert stub("Collect")(iter([b"a", b"b"]), timeout=WAIT) == b"ab"
        assert list(stub("Chat")(iter([b"c", b"d"]), timeout=WAIT)) == [b"c", b"d"]
    assert bulkhead.in_flight == 0


def test_cancelled_stream_gives_its_permit_back_while_the_handler_is_blocked(twin: str) -> None:
    bulkhead = gg.Bulkhead(1)
    with sync_server([SyncServerInterceptor({"*": bulkhead})]) as (stub, seen, gate):
        responses = stub("Stream")(b"", timeout=WAIT)
        assert next(responses) == b"first"
        assert bulkhead.in_flight == 1 and seen.blocked.wait(WAIT)
        responses.cancel()  # the handler is blocked on the gate: only grpc's callback can tell
        assert wait_until(lambda: bulkhead.in_flight == 0)
        assert seen.cleaned == []  # released while the handler is still blocked
        assert stub("Echo")(b"y", timeout=WAIT) == b"y"
        gate.set()
        assert wait_until(lambda: seen.cleaned == ["Stream"])
    assert bulkhead.in_flight == 0


def test_waiting_bulkhead_waits_on_the_worker_thread() -> None:
    bulkhead = gg.Bulkhead(1, max_wait=WAIT)
    with sync_server([SyncServerInterceptor({"/t.Game/Stream": bulkhead,
                                             "/t.Game/Echo": bulkhead})]) as (stub, _, gate):
        responses = stub("Stream")(b"", timeout=WAIT)
        assert next(responses) == b"first"
        result: list[bytes] = []
        waiter = threading.Thread(target=lambda: result.append(stub("Echo")(b"w", timeout=WAIT)))
        waiter.start()
        assert wait_until(lambda: bulkhead.snapshot()["waiting"] == 1)
        gate.set()
        assert list(responses) == [b"second"]
        waiter.join(WAIT)
    assert result == [b"w"]


def test_keyed_limiter_on_a_stream_and_a_fallback_on_a_unary_call() -> None:
    limiter = gg.KeyedLimiter(1, 1, clock=gg.ManualClock())
    breaker = gg.CircuitBreaker(fallback=lambda request, context: b"cached")
    breaker.force_open()
    interceptor = SyncServerInterceptor({"/t.Game/Stream": limiter, "/t.Game/Echo": breaker},
                                        key=lambda m, md: dict(md)["player-id"])
    ann = (("player-id", "ann"),)
    with sync_server([interceptor]) as (stub, seen, gate):
        gate.set()
        assert list(stub("Stream")(b"", metadata=ann, timeout=WAIT)) == [b"first", b"second"]
        with pytest.raises(grpc.RpcError) as info:
            list(stub("Stream")(b"", metadata=ann, timeout=WAIT))
        assert stub("Echo")(b"x", timeout=WAIT) == b"cached"
    assert info.value.code() == RE and "'ann'" in info.value.details()
    assert seen.calls == ["Stream"]
