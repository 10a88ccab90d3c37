"""Starting, faulting and stopping the scenario's processes (and its redis-server)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

import grpc

from . import wire
from .plan import DOMAINS, GATEWAYS, PORTS
#: a service that has not answered its first Ping by then did not start
START_TIMEOUT = 30.0


def free_ports(n: int) -> List[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _reraise_cancel(e: grpc.aio.AioRpcError) -> None:
    """A call cut short by this task's cancellation (Ctrl-C) can surface as a CANCELLED
    status, not as CancelledError: swallowing it would carry the run on after Ctrl-C."""
    if e.code() == grpc.StatusCode.CANCELLED:
        raise asyncio.CancelledError from None


class Proc:
    def __init__(self, role: str, index: int, port: int, argv: List[str], log: str,
                 metrics_port: int = 0) -> None:
        self.role, self.index, self.port, self.argv, self.log = role, index, port, argv, log
        self.metrics_port = metrics_port  # 0: no metrics endpoint (the unguarded run)
        self.popen: Optional[subprocess.Popen[bytes]] = None
        self.cold_start_ms: List[float] = []

    @property
    def label(self) -> str:
        return self.role if self.role != "gateway" else f"gateway-{self.index}"

    def spawn(self) -> float:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        return time.monotonic()

    def stop(self, sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
        p = self.popen
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5.0)


class Redis:
    """A throwaway redis-server on loopback, if one is installed."""

    def __init__(self, workdir: str) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_ports(1)[0]
        self.workdir = workdir
        self.popen: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.binary else ""

    def start(self) -> None:
        if not self.binary:
            return
        self.popen = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(10.0)
        self.popen = None


class Cluster:
    """The domains and the gateways of one run, on fresh loopback ports."""

    def __init__(self, workdir: str, guarded: bool, redis_url: str,
                 dsn: Optional[str] = None, base_port: Optional[int] = None) -> None:
        self.workdir = workdir
        self.guarded = guarded
        # each run's sagas in schemas of their own: a run never recovers another's
        run = uuid.uuid4().hex[:8]
        self.schemas = [f"scenario_{run}_{i}" for i in range(GATEWAYS)] if dsn and guarded \
            else []
        roles = [(d, 0) for d in DOMAINS] + [("gateway", i) for i in range(GATEWAYS)]
        ports = free_ports(PORTS) if base_port is None else list(range(base_port,
                                                                         base_port + PORTS))
        metrics_ports = ports[len(roles):] if guarded else [0] * len(roles)
        self.targets = {d: f"127.0.0.1:{p}" for (d, _), p in zip(roles, ports) if d != "gateway"}
        rules = os.path.join(os.path.dirname(__file__), "rules.toml")
        self.procs: Dict[str, Proc] = {}
        for (role, index), port, metrics_port in zip(roles, ports, metrics_ports):
            argv = [sys.executable, "-m", "gameguard.scenario.node", role, "--port", str(port),
                    "--index", str(index), "--workdir", workdir,
                    "--targets", json.dumps(self.targets), "--rules", rules,
                    "--redis", redis_url if guarded else ""]
            if guarded:
                argv += ["--guarded", "--metrics-port", str(metrics_port)]
            if dsn and self.schemas and role == "gateway":
                argv += ["--dsn", dsn, "--schema", self.schemas[index]]
            proc = Proc(role, index, port, argv, os.path.join(workdir, f"{role}-{index}.log"),
                        metrics_port)
            self.procs[proc.label] = proc
        self.control: Dict[str, wire.Client] = {}

    @property
    def metrics(self) -> Dict[str, str]:
        """label -> the node's metrics endpoint (none in the unguarded run)."""
        from .metrics import url
        return {label: url(p.metrics_port) for label, p in self.procs.items()
                if p.metrics_port}

    @property
    def gateways(self) -> List[str]:
        return [f"127.0.0.1:{p.port}" for p in self.procs.values() if p.role == "gateway"]

    async def start(self) -> None:
        started = {label: p.spawn() for label, p in self.procs.items()}
        await asyncio.gather(*(self._first_answer(p, started[label])
                               for label, p in self.procs.items()))

    async def _first_answer(self, proc: Proc, spawned: float) -> None:
        client = self.control.get(proc.label)
        if client is None:
            client = self.control[proc.label] = wire.Client(f"127.0.0.1:{proc.port}")
        deadline = spawned + START_TIMEOUT
        while True:
            try:
                await client.call("Control", "Ping", {}, timeout=0.5)
                proc.cold_start_ms.append((time.monotonic() - spawned) * 1000.0)
                return
            except grpc.aio.AioRpcError as e:
                _reraise_cancel(e)
                if proc.popen is not None and proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.label} exited with {proc.popen.returncode}; see "
                                       f"{proc.log}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.label} did not answer within {START_TIMEOUT:.0f} "
                                       f"s; see {proc.log}") from None
                await asyncio.sleep(0.005)

    async def fault(self, label: str, **change: Any) -> None:
        try:
            await self.control[label].call("Control", "Fault", change, timeout=2.0)
        except grpc.aio.AioRpcError as e:
            _reraise_cancel(e)  # a process that is down has no fault to change

    def kill(self, label: str) -> None:
        self.procs[label].stop(signal.SIGKILL)

    async def restart(self, label: str) -> None:
        proc = self.procs[label]
        await self._first_answer(proc, proc.spawn())

    async def call(self, label: str, op: str, body: Optional[Dict[str, Any]] = None,
                   timeout: float = 30.0) -> Dict[str, Any]:
        return await self.control[label].call("Control", op, body or {}, timeout=timeout)

    async def close(self) -> None:
        for c in self.control.values():
            await c.close()
        self.control.clear()

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()
