"""GuardMiddleware under a real uvicorn server on a loopback port, with real clients (httpx,
websockets), on both twins. What a server cannot be made to do on cue (cancellation at a
given await, configuration errors) is in test_asgi_inprocess.py."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, Callable, Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

import gameguard as gg
from gameguard.asgi import GuardMiddleware, ServerErrorResponse

#: every wait on the server is a bounded poll
DEADLINE = 10.0
#: for requests whose app raises: uvicorn closes such a connection after the response
CLOSE = {"connection": "close"}


def eventually(check: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Uvicorn:
    """A uvicorn server in a thread on a free 127.0.0.1 port, serving ``self.app``."""

    def __init__(self, app: Any = None, lifespan: str = "off") -> None:
        self.app: Any = app
        # proto given: asyncio sets TCP_NODELAY only on sockets that say they are TCP
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(
            self._dispatch, lifespan=lifespan, log_level="error", ws="websockets-sansio",
            interface="asgi3"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    async def _dispatch(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def __enter__(self) -> "Uvicorn":
        self.thread.start()
        eventually(lambda: self.server.started or not self.thread.is_alive(), "uvicorn")
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(DEADLINE)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def server() -> Iterator[Uvicorn]:
    with Uvicorn() as s:
        yield s


@pytest.fixture
def client(server: Uvicorn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as c:
        yield c


class Game:
    """A Starlette app whose routes count their calls and can be held open."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.holding = 0
        self.ws_open = 0

    async def hold(self) -> None:
        self.holding += 1
        try:
            end = time.monotonic() + DEADLINE
            while not self.release.is_set() and time.monotonic() < end:
                await asyncio.sleep(0.002)
        finally:
            self.holding -= 1

    def app(self) -> Starlette:
        async def ok(request: Request) -> Response:
            self.calls += 1
            return PlainTextResponse("ok")

        async def status(request: Request) -> Response:
            self.calls += 1
            return PlainTextResponse("s", status_code=int(request.path_params["code"]))

        async def boom(request: Request) -> Response:
            self.calls += 1
            raise RuntimeError("boom")

        async def slow(request: Request) -> Response:
            self.calls += 1
            await self.hold()
            return PlainTextResponse("slow")

        async def echo(ws: WebSocket) -> None:
            await ws.accept()
            self.ws_open += 1
            try:
                while True:
                    text = await ws.receive_text()
                    if text == "boom":
                        raise RuntimeError("ws boom")
                    await ws.send_text(text)
            except WebSocketDisconnect:
                pass
            finally:
                self.ws_open -= 1

        return Starlette(routes=[
            Route("/ok", ok), Route("/free", ok), Route("/status/{code:int}", status),
            Route("/boom", boom), Route("/slow", slow), Route("/match/find", ok),
            WebSocketRoute("/ws", echo)])


def serve(server: Uvicorn, guards: Any, key: Any = None) -> Game:
    game = Game()
    server.app = GuardMiddleware(game.app(), guards, key=key)
    return game


def test_rate_limit_is_429_with_retry_after_and_the_app_not_called(
        twin: str, server: Uvicorn, client: httpx.Client) -> None:
    clock = gg.ManualClock()
    game = serve(server, {"/ok": gg.TokenBucket(0.5, 1, clock=clock, name="ok-limit")})
    assert client.get("/ok").status_code == 200
    r = client.get("/ok")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"  # 1 token at 0.5/s
    assert "ok-limit" in r.text
    assert game.calls == 1
    clock.advance(1.2)
    assert client.get("/ok").headers["retry-after"] == "1"  # 0.8 s left, rounded up
    clock.advance(0.8)
    assert client.get("/ok").status_code == 200
    assert game.calls == 2


def test_open_breaker_is_503_and_5xx_responses_are_failures(
        twin: str, server: Uvicorn, client: httpx.Client) -> None:
    clock = gg.ManualClock()
    breaker = gg.CircuitBreaker(consecutive_failures=2, open_duration=4.5, clock=clock)
    game = serve(server, {"/status/*": breaker})
    assert client.get("/status/502").status_code == 502
    eventually(lambda: breaker.snapshot()["failures"] == 1, "the 502 recorded")
    assert breaker.state == "closed"
    assert client.get("/status/500").status_code == 500
    eventually(lambda: breaker.state == "open", "the breaker to open")
    r = client.get("/status/200")
    assert (r.status_code, r.headers["retry-after"]) == (503, "5")
    assert game.calls == 2
    clock.advance(4.5)
    assert client.get("/status/200").status_code == 200  # the half-open probe succeeds
    eventually(lambda: breaker.state == "closed", "the probe's success")


