"""The gateway: players' requests in, fanned out to the domains.

Four ops, one per fingerprint of the seed: ``match`` (matchmaking finds, battle starts and
asks payment to reserve the entry fee), ``teleport`` (a three-step saga: payment debits,
battle leaves the old zone, social moves the player's presence; 780 ms to finish), ``chat``
(social) and ``auction`` (payment's item read; one hot item takes most reads).

Guarded, every dependency sits behind the gRPC client interceptor with the guards the rules
file gives its methods (breaker, bulkhead, attempt timeout), players are limited per key
(cluster-wide through Redis when the run has one), item reads go through a hot-key cache and
teleports are sagas on a durable log, with the barrier on each participant. Unguarded, the
same calls go out bare with the client's default two-second deadline and teleports are three
calls in a row.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Any, Dict, Optional

import grpc

from . import wire

#: the teleport saga's whole budget, as the seed gives it
TELEPORT_TIMEOUT = 0.78
#: the guarded run's deadline for one attempt on a dependency (a quarter of the player's)
ATTEMPT = 0.5
#: what a client gives a call when nobody chose: generous, as most clients are
UNGUARDED_DEADLINE = 2.0
#: the auction items' cache TTL (seconds); the report counts hot-item loads per expiry
HOT_TTL = 1.0
#: seconds past expiry an auction item is served when payment cannot answer: longer than
#: the failing half of the dependency fault, as a shop would rather show a price a minute
#: old than an error
STALE_IF_ERROR = 60.0
TELEPORT_STEPS = (("payment", "Debit", "Refund"), ("battle", "Leave", "Return"),
                  ("social", "Move", "Unmove"))


class Gateway:
    def __init__(self, targets: Dict[str, str], workdir: str, index: int, guarded: bool,
                 rules_path: str, redis_url: Optional[str], dsn: Optional[str] = None,
                 schema: str = "scenario") -> None:
        self.guarded = guarded
        self.clients: Dict[str, wire.Client] = {}
        self.cache: Any = None
        self.saga: Any = None
        self.limiter: Any = None
        self.backend: Any = None
        interceptors: Dict[str, Any] = {}
        if guarded:
            import gameguard as gg
            from gameguard.grpc import ClientInterceptor
            from gameguard.saga import Saga, SQLiteStore

            self.rules = gg.Rules.load(rules_path)
            for service in targets:
                interceptors[service] = [ClientInterceptor(
                    {f"/game.{service}/*": self.rules.guard(f"{service}:*")})]
            self.cache = auction_cache()
            if dsn:
                from gameguard.saga import PostgresStore
                store: Any = PostgresStore(dsn, schema=schema)
            else:
                store = SQLiteStore(os.path.join(workdir, f"gateway-{index}-sagas.db"))
            self.saga = Saga("teleport", store=store)
            self._steps()
            self.backend = _backend(redis_url)
            self.limiter = gg.KeyedLimiter(rate=5, capacity=10, name="players",
                                           **({"backend": self.backend}
                                              if self.backend is not None else {}))
        self.clients = {s: wire.Client(t, interceptors.get(s)) for s, t in targets.items()}

    def _steps(self) -> None:
        from ..saga import StepContext

        for service, action, compensation in TELEPORT_STEPS:
            def make(service: str, op: str) -> Any:
                async def call(ctx: StepContext) -> Dict[str, Any]:
                    return await self.clients[service].call(
                        service, op, {"tx": ctx.tx_id, "step": ctx.step,
                                      "player": ctx.payload["player"]},
                        timeout=ctx.timeout or TELEPORT_TIMEOUT)
                call.__name__ = f"{service}_{op}"
                return call
            self.saga.step(make(service, action), name=f"{service}.{action}",
                           compensate=make(service, compensation), retries=2,
                           timeout=TELEPORT_TIMEOUT / 3, backoff=0.02, max_backoff=0.1)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        control = {"Ping": self._ping, "Stats": self._stats, "Recover": self._recover}
        return [wire.service("Gateway", {"Call": self._call}), wire.service("Control", control)]

    async def _call(self, req: Dict[str, Any], context: grpc.aio.ServicerContext
                    ) -> Dict[str, Any]:
        op, player = str(req["op"]), str(req["player"])
        if self.limiter is not None and not await self._admit(player):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "player over budget")
        try:
            answer: Dict[str, Any] = await getattr(self, f"_{op}")(player, req)
            return answer
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), f"{op}: {e.details()}")
        except Exception as e:  # a guard's rejection or a timeout: the gateway answers
            from ..errors import RejectedError
            code = (grpc.StatusCode.UNAVAILABLE if isinstance(e, (RejectedError, TimeoutError))
                    else grpc.StatusCode.INTERNAL)
            await context.abort(code, f"{op}: {type(e).__name__}: {e}")
        raise AssertionError("unreachable")

    async def _admit(self, player: str) -> bool:
        if self.backend is not None:
            return bool(await self.limiter.try_acquire_async(player))
        return bool(self.limiter.try_acquire(player))

    def _timeout(self, guarded: float) -> float:
        return guarded if self.guarded else UNGUARDED_DEADLINE

    async def _match(self, player: str, req: Dict[str, Any]) -> Dict[str, Any]:
        found = await self.clients["matchmaking"].call(
            "matchmaking", "Find", {"player": player}, timeout=self._timeout(ATTEMPT))
        await self.clients["battle"].call("battle", "Start", {"player": player, **found},
                                          timeout=self._timeout(ATTEMPT))
        return {"ok": True}

    async def _chat(self, player: str, req: Dict[str, Any]) -> Dict[str, Any]:
        await self.clients["social"].call("social", "Chat", {"player": player, "text": "gg"},
                                          timeout=self._timeout(ATTEMPT))
        return {"ok": True}

    async def _auction(self, player: str, req: Dict[str, Any]) -> Dict[str, Any]:
        item = str(req.get("item", "hot"))

        async def load(key: str) -> Dict[str, Any]:
            return await self.clients["payment"].call("payment", "Item", {"item": key},
                                                      timeout=self._timeout(ATTEMPT))
        if self.cache is not None:
            return dict(await self.cache.get_or_load_async(item, load))
        return await load(item)

    async def _teleport(self, player: str, req: Dict[str, Any]) -> Dict[str, Any]:
        if self.saga is not None:
            result = await self.saga.run_async({"player": player})
            if result.status != "committed":
                raise _SagaNotCommitted(result.status)
            return {"ok": True, "tx": result.tx_id}
        tx = uuid.uuid4().hex  # unguarded: three calls in a row, nothing to undo or resume
        for service, action, _ in TELEPORT_STEPS:
            await self.clients[service].call(
                service, action, {"tx": tx, "step": f"{service}.{action}", "player": player},
                timeout=UNGUARDED_DEADLINE)
        return {"ok": True, "tx": tx}

    async def _ping(self, req: Dict[str, Any], context: Any) -> Dict[str, Any]:
        return {"name": "gateway", "pid": os.getpid()}

    async def _stats(self, req: Dict[str, Any], context: Any) -> Dict[str, Any]:
        out: Dict[str, Any] = {"cpu_seconds": time.process_time()}
        if self.backend is not None:
            out["backend"] = self.backend.stats()
        return out

    async def _recover(self, req: Dict[str, Any], context: Any) -> Dict[str, Any]:
        if self.saga is None:
            return {"recovered": 0}
        # after the outages, as an operator would: finish what was interrupted, and retry the
        # compensations that ran out of retries while a participant was down
        results = await self.saga.recover_async(include_failed=True)
        return {"recovered": len(results),
                "unfinished": sum(r.status not in ("committed", "compensated") for r in results)}

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()


class _SagaNotCommitted(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(f"teleport {status}")


def auction_cache() -> Any:
    """The auction's item cache: one load per expiry however many players read the item,
    and while payment fails, the item as last read (up to STALE_IF_ERROR seconds old)."""
    import gameguard as gg
    return gg.HotKeyCache(maxsize=4096, ttl=HOT_TTL, name="auction-items",
                          stale_if_error=STALE_IF_ERROR)


def _backend(redis_url: Optional[str]) -> Any:
    if not redis_url:
        return None
    import redis.asyncio

    from ..redis import RedisBackend
    # two gateways share each player's budget: a fallback at half keeps the fleet's bound
    return RedisBackend(redis.asyncio.Redis.from_url(redis_url), fallback="local",
                        fallback_share=0.5, timeout=0.05, name="players-redis")
