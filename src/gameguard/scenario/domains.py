"""The seed's domain services, each a small in-process state machine behind gRPC ops.

Every domain answers its own ops and the shared control ops (``Ping``, ``Stats``,
``Fault``). Saga participants (battle, payment, social) apply each teleport effect through
:class:`Effects`: with the barrier (guarded) a duplicate or a late action is skipped; without
it (unguarded) every delivery applies again, which is what "effects applied twice" counts.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from typing import Any, Dict, Optional

import grpc

from . import wire

#: how long each op works on the CPU, in seconds (a little real work per call)
WORK = {"Find": 0.0004, "Start": 0.0006, "Reserve": 0.0003, "Chat": 0.0002, "Item": 0.0005,
        "Bid": 0.0003}


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _Ctx:
    """What the barrier needs of a saga step: which transaction, step and phase."""

    __slots__ = ("tx_id", "step", "phase")

    def __init__(self, tx_id: str, step: str, phase: str) -> None:
        self.tx_id, self.step, self.phase = tx_id, step, phase


class Effects:
    """This participant's ledger: one row per (tx, step, phase) with how often it applied."""

    def __init__(self, path: str, guarded: bool) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS effects (tx TEXT, step TEXT, phase TEXT, "
                        "applied INTEGER, PRIMARY KEY (tx, step, phase))")
        self.barrier: Any = None
        if guarded:
            from ..saga import Barrier
            self.barrier = Barrier()

    def apply(self, tx: str, step: str, phase: str) -> bool:
        """Apply one effect in one local transaction; False: the barrier skipped it."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if self.barrier is not None and not self.barrier.check(self.db, _Ctx(tx, step,
                                                                                  phase)):
                self.db.execute("COMMIT")
                return False
            self.db.execute("INSERT INTO effects VALUES (?, ?, ?, 1) ON CONFLICT (tx, step, "
                            "phase) DO UPDATE SET applied = applied + 1", (tx, step, phase))
            self.db.execute("COMMIT")
            return True
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def stats(self) -> Dict[str, int]:
        twice = self.db.execute("SELECT COUNT(*) FROM effects WHERE phase = 'action' AND "
                                "applied > 1").fetchone()[0]
        actions = self.db.execute("SELECT COUNT(*) FROM effects WHERE phase = 'action'"
                                  ).fetchone()[0]
        return {"effects": actions, "effects_twice": twice}


def _set_nice(value: int) -> int:
    """Set this process's nice value; the one it had (unchanged if not allowed)."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except PermissionError:
        pass
    return before


class Faults:
    """The injected faults of one process: CPU saturation, slowness, failure."""

    #: under the CPU fault every request's own work costs this many times more: the process
    #: can no longer keep up with what arrives (a starved container, a runaway loop)
    CPU_FACTOR = 100
    #: and the process runs at the lowest CPU priority: saturated, it takes the CPU nobody
    #: else wants, as a container at its CPU quota does, rather than one of the shared
    #: host's two cores from the others (the seed's services each have CPU of their own;
    #: what isolation measures is the fault spreading through calls, not the host's
    #: scheduler)
    CPU_NICE = 19

    def __init__(self) -> None:
        self.slow = 0.0
        self.fail = False
        self.cpu_factor = 1
        self._cpu: Optional[asyncio.Task[None]] = None
        self._nice = 0

    def set(self, cpu: Optional[bool] = None, slow_ms: Optional[float] = None,
            fail: Optional[bool] = None, cpu_for: Optional[float] = None) -> None:
        if slow_ms is not None:
            self.slow = slow_ms / 1000.0
        if fail is not None:
            self.fail = fail
        if cpu is True and self._cpu is None:
            self.cpu_factor = self.CPU_FACTOR
            self._nice = _set_nice(self.CPU_NICE)
            until = time.monotonic() + (cpu_for if cpu_for is not None else float("inf"))
            self._cpu = asyncio.get_running_loop().create_task(self._saturate(until))
        elif cpu is False and self._cpu is not None:
            self._cpu.cancel()
            self._cool()

    def _cool(self) -> None:
        self.cpu_factor = 1
        self._cpu = None
        _set_nice(self._nice)  # needs the privilege to raise a priority: else it stays

    async def _saturate(self, until: float) -> None:
        """Keep this process's CPU busy: 40 ms of spinning for every turn of the loop, until
        told to stop or ``until`` (a saturated process may answer the stop too late)."""
        while time.monotonic() < until:
            burn(0.04)
            await asyncio.sleep(0)
        self._cool()

    async def before(self, context: grpc.aio.ServicerContext) -> None:
        if self.slow:
            await asyncio.sleep(self.slow)
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure")