def test_4xx_is_a_success_and_an_exception_a_failure(
        twin: str, server: Uvicorn, client: httpx.Client) -> None:
    breaker = gg.CircuitBreaker(consecutive_failures=3, clock=gg.ManualClock())
    serve(server, {"*": breaker})
    for _ in range(5):
        assert client.get("/status/404").status_code == 404
        assert client.get("/status/429").status_code == 429
    eventually(lambda: breaker.snapshot()["calls"] == 10, "ten outcomes")
    assert (breaker.snapshot()["failures"], breaker.state) == (0, "closed")
    for n in range(1, 4):  # Starlette answers 500, then re-raises; uvicorn then drops the line
        assert client.get("/boom", headers=CLOSE).status_code == 500
        eventually(lambda: breaker.snapshot()["consecutive_failures"] == n, "the failure")
    assert breaker.state == "open"


def test_breaker_ignore_still_applies_to_app_exceptions(
        server: Uvicorn, client: httpx.Client) -> None:
    breaker = gg.CircuitBreaker(consecutive_failures=1, ignore=RuntimeError)
    bulkhead = gg.Bulkhead(1)  # tells when the request's permits are back
    serve(server, {"/boom": [breaker, bulkhead]})
    assert client.get("/boom", headers=CLOSE).status_code == 500
    eventually(lambda: bulkhead.in_flight == 0, "the /boom permits back")
    assert breaker.state == "closed"
    assert breaker.snapshot()["calls"] == 0


def test_full_bulkhead_is_429_without_retry_after_and_slots_come_back(
        twin: str, server: Uvicorn, client: httpx.Client) -> None:
    bulkhead = gg.Bulkhead(1)
    game = serve(server, {"/slow": bulkhead, "/ok": bulkhead})
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as other:
        results: list[int] = []
        t = threading.Thread(target=lambda: results.append(other.get("/slow").status_code))
        t.start()
        eventually(lambda: game.holding == 1, "the slow request to be held")
        assert bulkhead.in_flight == 1
        r = client.get("/ok")
        assert r.status_code == 429 and "retry-after" not in r.headers
        game.release.set()
        t.join(DEADLINE)
    assert results == [200]
    eventually(lambda: bulkhead.in_flight == 0, "the slot back")
    assert client.get("/ok").status_code == 200


def test_a_waiting_bulkhead_queues_instead_of_rejecting(
        twin: str, server: Uvicorn) -> None:
    bulkhead = gg.Bulkhead(1, max_wait=None)
    game = serve(server, {"/slow": bulkhead})
    results: list[int] = []

    def get() -> None:
        with httpx.Client(base_url=server.url, timeout=DEADLINE) as c:
            results.append(c.get("/slow").status_code)
    threads = [threading.Thread(target=get) for _ in range(3)]
    for t in threads:
        t.start()
    eventually(lambda: game.holding == 1 and bulkhead.snapshot()["waiting"] == 2,
               "one held, two waiting")
    game.release.set()
    for t in threads:
        t.join(DEADLINE)
    assert results == [200, 200, 200]
    eventually(lambda: bulkhead.in_flight == 0, "every slot back")


def test_keyed_limiter_limits_each_player_by_header(
        twin: str, server: Uvicorn, client: httpx.Client) -> None:
    clock = gg.ManualClock()
    per_player = gg.KeyedLimiter(1.0, 2, clock=clock, name="per-player")
    serve(server, {"/match/*": per_player},
          key=lambda scope: dict(scope["headers"]).get(b"x-player", b"anon").decode())
    alice, bob = {"x-player": "alice"}, {"x-player": "bob"}
    assert [client.get("/match/find", headers=alice).status_code for _ in range(3)] == \
        [200, 200, 429]
    r = client.get("/match/find", headers=alice)
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and "alice" in r.text
    assert client.get("/match/find", headers=bob).status_code == 200
    clock.advance(1.0)
    assert client.get("/match/find", headers=alice).status_code == 200


def test_keyed_limiter_and_breaker_on_one_route(
        twin: str, server: Uvicorn, client: httpx.Client) -> None:
    clock = gg.ManualClock()
    per_player = gg.KeyedLimiter(1.0, 1, clock=clock)
    breaker = gg.CircuitBreaker(consecutive_failures=1, clock=clock)
    serve(server, {"/status/*": [per_player, breaker]},
          key=lambda scope: scope["query_string"])
    assert client.get("/status/500?p=1").status_code == 500
    eventually(lambda: breaker.state == "open", "the breaker to open")
    assert client.get("/status/200?p=1").status_code == 429  # the outer limiter first
    assert client.get("/status/200?p=2").status_code == 503


