"""The gRPC server interceptor's overhead on a unary loopback call (grpc.aio).

One process, one event loop: a grpc.aio server on 127.0.0.1 per case (``bare``: no
interceptor; ``passthrough``: an interceptor that only calls ``continuation``, grpc's own
price for having one; then gameguard setups), all up at once so every case runs under the
same load, and a channel to each. The handler is a no-op echo. Target: guarded ≤ 1.05× bare.

Two ways to run it:

- ``make bench`` / pytest-benchmark: each round makes LOOP sequential calls; the summary
  gives each case as a multiple of ``bare``. Cases run one after another, so on a shared
  machine drift between them can exceed the 5 % being measured.
- ``python benchmarks/bench_grpc.py [calls]``: the figure to quote. Calls to every case are
  interleaved in a fresh random order each turn, each timed alone, so load drift hits
  every case alike; prints the median per call and the ratio to ``bare``.

The ``grpc-interceptor-inprocess`` group times gameguard's own share with no network: the
wrapped handler awaited with a stand-in context, against the handler awaited bare. Its
instruction count per call is exact under callgrind (two loop lengths; the difference over
the extra calls; a whole loopback call is not: grpc's threads vary it by about 2 %):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/bench_grpc.py --inprocess bulkhead 20000   # and 40000
"""
from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, Optional

import grpc
import pytest
from grpc import aio

import gameguard as gg
from gameguard.grpc import ServerInterceptor

METHOD = "/bench.Game/Echo"
LOOP = 1000  # calls per round (as conftest.LOOP: the ratio summary divides by it)
ROUNDS = 9
MD = (("player-id", "p1"),)


def ident(b: bytes) -> bytes:
    return b


async def echo(req: bytes, ctx: Any) -> bytes:
    return req


class Passthrough(aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


def player(method: str, metadata: Any) -> Any:
    for k, v in metadata:
        if k == "player-id":
            return v
    return None


CASES: Dict[str, Optional[Callable[[], Any]]] = {
    "bare": None,
    "passthrough": Passthrough,
    "bulkhead": lambda: ServerInterceptor({"*": gg.Bulkhead(1000)}),
    "breaker+bulkhead": lambda: ServerInterceptor(
        {"/bench.Game/*": gg.pipeline(gg.CircuitBreaker(), gg.Bulkhead(1000))}),
    "keyed-limiter": lambda: ServerInterceptor({METHOD: gg.KeyedLimiter(1e9)}, key=player),
}


async def start_all() -> tuple[Dict[str, Any], Callable[[], Any]]:
    """One started server and channel per case: ({case: unary callable}, async stop)."""
    servers, channels, calls = [], [], {}
    for name, make in CASES.items():
        server = aio.server(interceptors=[] if make is None else [make()])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "bench.Game", {"Echo": grpc.unary_unary_rpc_method_handler(echo, ident, ident)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        servers.append(server)
        channels.append(channel)
        calls[name] = channel.unary_unary(METHOD, request_serializer=ident,
                                          response_deserializer=ident)
        assert await calls[name](b"warm", metadata=MD) == b"warm"

    async def stop() -> None:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(None)
    return calls, stop


@pytest.fixture(scope="module")
def stubs() -> Iterator[tuple[asyncio.AbstractEventLoop, Dict[str, Any]]]:
    loop = asyncio.new_event_loop()
    calls, stop = loop.run_until_complete(start_all())
    try:
        yield loop, calls
    finally:
        loop.run_until_complete(stop())
        loop.close()


@pytest.mark.benchmark(group="grpc-aio-unary")
@pytest.mark.parametrize("case", list(CASES))
def test_grpc_unary(benchmark: Any, stubs: Any, case: str) -> None:
    loop, calls = stubs
    call = calls[case]

    async def many() -> None:
        for _ in range(LOOP):
            await call(b"x", metadata=MD)
    benchmark.pedantic(lambda: loop.run_until_complete(many()), rounds=ROUNDS, warmup_rounds=1)


class StandInContext:
    """What the wrapper reads of a grpc.aio context on the success path."""

    def code(self) -> None:
        return None

    def invocation_metadata(self) -> Any:
        return MD


def wrapped(case: str) -> Callable[..., Any]:
    """``case``'s interceptor's wrapper of the echo handler (``bare``: the handler)."""
    make = CASES[case]
    handler = grpc.unary_unary_rpc_method_handler(echo, ident, ident)
    return echo if make is None else make()._guarded(METHOD, handler).unary_unary


async def inprocess(behaviour: Callable[..., Any], n: int) -> None:
    """``n`` awaited calls of ``behaviour`` with a stand-in context: no network."""
    ctx = StandInContext()
    for _ in range(n):
        await behaviour(b"x", ctx)


@pytest.mark.benchmark(group="grpc-interceptor-inprocess")
@pytest.mark.parametrize("case", [c for c in CASES if c != "passthrough"])
def test_interceptor_inprocess(benchmark: Any, case: str) -> None:
    loop, behaviour = asyncio.new_event_loop(), wrapped(case)
    try:
        benchmark.pedantic(lambda: loop.run_until_complete(inprocess(behaviour, LOOP)),
                           rounds=50, warmup_rounds=2)
    finally:
        loop.close()


async def interleaved(n: int) -> Dict[str, float]:
    """Median seconds per call of each case, calls interleaved in random order."""
    calls, stop = await start_all()
    times: Dict[str, list[float]] = {k: [] for k in calls}
    names, clock = list(calls), time.perf_counter
    try:
        for _ in range(n):
            random.shuffle(names)
            for name in names:
                call = calls[name]
                t0 = clock()
                await call(b"x", metadata=MD)
                times[name].append(clock() - t0)
    finally:
        await stop()
    return {k: statistics.median(v) for k, v in times.items()}




if __name__ == "__main__":
    if sys.argv[1:2] == ["--inprocess"]:
        asyncio.run(inprocess(wrapped(sys.argv[2]), int(sys.argv[3])))
        sys.exit()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    med = asyncio.run(interleaved(n))
    print(f"grpc.aio unary loopback call, {n} interleaved calls per case (median per call)")
    for name, t in med.items():
        print(f"  {name:18s} {t * 1e6:8.1f} us  {t / med['bare']:6.3f}x bare")
