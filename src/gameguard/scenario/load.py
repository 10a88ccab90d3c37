"""The seeded load: the seed's four pressure fingerprints (the phases are in ``plan.py``).

Arrivals are open-loop (Poisson, as players are): a slow server does not slow the offered
load, which is what makes overload visible. Every request has the player's deadline
(``PLAYER_DEADLINE``). The same seed gives the same arrival times, players and items in both runs.
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Awaitable, Callable, Dict, List, NamedTuple, Optional, Tuple

import grpc

from . import wire
from .plan import FAULTS, phase_at

#: requests per second per op, both gateways together, outside a burst
BASE_RATES = {"match": 40.0, "teleport": 10.0, "chat": 110.0, "auction": 80.0}
#: the PvP match burst: how much the match rate grows (the seed's x3.2)
BURST = 3.2
#: share of auction reads that go to the one hot item
HOT_SHARE = 0.9
PLAYERS = 100_000
#: a few players who send far more than their budget (5/s, 10 at once) allows
ABUSERS, ABUSE_RATE = 5, 12.0
PLAYER_DEADLINE = 2.0  # what a player waits before giving up (the client cancels)


class Outcome(NamedTuple):
    t: float  # seconds since the run started, when the request was sent
    op: str
    code: str  # "OK" or the gRPC status name
    ms: float
    player: str


class Load:
    """Sends the fingerprints to the gateways for ``duration`` seconds."""

    def __init__(self, gateways: List[str], duration: float, seed: int,
                 faults: Tuple[str, ...] = FAULTS) -> None:
        self.clients = [wire.Client(g) for g in gateways]
        self.duration = duration
        self.seed = seed
        self.faults = faults
        self.outcomes: List[Outcome] = []
        self._n = 0
        self._inflight: set[asyncio.Task[None]] = set()

    def rate(self, op: str, frac: float) -> float:
        r = BASE_RATES[op]
        if op == "match" and phase_at(frac).fault == "burst" and "burst" in self.faults:
            r *= BURST
        return r

    async def run(self, on_tick: Optional[Callable[[float], Awaitable[None]]] = None) -> None:
        t0 = time.monotonic()
        streams = [self._stream(op, i, t0) for i, op in enumerate(BASE_RATES)]
        streams += [self._abuser(i, t0) for i in range(ABUSERS)]
        if on_tick is not None:
            streams.append(self._ticks(on_tick, t0))
        await asyncio.gather(*streams)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=PLAYER_DEADLINE + 1.0)

    async def _ticks(self, on_tick: Callable[[float], Awaitable[None]], t0: float) -> None:
        while (now := time.monotonic() - t0) < self.duration:
            await on_tick(now / self.duration)
            await asyncio.sleep(0.05)

    async def _stream(self, op: str, index: int, t0: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        t = 0.0
        while True:
            t += rng.expovariate(max(self.rate(op, t / self.duration), 1e-9))
            if t >= self.duration:
                return
            player = f"p{rng.randrange(PLAYERS)}"
            body: Dict[str, Any] = {"op": op, "player": player}
            if op == "auction":
                body["item"] = "hot" if rng.random() < HOT_SHARE else f"i{rng.randrange(1000)}"
            await self._at(t0 + t)
            self._send(t, body)

    async def _abuser(self, index: int, t0: float) -> None:
        rng = random.Random(self.seed * 1000 + 100 + index)
        t = 0.0
        while True:
            t += rng.expovariate(ABUSE_RATE)
            if t >= self.duration:
                return
            await self._at(t0 + t)
            self._send(t, {"op": "chat", "player": f"abuser{index}"})

    @staticmethod
    async def _at(when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _send(self, t: float, body: Dict[str, Any]) -> None:
        client = self.clients[self._n % len(self.clients)]
        self._n += 1
        task = asyncio.get_running_loop().create_task(self._request(client, t, body))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _request(self, client: wire.Client, t: float, body: Dict[str, Any]) -> None:
        start = time.monotonic()
        try:
            await client.call("Gateway", "Call", body, timeout=PLAYER_DEADLINE)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        self.outcomes.append(Outcome(t, str(body["op"]), code,
                                     (time.monotonic() - start) * 1000.0, str(body["player"])))

    async def close(self) -> None:
        for task in list(self._inflight):  # a run cut short: its requests with it
            task.cancel()
        for c in self.clients:
            await c.close()