class Domain:
    """One domain service: its ops, its state, its faults."""

    def __init__(self, name: str, workdir: str, guarded: bool,
                 targets: Dict[str, str]) -> None:
        self.name = name
        self.guarded = guarded
        self.faults = Faults()
        self.counts: Dict[str, int] = {}
        self.item_loads: Dict[str, int] = {}
        self.chat: list[str] = []
        self.effects = Effects(os.path.join(workdir, f"{name}-effects.db"), guarded)
        self.payment: Optional[wire.Client] = None
        if name == "battle":  # battle never stores assets: it asks payment
            interceptors = None
            if guarded:
                import gameguard as gg
                from gameguard.grpc import ClientInterceptor
                interceptors = [ClientInterceptor({"/game.payment/*": gg.CircuitBreaker(
                    "battle->payment", failure_rate=0.5, minimum_calls=10, window=5.0,
                    open_duration=1.0)})]
            self.payment = wire.Client(targets["payment"], interceptors)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        ops = {op: self._op(op) for op in WORK}
        for op in ("Debit", "Leave", "Move"):
            ops[op] = self._saga_op("action")
        for op in ("Refund", "Return", "Unmove"):
            ops[op] = self._saga_op("compensation")
        control = {"Ping": self._ping, "Stats": self._stats, "Fault": self._fault}
        return [wire.service(self.name, ops), wire.service("Control", control)]

    def _op(self, op: str) -> wire.Handler:
        work = WORK[op]

        async def handle(req: Dict[str, Any], context: grpc.aio.ServicerContext
                         ) -> Dict[str, Any]:
            await self.faults.before(context)
            burn(work * self.faults.cpu_factor)
            self.counts[op] = self.counts.get(op, 0) + 1
            if op == "Item":
                item = str(req.get("item"))
                self.item_loads[item] = self.item_loads.get(item, 0) + 1
                return {"item": item, "price": 100 + len(item)}
            if op == "Start" and self.payment is not None:
                await self.payment.call("payment", "Reserve", {"match": req.get("match")},
                                        timeout=0.5 if self.guarded else 2.0)
            if op == "Chat":
                self.chat.append(str(req.get("text", "")))
                del self.chat[:-1000]
            if op == "Find":
                return {"match": f"m{self.counts[op]}"}
            return {"ok": True, "op": op}
        return handle

    def _saga_op(self, phase: str) -> wire.Handler:
        async def handle(req: Dict[str, Any], context: grpc.aio.ServicerContext
                         ) -> Dict[str, Any]:
            await self.faults.before(context)
            applied = self.effects.apply(str(req["tx"]), str(req["step"]), phase)
            return {"applied": applied}
        return handle

    async def _ping(self, req: Dict[str, Any], context: Any) -> Dict[str, Any]:
        return {"name": self.name, "pid": os.getpid()}

    async def _stats(self, req: Dict[str, Any], context: Any) -> Dict[str, Any]:
        return {"counts": self.counts, "item_loads": self.item_loads,
                "cpu_seconds": time.process_time(), **self.effects.stats()}

    async def close(self) -> None:
        if self.payment is not None:
            await self.payment.close()

    async def _fault(self, req: Dict[str, Any], context: Any) -> Dict[str, Any]:
        self.faults.set(cpu=req.get("cpu"), slow_ms=req.get("slow_ms"), fail=req.get("fail"),
                        cpu_for=req.get("cpu_for"))
        return {"ok": True}
