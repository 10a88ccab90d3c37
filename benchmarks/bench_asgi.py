"""What GuardMiddleware costs on a minimal Starlette route (target: at most 5 % more).

In process: a raw ASGI driver sends each round's 1000 GET requests straight into the app
(scope, a receive that hands over the empty body, a send that drops the messages), so the
figure is the app call itself, no socket or client. Through a server: uvicorn on a free
127.0.0.1 port and one keep-alive raw-socket client, the bare and the guarded app served
side by side; there the loopback round trip dominates and the middleware disappears in it.

    .venv/bin/python -m pytest benchmarks/bench_asgi.py -q -o python_files='bench_*.py' \
        --benchmark-only --benchmark-group-by=group --benchmark-columns=median,ops \
        -p no:cacheprovider

Wall time on a shared machine is noisy at the 5 % level, so the in-process cost is also
counted in instructions (callgrind, two request counts, the difference per request):

    .venv/bin/python benchmarks/bench_asgi.py --report [CASE ...]

and as interleaved best-of-N rounds (thread CPU time in process, wall time through uvicorn;
the pipeline is a breaker and a bulkhead):

    .venv/bin/python benchmarks/bench_asgi.py --interleaved [ROUNDS]
"""
from __future__ import annotations

import asyncio
import functools
import os
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import gameguard as gg
from gameguard import _impl
from gameguard.asgi import GuardMiddleware

from conftest import LOOP


async def ping(request: Request) -> Response:
    return PlainTextResponse("pong")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/ping", ping)])


def _twin(kind: str) -> Any:
    if kind == "fast" and not _impl.FAST_AVAILABLE:
        pytest.fail("compiled kernels not built")
    return _impl.use(kind)


GUARDS: dict[str, Callable[[], Any]] = {
    "breaker": lambda: gg.CircuitBreaker("bench"),
    "bulkhead": lambda: gg.Bulkhead(64),
    "token_bucket": lambda: gg.TokenBucket(1e12, 1e12),
    "keyed": lambda: gg.KeyedLimiter(1e12, 1e12),
    # per player, then the route's breaker: the lobby's shape
    "keyed_breaker": lambda: [gg.KeyedLimiter(1e12, 1e12), gg.CircuitBreaker("bench")],
    "pipeline": lambda: gg.pipeline(gg.CircuitBreaker("bench"), gg.Bulkhead(64)),
}


def _player(scope: Any) -> Any:
    return scope["query_string"]


def guarded(what: str) -> Any:
    return GuardMiddleware(starlette_app(), {"/ping": GUARDS[what]()},
                           key=_player if what.startswith("keyed") else None)


# -- in process: the app call -------------------------------------------------------------------
SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
         "scheme": "http", "path": "/ping", "raw_path": b"/ping", "root_path": "",
         "query_string": b"player=7", "headers": [(b"host", b"bench")],
         "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000)}
REQUEST = {"type": "http.request", "body": b"", "more_body": False}


