"""Run the guarded matchmaking service and a client that drives it, in one process:

    python examples/matchmaking/run.py

The server listens on 127.0.0.1 (a free port); everything is over in a few seconds (each
step is bounded, the whole run by ``DEADLINE``). The client's channel carries a
``ClientInterceptor`` with a circuit breaker, and it honours the server's ``retry-after-ms``.

1. eight players queue and are paired;
2. a spammer (another client, its own channel) fires five FindMatch at once: its per-player
   budget admits two, the rest are ``RESOURCE_EXHAUSTED`` with ``retry-after-ms``; it waits
   that long and is admitted;
3. three queue watchers: the bulkhead admits two, the third is refused until one cancels
   (a cancelled stream gives its slot back);
4. the server goes down: the first calls fail ``UNAVAILABLE``, the breaker opens, and the
   next call fails locally with ``CircuitOpenError`` without touching the network.
"""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, List

import grpc
from grpc import aio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gameguard as gg  # noqa: E402
from gameguard.grpc import ClientInterceptor  # noqa: E402

import service  # noqa: E402

DEADLINE = 30.0
CALL_TIMEOUT = 5.0


class Client:
    """A player's view of the service, through a guarded channel."""

    def __init__(self, channel: aio.Channel) -> None:
        self._find = channel.unary_unary(f"/{service.SERVICE}/FindMatch",
                                         request_serializer=service.dumps,
                                         response_deserializer=service.loads)
        self._watch = channel.unary_stream(f"/{service.SERVICE}/WatchQueue",
                                           request_serializer=service.dumps,
                                           response_deserializer=service.loads)

    async def find_match(self, player: str) -> Any:
        return await self._find({"player": player}, metadata=(("player-id", player),),
                                timeout=CALL_TIMEOUT)

    def watch(self, player: str) -> Any:
        return self._watch({}, metadata=(("player-id", player),), timeout=CALL_TIMEOUT)


def retry_after(error: aio.AioRpcError) -> float:
    ms = dict(error.trailing_metadata() or ()).get("retry-after-ms")
    return 0.0 if ms is None else int(ms) / 1000.0


async def pair_players(client: Client) -> None:
    matches = await asyncio.gather(*(client.find_match(f"player{i}") for i in range(8)))
    ids = sorted({m["match"] for m in matches})
    print(f"1. eight players queued, {len(ids)} matches made: "
          + ", ".join(f"#{m['match']} {'+'.join(m['players'])}"
                      for m in sorted({m['match']: m for m in matches}.values(),
                                      key=lambda m: m['match'])))


async def spam(client: Client, rogue: Client) -> None:
    delays: List[float] = []

    async def one() -> str:
        try:
            await rogue.find_match("spammer")
            return "matched"
        except aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                delays.append(retry_after(e))
                return f"RESOURCE_EXHAUSTED (retry in {delays[-1] * 1000:.0f} ms)"
            return e.code().name

    calls = [asyncio.ensure_future(one()) for _ in range(5)]
    await asyncio.sleep(0.2)
    await client.find_match("opponent")  # pairs with the spammer's one queued call
    outcomes = await asyncio.gather(*calls)
    print("2. spammer fired five at once: " + "; ".join(sorted(outcomes)))
    assert len(delays) == 3 and all(d > 0 for d in delays), outcomes
    # back off as long as the server said, then the spammer's budget has a token again
    await asyncio.sleep(max(delays))
    match, _ = await asyncio.gather(rogue.find_match("spammer"), client.find_match("late-one"))
    print(f"   after waiting retry-after-ms the spammer is admitted: match #{match['match']}")


async def watchers(client: Client, watch_slots: gg.Bulkhead) -> None:
    streams = [client.watch(f"watcher{i}") for i in range(2)]
    lengths = [(await s.read())["queued"] for s in streams]
    try:
        await client.watch("watcher2").read()
        raise SystemExit("a third watcher should have been refused")
    except aio.AioRpcError as e:
        print(f"3. two watchers admitted (queue lengths {lengths}); the third: {e.code().name}")
    streams[0].cancel()
    for _ in range(500):  # bounded: until the server has seen the cancellation
        if watch_slots.in_flight < 2:
            break
        await asyncio.sleep(0.01)
    third = client.watch("watcher2")
    print(f"   one watcher cancelled: the third is admitted "
          f"(queue length {(await third.read())['queued']})")
    for s in (streams[1], third):
        s.cancel()


async def outage(client: Client, server: aio.Server, breaker: gg.CircuitBreaker) -> None:
    await server.stop(None)
    seen: List[str] = []
    for _ in range(4):
        try:
            await client.find_match("late-player")
        except aio.AioRpcError as e:
            seen.append(e.code().name)
        except gg.CircuitOpenError as e:
            seen.append(f"CircuitOpenError (local; retry after {e.retry_after:.1f} s)")
    print("4. server down: " + "; ".join(seen) + f"; breaker {breaker.state}")
    assert breaker.state == "open" and seen[-1].startswith("CircuitOpenError"), seen


async def main() -> None:
    limiter, watch_slots, everything = service.guards()
    server = service.build_server(service.Matchmaker(), limiter, watch_slots, everything)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    breaker = gg.CircuitBreaker("matchmaking", consecutive_failures=2, open_duration=10.0)
    interceptor = ClientInterceptor({f"/{service.SERVICE}/*": breaker})
    target = f"127.0.0.1:{port}"
    try:
        # the spammer is another game client, with a channel of its own and no breaker
        async with aio.insecure_channel(target, interceptors=[interceptor]) as ch, \
                aio.insecure_channel(target) as rogue:
            client = Client(ch)
            await pair_players(client)
            await spam(client, Client(rogue))
            await watchers(client, watch_slots)
            await outage(client, server, breaker)
    finally:
        await server.stop(None)
    if everything.in_flight or watch_slots.in_flight:
        raise SystemExit(f"permits still held: {everything.snapshot()}, {watch_slots.snapshot()}")
    print("done: every permit returned")


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), DEADLINE))
