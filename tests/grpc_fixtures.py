"""Real gRPC servers for the gRPC tests: ``grpc.aio`` and ``grpc.server`` on 127.0.0.1, on a
port the OS picks, started and stopped by the test. Generic handlers over raw bytes (no
.proto): service ``t.Game``; the request says what the handler does."""
from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent import futures
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional

import grpc
from grpc import aio

import gameguard as gg

SERVICE = "t.Game"
CODES = {c.name: c for c in grpc.StatusCode}
WAIT = 5.0  # seconds: the bound on every wait in these tests


def ident(b: bytes) -> bytes:
    return b


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


class Rejecting(gg.CircuitBreaker):
    """A guard that rejects every call with ``error`` (a forced-open breaker that raises
    what it is given: stands in for drains and shedders)."""

    def __init__(self, error: gg.RejectedError) -> None:
        super().__init__("rejecting")
        self.force_open()
        self.error = error

    def _rejection(self, now: float) -> gg.RejectedError:
        return self.error


class Arrivals:
    """What reached the handlers: method names in order, and events the streams wait on."""

    def __init__(self) -> None:
        self.calls: List[str] = []
        self.cleaned: List[str] = []  # streams whose generator ran its finally
        self.blocked = threading.Event()  # a sync stream is waiting on the gate


# -- grpc.aio --------------------------------------------------------------------------------
def aio_handlers(seen: Arrivals, gate: asyncio.Event) -> Dict[str, grpc.RpcMethodHandler]:
    async def echo(req: bytes, ctx: Any) -> bytes:
        seen.calls.append("Echo")
        return req

    async def abort(req: bytes, ctx: Any) -> bytes:
        seen.calls.append("Abort")
        await ctx.abort(CODES[req.decode()], "told to")
        return b""

    async def set_code(req: bytes, ctx: Any) -> bytes:
        seen.calls.append("SetCode")
        ctx.set_code(CODES[req.decode()])
        return b""

    async def crash(req: bytes, ctx: Any) -> bytes:
        seen.calls.append("Crash")
        raise RuntimeError("handler bug")

    async def inner(req: bytes, ctx: Any) -> bytes:
        seen.calls.append("Inner")
        raise gg.RateLimitExceeded("inner limit", retry_after=0.5, name="inner")

    async def slow(req: bytes, ctx: Any) -> bytes:
        seen.calls.append("Slow")
        await asyncio.wait_for(gate.wait(), WAIT)
        return req

    async def stream(req: bytes, ctx: Any) -> AsyncIterator[bytes]:
        # one message, then a second once the gate opens (never, in the cancel tests)
        seen.calls.append("Stream")
        try:
            yield b"first"
            await asyncio.wait_for(gate.wait(), WAIT)
            yield b"second"
        finally:
            seen.cleaned.append("Stream")

    async def write_stream(req: bytes, ctx: Any) -> None:
        seen.calls.append("WriteStream")
        try:
            await ctx.write(b"first")
            await asyncio.wait_for(gate.wait(), WAIT)
            await ctx.write(b"second")
        finally:
            seen.cleaned.append("WriteStream")

    async def stream_abort(req: bytes, ctx: Any) -> AsyncIterator[bytes]:
        seen.calls.append("StreamAbort")
        yield b"first"
        await ctx.abort(CODES[req.decode()], "stream told to")

    async def collect(reqs: AsyncIterator[bytes], ctx: Any) -> bytes:
        seen.calls.append("Collect")
        try:
            return b"".join([r async for r in reqs])
        finally:
            seen.cleaned.append("Collect")

    async def chat(reqs: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[bytes]:
        seen.calls.append("Chat")
        try:
            async for r in reqs:
                yield r
        finally:
            seen.cleaned.append("Chat")

    uu, us = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    su, ss = grpc.stream_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler
    return {
        "Echo": uu(echo, ident, ident), "Abort": uu(abort, ident, ident),
        "SetCode": uu(set_code, ident, ident), "Crash": uu(crash, ident, ident),
        "Inner": uu(inner, ident, ident), "Slow": uu(slow, ident, ident),
        "Stream": us(stream, ident, ident), "WriteStream": us(write_stream, ident, ident),
        "StreamAbort": us(stream_abort, ident, ident),
        "Collect": su(collect, ident, ident), "Chat": ss(chat, ident, ident),
    }


@contextlib.asynccontextmanager
async def aio_server(interceptors: Optional[List[Any]] = None
                     ) -> AsyncIterator[tuple[int, Arrivals, asyncio.Event, Any]]:
    """(port, arrivals, gate, server) of a started ``grpc.aio`` server; stopped on exit."""
    seen, gate = Arrivals(), asyncio.Event()
    server = aio.server(interceptors=interceptors or [])
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, aio_handlers(seen, gate))])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port, seen, gate, server
    finally:
        gate.set()
        await server.stop(None)


