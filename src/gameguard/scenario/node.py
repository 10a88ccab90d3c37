"""One scenario process: ``python -m gameguard.scenario.node ROLE --port P ...``.

Serves its role (a domain, or a gateway) on 127.0.0.1 until SIGTERM, then stops gracefully.
Prints ``READY <pid>`` once serving; the parent measures cold start to the first answered
``Ping``. Guarded, a domain's server sheds load when its CPU saturates (the shedder reads
this process's own CPU time), and every node serves its guards' metrics on
``--metrics-port``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any, List, Optional

import grpc

from .plan import DOMAINS

#: what one gateway process can hold at once (a worker pool, an event loop's budget)
GATEWAY_WORKERS = 32


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gameguard.scenario.node")
    p.add_argument("role", help="gateway, or a domain: " + ", ".join(DOMAINS))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--guarded", action="store_true")
    p.add_argument("--workdir", required=True)
    p.add_argument("--targets", default="{}", help="JSON: service -> host:port")
    p.add_argument("--rules", default="")
    p.add_argument("--redis", default="")
    p.add_argument("--dsn", default="")
    p.add_argument("--schema", default="scenario", help="the saga log's schema (--dsn)")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve this node's guards on 127.0.0.1:PORT/metrics (guarded)")
    return p.parse_args(argv)


class ProcessCpu:
    """This process's own CPU use (0..1 of a core) over the last quarter second.

    The scenario's services share one host and one cgroup, so the host's or the cgroup's
    reading (the shedder's default, right for one service per container) would make every
    service shed when one of them spins; here each sheds on what it uses itself."""

    def __init__(self) -> None:
        self._at, self._used, self._value = time.monotonic(), time.process_time(), 0.0

    def __call__(self) -> float:
        now = time.monotonic()
        if now - self._at >= 0.25:
            used = time.process_time()
            self._value = min(1.0, (used - self._used) / (now - self._at))
            self._at, self._used = now, used
        return self._value


def server_interceptors(role: str, guarded: bool) -> list[Any]:
    if not guarded or role == "gateway":
        return []
    import gameguard as gg
    from gameguard.grpc import ServerInterceptor

    shedder = gg.LoadShedder(cpu_threshold=0.8, cpu=ProcessCpu(), name=f"{role}-shedder")
    return [ServerInterceptor({f"/game.{role}/*": shedder, "/game.Control/*": None})]


async def serve(args: argparse.Namespace) -> None:
    targets = json.loads(args.targets)
    if args.role == "gateway":
        from .gateway import Gateway
        node: Any = Gateway(targets, args.workdir, args.index, args.guarded, args.rules,
                            args.redis or None, args.dsn or None, args.schema)
    elif args.role in DOMAINS:
        from .domains import Domain
        node = Domain(args.role, args.workdir, args.guarded, targets)
    else:
        raise SystemExit(f"unknown role {args.role!r}: gateway or one of {', '.join(DOMAINS)}")
    # the gateway's worker budget: what a thread pool or an event loop can hold at once.
    # Both runs have it; only the guarded one keeps a slow dependency from filling it.
    limit = GATEWAY_WORKERS if args.role == "gateway" else 256
    server = grpc.aio.server(interceptors=server_interceptors(args.role, args.guarded),
                             maximum_concurrent_rpcs=limit)
    if args.metrics_port:  # up before the first Ping answers, so every scrape finds it
        from . import metrics
        metrics.serve(args.metrics_port)
    for h in node.handlers():
        server.add_generic_rpc_handlers((h,))
    if server.add_insecure_port(f"127.0.0.1:{args.port}") == 0:
        raise SystemExit(f"port {args.port} is taken")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {os.getpid()}", flush=True)
    await stop.wait()
    await server.stop(grace=1.0)
    close = getattr(node, "close", None)
    if close is not None:
        await close()


def main(argv: Optional[List[str]] = None) -> int:
    asyncio.run(serve(parse(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