def test_unmatched_paths_pass_through(server: Uvicorn, client: httpx.Client) -> None:
    limiter = gg.TokenBucket(1.0, 1, clock=gg.ManualClock())
    game = serve(server, {"/ok": limiter})
    assert [client.get("/free").status_code for _ in range(5)] == [200] * 5
    assert client.get("/nowhere").status_code == 404
    assert game.calls == 5
    assert limiter.tokens == 1.0


def test_websocket_holds_its_permit_and_a_rejected_one_closes_with_1013(
        twin: str, server: Uvicorn) -> None:
    bulkhead = gg.Bulkhead(1)
    game = serve(server, {"/ws": bulkhead})
    url = f"ws://127.0.0.1:{server.port}/ws"
    with ws_connect(url, open_timeout=DEADLINE) as first:
        first.send("hi")
        assert first.recv(timeout=DEADLINE) == "hi"
        assert bulkhead.in_flight == 1
        with ws_connect(url, open_timeout=DEADLINE) as second:
            with pytest.raises(ConnectionClosed) as closed:
                second.recv(timeout=DEADLINE)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013
        assert "bulkhead" in closed.value.rcvd.reason
        first.send("still here")
        assert first.recv(timeout=DEADLINE) == "still here"
    eventually(lambda: bulkhead.in_flight == 0 and game.ws_open == 0, "the permit back")
    with ws_connect(url, open_timeout=DEADLINE) as third:
        third.send("again")
        assert third.recv(timeout=DEADLINE) == "again"


def test_rate_limited_websocket_reason_carries_retry_after(server: Uvicorn) -> None:
    serve(server, {"/ws": gg.TokenBucket(0.25, 1, clock=gg.ManualClock(), name="ws-limit")})
    url = f"ws://127.0.0.1:{server.port}/ws"
    with ws_connect(url, open_timeout=DEADLINE):
        pass
    with ws_connect(url, open_timeout=DEADLINE) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=DEADLINE)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013
    assert closed.value.rcvd.reason.endswith("retry after 4 s")


def test_websocket_permit_comes_back_on_abrupt_disconnect_and_app_exception(
        twin: str, server: Uvicorn) -> None:
    bulkhead = gg.Bulkhead(2)
    breaker = gg.CircuitBreaker(consecutive_failures=5)
    game = serve(server, {"/ws": gg.pipeline(breaker, bulkhead)})
    url = f"ws://127.0.0.1:{server.port}/ws"
    with ws_connect(url, open_timeout=DEADLINE, close_timeout=0.1) as ws:
        ws.send("x")
        assert ws.recv(timeout=DEADLINE) == "x"
        ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the TCP connection just goes
    eventually(lambda: bulkhead.in_flight == 0, "the permit back after a disconnect")
    with ws_connect(url, open_timeout=DEADLINE) as ws2:
        ws2.send("boom")
        with pytest.raises(ConnectionClosed):
            ws2.recv(timeout=DEADLINE)
    eventually(lambda: bulkhead.in_flight == 0 and game.ws_open == 0,
               "the permit back after an exception")
    assert breaker.snapshot()["failures"] == 1


def test_http_client_disconnect_gives_the_permit_back(twin: str, server: Uvicorn) -> None:
    bulkhead = gg.Bulkhead(1)
    seen: list[str] = []

    async def waits_for_disconnect(scope: Any, receive: Any, send: Any) -> None:
        while True:  # uvicorn reports the lost connection as http.disconnect
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect":
                return

    server.app = GuardMiddleware(waits_for_disconnect, {"*": bulkhead})
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        eventually(lambda: bulkhead.in_flight == 1, "the request admitted")
    eventually(lambda: bulkhead.in_flight == 0, "the permit back after the client left")
    assert seen[-1] == "http.disconnect"


def test_lifespan_passes_through_a_real_server(twin: str) -> None:
    events: list[str] = []
    bulkhead = gg.Bulkhead(1)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    with Uvicorn(GuardMiddleware(app, {"*": bulkhead}), lifespan="on"):
        eventually(lambda: events == ["lifespan.startup"], "startup")
        assert bulkhead.in_flight == 0
    assert events == ["lifespan.startup", "lifespan.shutdown"]


def test_a_5xx_reaches_breakers_as_server_error_response(server: Uvicorn,
                                                         client: httpx.Client) -> None:
    spare_501 = gg.CircuitBreaker(consecutive_failures=1, ignore=lambda e: isinstance(
        e, ServerErrorResponse) and e.status == 501)
    bulkhead = gg.Bulkhead(1)
    serve(server, {"/status/*": [spare_501, bulkhead]})
    assert client.get("/status/501").status_code == 501
    eventually(lambda: bulkhead.in_flight == 0, "the permits back")
    assert spare_501.state == "closed"
    assert client.get("/status/503").status_code == 503
    eventually(lambda: spare_501.state == "open", "a 503 to count")