def driver(app: Any, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """One benchmark round: LOOP requests into ``app`` on ``loop``."""
    statuses: list[int] = []

    async def receive() -> Any:
        return REQUEST

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def batch() -> None:
        for _ in range(LOOP):
            await app(dict(SCOPE), receive, send)

    def run() -> None:
        statuses.clear()
        loop.run_until_complete(batch())
        assert statuses == [200] * LOOP

    return run


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.mark.benchmark(group="asgi-in-process")
def test_bare_starlette(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    benchmark(driver(starlette_app(), loop))


@pytest.mark.benchmark(group="asgi-in-process")
@pytest.mark.parametrize("kind", ["fast", "pure"])
@pytest.mark.parametrize("what", sorted(GUARDS))
def test_guarded_starlette(benchmark: Any, loop: asyncio.AbstractEventLoop, kind: str,
                           what: str) -> None:
    with _twin(kind):
        app = guarded(what)
    benchmark(driver(app, loop))


@pytest.mark.benchmark(group="asgi-in-process")
def test_unmatched_path_starlette(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """A path no pattern names: one table lookup, then the app."""
    benchmark(driver(GuardMiddleware(starlette_app(), {"/other": gg.Bulkhead(1)}), loop))


# -- through uvicorn and a client ---------------------------------------------------------------
class Served:
    """The bare app at /bare/*, the guarded one at /guarded/*, under one uvicorn server."""

    def __init__(self, guarded_app: Any) -> None:
        bare = starlette_app()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            path = scope.get("path", "")
            if path == "/cpu":  # this process's CPU seconds so far, for the client's ratios
                body = f"{time.process_time():.9f} pong".encode()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", str(len(body)).encode())]})
                return await send({"type": "http.response.body", "body": body})
            if path.startswith("/bare"):
                scope = dict(scope, path=path[5:])
                return await bare(scope, receive, send)
            scope = dict(scope, path=path[8:])
            return await guarded_app(scope, receive, send)

        # proto given: asyncio sets TCP_NODELAY only on sockets that say they are TCP
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="error",
                                                    access_log=False, interface="asgi3"))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        end = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < end and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def start_server() -> tuple[subprocess.Popen[str], int]:
    """The bare and guarded apps under uvicorn in a process of its own (so the client
    never competes with it for the GIL); its port."""
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None
    return server, int(server.stdout.readline())


@pytest.fixture(scope="module")
def served() -> Iterator[int]:
    server, port = start_server()
    yield port
    server.stdout.close()  # type: ignore[union-attr]
    server.terminate()
    server.wait(10)


@pytest.fixture
def conn(served: int) -> Iterator[socket.socket]:
    c = socket.create_connection(("127.0.0.1", served), timeout=10)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    yield c
    c.close()


def fetch(conn: socket.socket, request: bytes) -> bytes:
    """One keep-alive GET; the response (every body here ends in ``pong``)."""
    conn.sendall(request)
    data = b""
    while not data.endswith(b"pong"):
        chunk = conn.recv(4096)
        assert chunk, "server closed the connection"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    return data


def server_cpu(conn: socket.socket) -> float:
    """The server process's CPU seconds so far."""
    data = fetch(conn, b"GET /cpu HTTP/1.1\r\nHost: bench\r\n\r\n")
    return float(data.rsplit(b"\r\n\r\n", 1)[1].split()[0])


def client_round(conn: socket.socket, prefix: str) -> Callable[[], None]:
    """LOOP sequential keep-alive GETs over one raw socket (a client costing next to
    nothing, so the server's share shows)."""
    request = f"GET {prefix}/ping HTTP/1.1\r\nHost: bench\r\n\r\n".encode()

    def run() -> None:
        for _ in range(LOOP):
            fetch(conn, request)

    return run


@pytest.mark.benchmark(group="asgi-uvicorn")
def test_bare_uvicorn(benchmark: Any, conn: socket.socket) -> None:
    benchmark.pedantic(client_round(conn, "/bare"), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="asgi-uvicorn")
def test_guarded_uvicorn_pipeline(benchmark: Any, conn: socket.socket) -> None:
    benchmark.pedantic(client_round(conn, "/guarded"), rounds=5, warmup_rounds=1)


# -- instruction counts (callgrind) -------------------------------------------------------------
CASES = ["bare", "unmatched", "breaker", "bulkhead", "token_bucket", "pipeline", "keyed",
         "keyed_breaker", "breaker_pure"]


def build_case(case: str) -> Any:
    if case == "bare":
        return starlette_app()
    if case == "unmatched":
        return GuardMiddleware(starlette_app(), {"/other": gg.Bulkhead(1)})
    kind, what = ("pure", case[:-5]) if case.endswith("_pure") else ("fast", case)
    with _twin(kind):
        return guarded(what)


def measure(case: str, n1: int = 300, n2: int = 1300) -> float:
    counts = []
    for n in (n1, n2):
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             __file__, case, str(n)],
            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True,
            check=True, timeout=900)
        m = re.search(r"Collected : (\d+)", out.stderr)
        assert m, out.stderr
        counts.append(int(m.group(1)))
    return (counts[1] - counts[0]) / (n2 - n1)


# -- aiohttp, in process: the application's own request handling, no socket ---------------------
AIOHTTP_CASES = ["aiohttp_bare", "aiohttp_empty", "aiohttp_breaker", "aiohttp_keyed",
                 "aiohttp_keyed_breaker"]