@contextlib.asynccontextmanager
async def aio_channel(port: int, interceptors: Optional[List[Any]] = None
                      ) -> AsyncIterator[Callable[[str], Any]]:
    """A ``grpc.aio`` channel to the port; yields ``stub(name)`` for any method kind."""
    async with aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as ch:
        kinds = {"Stream": ch.unary_stream, "WriteStream": ch.unary_stream,
                 "StreamAbort": ch.unary_stream,
                 "Collect": ch.stream_unary, "Chat": ch.stream_stream}

        def stub(name: str) -> Any:
            make = kinds.get(name, ch.unary_unary)
            return make(method(name), request_serializer=ident, response_deserializer=ident)
        yield stub


async def until(predicate: Callable[[], bool]) -> bool:
    """Poll ``predicate`` every 10 ms for at most WAIT seconds."""
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


# -- grpc.server (threads) -------------------------------------------------------------------
def sync_handlers(seen: Arrivals, gate: threading.Event) -> Dict[str, grpc.RpcMethodHandler]:
    def echo(req: bytes, ctx: Any) -> bytes:
        seen.calls.append("Echo")
        return req

    def abort(req: bytes, ctx: Any) -> bytes:
        seen.calls.append("Abort")
        ctx.abort(CODES[req.decode()], "told to")
        return b""

    def crash(req: bytes, ctx: Any) -> bytes:
        seen.calls.append("Crash")
        raise RuntimeError("handler bug")

    def inner(req: bytes, ctx: Any) -> bytes:
        seen.calls.append("Inner")
        raise gg.BulkheadFullError("inner bulkhead", name="inner")

    def stream(req: bytes, ctx: Any) -> Iterator[bytes]:
        seen.calls.append("Stream")
        try:
            yield b"first"
            seen.blocked.set()
            gate.wait(WAIT)
            yield b"second"
        finally:
            seen.cleaned.append("Stream")

    def collect(reqs: Iterator[bytes], ctx: Any) -> bytes:
        seen.calls.append("Collect")
        return b"".join(reqs)

    def chat(reqs: Iterator[bytes], ctx: Any) -> Iterator[bytes]:
        seen.calls.append("Chat")
        for r in reqs:
            yield r

    uu, us = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    su, ss = grpc.stream_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler
    return {"Echo": uu(echo, ident, ident), "Abort": uu(abort, ident, ident),
            "Crash": uu(crash, ident, ident), "Inner": uu(inner, ident, ident),
            "Stream": us(stream, ident, ident), "Collect": su(collect, ident, ident),
            "Chat": ss(chat, ident, ident)}


@contextlib.contextmanager
def sync_server(interceptors: Optional[List[Any]] = None
                ) -> Iterator[tuple[Callable[[str], Any], Arrivals, threading.Event]]:
    """(stub, arrivals, gate) for a started ``grpc.server`` and a sync channel to it."""
    seen, gate = Arrivals(), threading.Event()
    pool = futures.ThreadPoolExecutor(max_workers=8)
    server = grpc.server(pool, interceptors=interceptors or [])
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, sync_handlers(seen, gate))])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    kinds = {"Stream": channel.unary_stream, "Collect": channel.stream_unary,
             "Chat": channel.stream_stream}

    def stub(name: str) -> Any:
        make = kinds.get(name, channel.unary_unary)
        return make(method(name), request_serializer=ident, response_deserializer=ident)
    try:
        yield stub, seen, gate
    finally:
        gate.set()
        channel.close()
        server.stop(None).wait(WAIT)
        pool.shutdown(wait=True)


def wait_until(predicate: Callable[[], bool]) -> bool:
    """Poll ``predicate`` (threads) every 10 ms for at most WAIT seconds."""
    done = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return True
        done.wait(0.01)
    return predicate()
