"""The gRPC interceptors take ``rules.guard(resource)``: each unary call runs under the rule
in force when it arrives, so a reload changes what the next call meets; a stream, which holds
one permit for its whole life, needs a fixed guard and says so."""
from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc import aio

import gameguard as gg
from gameguard.grpc import ClientInterceptor, ServerInterceptor

from grpc_fixtures import WAIT, aio_channel, aio_server


def rules_file(path: Path, capacity: int) -> Path:
    path.write_text(json.dumps({"resource": {"game": {
        "limit": {"kind": "token", "rate": 0.001, "capacity": capacity}}}}))
    return path


@pytest.mark.asyncio
async def test_server_applies_the_rule_in_force_and_a_reload(tmp_path: Path) -> None:
    path = rules_file(tmp_path / "rules.json", 2)
    rules = gg.Rules.load(path, clock=gg.ManualClock())
    async with aio_server([ServerInterceptor({"*": rules.guard("game")})]) as (port, seen, _, _s):
        async with aio_channel(port) as stub:
            echo = stub("Echo")
            assert [await echo(b"%d" % i, timeout=WAIT) for i in range(2)] == [b"0", b"1"]
            with pytest.raises(aio.AioRpcError) as info:
                await echo(b"2", timeout=WAIT)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            rules_file(path, 5)
            assert rules.reload()  # a new capacity: a new bucket, full
            assert await echo(b"3", timeout=WAIT) == b"3"
    assert seen.calls == ["Echo"] * 3


@pytest.mark.asyncio
async def test_client_interceptor_routes_through_rules(tmp_path: Path) -> None:
    rules = gg.Rules.load(rules_file(tmp_path / "rules.json", 1), clock=gg.ManualClock())
    async with aio_server() as (port, seen, _, _s):
        async with aio_channel(port, [ClientInterceptor({"*": rules.guard("game")})]) as stub:
            assert await stub("Echo")(b"a", timeout=WAIT) == b"a"
            with pytest.raises(gg.RateLimitExceeded):
                await stub("Echo")(b"b", timeout=WAIT)
    assert seen.calls == ["Echo"]  # the refused call never left the client


@pytest.mark.asyncio
async def test_a_stream_routed_to_rules_is_refused_clearly(tmp_path: Path) -> None:
    rules = gg.Rules.load(rules_file(tmp_path / "rules.json", 5), clock=gg.ManualClock())
    interceptor = ClientInterceptor({"*": rules.guard("game")})
    async with aio_server() as (port, seen, _, _s):
        async with aio_channel(port, interceptor.all()) as stub:
            with pytest.raises(TypeError, match="unary calls only"):
                async for _ in stub("Stream")(b"3", timeout=WAIT):
                    pass
    assert seen.calls == []
