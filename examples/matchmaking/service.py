"""A grpc.aio matchmaking service guarded by gameguard.

``game.Matchmaking`` (JSON over generic handlers, so no .proto to compile):

- ``FindMatch`` (unary): queue a player; answers with a match once an opponent queues, or
  ``NOT_FOUND`` when nobody comes within ``MATCH_WAIT`` (an answer, not a failure). Each
  player may ask ``FIND_RATE`` times a second, ``FIND_BURST`` at once (a ``KeyedLimiter``
  keyed by the ``player-id`` metadata); asking again while queued is ``ALREADY_EXISTS``.
- ``WatchQueue`` (unary-stream): the queue length, pushed as it changes. At most
  ``MAX_WATCHERS`` streams at once (a ``Bulkhead``): a stream holds its slot until it ends
  or the client cancels it.

Every call also goes through a ``Bulkhead`` of ``MAX_IN_FLIGHT``: two interceptors, because a
keyed limiter takes its key per call and so is its own route.
"""
from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, AsyncIterator, Dict, Optional

import grpc
from grpc import aio

import gameguard as gg
from gameguard.grpc import ServerInterceptor

SERVICE = "game.Matchmaking"
FIND_RATE, FIND_BURST = 2.0, 2
MAX_WATCHERS = 2
MAX_IN_FLIGHT = 64
MATCH_WAIT = 2.0  # seconds a queued player waits for an opponent


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def loads(data: bytes) -> Any:
    return json.loads(data)


def player_id(method: str, metadata: Any) -> Optional[str]:
    """The key of a player's budget: the ``player-id`` the client sends."""
    for key, value in metadata:
        if key == "player-id":
            return str(value)
    return None


class Matchmaker:
    """Pairs players first come, first served."""

    def __init__(self) -> None:
        self.waiting: Dict[str, asyncio.Future[Dict[str, Any]]] = {}
        self.changed = asyncio.Condition()
        self.ids = itertools.count(1)

    async def find_match(self, request: bytes, context: Any) -> bytes:
        me = loads(request)["player"]
        if me in self.waiting:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{me} is already queued")
        opponent = next(iter(self.waiting), None)
        if opponent is not None:
            match = {"match": next(self.ids), "players": [opponent, me]}
            self.waiting.pop(opponent).set_result(match)
            await self._notify()
            return dumps(match)
        mine: asyncio.Future[Dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[me] = mine
        await self._notify()
        try:
            return dumps(await asyncio.wait_for(asyncio.shield(mine), MATCH_WAIT))
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no opponent for {me} yet")
            raise
        finally:
            if self.waiting.get(me) is mine:
                del self.waiting[me]
                await self._notify()

    async def watch_queue(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        last = -1
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda: len(self.waiting) != last)
                last = len(self.waiting)
            yield dumps({"queued": last})

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


def build_server(matchmaker: Matchmaker, limiter: gg.KeyedLimiter, watchers: gg.Bulkhead,
                 everything: gg.Bulkhead) -> aio.Server:
    """The service with its guards; not started."""
    server = aio.server(interceptors=[
        ServerInterceptor({"*": everything}),
        ServerInterceptor({f"/{SERVICE}/FindMatch": limiter,
                           f"/{SERVICE}/WatchQueue": watchers}, key=player_id),
    ])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "FindMatch": grpc.unary_unary_rpc_method_handler(matchmaker.find_match),
        "WatchQueue": grpc.unary_stream_rpc_method_handler(matchmaker.watch_queue),
    })])
    return server


def guards() -> tuple[gg.KeyedLimiter, gg.Bulkhead, gg.Bulkhead]:
    return (gg.KeyedLimiter(FIND_RATE, FIND_BURST, name="find_match_per_player"),
            gg.Bulkhead(MAX_WATCHERS, name="queue_watchers"),
            gg.Bulkhead(MAX_IN_FLIGHT, name="matchmaking_in_flight"))