def aiohttp_driver(case: str, loop: asyncio.AbstractEventLoop) -> Callable[[int], None]:
    """``run(n)``: n GET /ping?player=7 through an aiohttp application's handling
    (routing, the middleware chain, the handler; one mocked request object reused, so
    no transport or parser is counted). ``aiohttp_empty``: a middleware that only awaits
    the handler, aiohttp's own cost of having one."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request
    from gameguard.aiohttp import GuardMiddleware as AiohttpGuard

    async def pong(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    class Empty:
        __middleware_version__ = 1

        async def __call__(self, request: web.Request, handler: Any) -> Any:
            return await handler(request)

    what = case[len("aiohttp_"):]
    middlewares: list[Any] = []
    if what == "empty":
        middlewares = [Empty()]
    elif what != "bare":
        middlewares = [AiohttpGuard({"/ping": GUARDS[what]()},
                                    key=(lambda r: r.query_string) if "keyed" in what else None)]
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/ping", pong)
    app.freeze()
    request = make_mocked_request("GET", "/ping?player=7", app=app, loop=loop)

    async def batch(k: int) -> None:
        for _ in range(k):
            response = await app._handle(request)
            assert response.status == 200

    return lambda k: loop.run_until_complete(batch(k))


def _requests(case: str, n: int) -> None:
    loop = asyncio.new_event_loop()
    if case.startswith("aiohttp_"):
        run = aiohttp_driver(case, loop)
        run(50)  # the first requests build aiohttp's caches
        run(n)
        loop.close()
        return
    app = build_case(case)

    async def receive() -> Any:
        return REQUEST

    async def send(message: Any) -> None:
        pass

    async def batch() -> None:
        for _ in range(n):
            await app(dict(SCOPE), receive, send)

    loop.run_until_complete(batch())
    loop.close()


def interleaved(rounds: int) -> None:
    """CPU time per request (this thread's, so other processes' load counts less), best of
    ``rounds`` interleaved rounds: in process for each case, then through uvicorn."""
    cases = ["bare", "unmatched", "breaker", "bulkhead", "token_bucket", "pipeline", "keyed",
             "keyed_breaker"]
    loop = asyncio.new_event_loop()
    runs = {c: driver(build_case(c), loop) for c in cases}
    for c in AIOHTTP_CASES:
        runs[c] = functools.partial(aiohttp_driver(c, loop), LOOP)
    best = {c: float("inf") for c in runs}
    for _ in range(rounds):
        for c, run in runs.items():
            t = time.thread_time()
            run()
            best[c] = min(best[c], time.thread_time() - t)
    loop.close()
    print("in process (thread CPU time per request, best of %d rounds; aiohttp_* as a "
          "multiple of aiohttp_bare)" % rounds)
    for c in runs:
        ref = best["aiohttp_bare" if c.startswith("aiohttp_") else "bare"]
        print(f"  {c:22s} {best[c] / LOOP * 1e6:8.2f} us  {best[c] / ref:6.3f}x")
    server, port = start_server()
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wall = {p: float("inf") for p in ("/bare", "/guarded")}
    cpu = dict(wall)
    try:
        for i in range(rounds):
            for p in sorted(wall, reverse=bool(i % 2)):  # neither always goes first
                run = client_round(conn, p)
                c0, t = server_cpu(conn), time.perf_counter()
                run()
                wall[p] = min(wall[p], time.perf_counter() - t)
                cpu[p] = min(cpu[p], server_cpu(conn) - c0)
    finally:
        conn.close()
        server.stdout.close()  # type: ignore[union-attr]
        server.terminate()
        server.wait(10)
    print("through uvicorn + a raw keep-alive client, best of %d: the server's CPU time and "
          "the wall time per request" % rounds)
    for p, v in wall.items():
        print(f"  {p:14s} cpu {cpu[p] / LOOP * 1e6:8.2f} us  {cpu[p] / cpu['/bare']:6.3f}x"
              f"   wall {v / LOOP * 1e6:8.2f} us  {v / wall['/bare']:6.3f}x")


if __name__ == "__main__":
    if sys.argv[1] == "--serve":  # for --interleaved: serve until terminated
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        with _twin("fast"):
            served = Served(guarded("pipeline"))
        print(served.port, flush=True)
        served.thread.join()
    elif sys.argv[1] == "--interleaved":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        interleaved(int(sys.argv[2]) if len(sys.argv) > 2 else 15)
    elif sys.argv[1] == "--report":  # ratios to bare Starlette, aiohttp_* to bare aiohttp
        bases: dict[str, float] = {}
        for case in sys.argv[2:] or CASES[1:] + AIOHTTP_CASES[1:]:
            ref = "aiohttp_bare" if case.startswith("aiohttp_") else "bare"
            if ref not in bases:
                bases[ref] = measure(ref)
                print(f"{ref:22s} {bases[ref]:10.0f} instructions/request")
            n = measure(case)
            print(f"{case:22s} {n:10.0f} instructions/request  {n / bases[ref]:6.3f}x  "
                  f"(+{n - bases[ref]:.0f})")
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        _requests(sys.argv[1], int(sys.argv[2]))
