"""gameguard.aiohttp.GuardMiddleware on a real aiohttp server (AppRunner + TCPSite on a free
127.0.0.1 port) with aiohttp's own client, HTTP and WebSocket, on both twins."""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

import gameguard as gg
from gameguard.aiohttp import GuardMiddleware

DEADLINE = 10.0


async def eventually(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class Game:
    """Handlers that count their calls; ``gate`` holds the slow ones."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.holding = 0
        self.cancelled = 0

    def app(self, guards: Any, key: Any = None) -> web.Application:
        async def ok(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            return web.Response(text="ok")

        async def status(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            return web.Response(text="s", status=int(request.match_info["code"]))

        async def raises(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            code = int(request.match_info["code"])
            raise web.HTTPException() if code == 0 else {
                404: web.HTTPNotFound, 503: web.HTTPServiceUnavailable}[code]()

        async def boom(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            raise RuntimeError("boom")

        async def slow(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            self.holding += 1
            try:
                await asyncio.wait_for(self.gate.wait(), DEADLINE)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.holding -= 1
            return web.Response(text="slow")

        async def echo(request: web.Request) -> web.StreamResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.data == "boom":
                    raise RuntimeError("ws boom")
                await ws.send_str(msg.data)
            return ws

        app = web.Application(middlewares=[GuardMiddleware(guards, key=key)])
        app.add_routes([web.get("/ok", ok), web.get("/free", ok),
                        web.get("/status/{code}", status), web.get("/raise/{code}", raises),
                        web.get("/boom", boom), web.get("/slow", slow),
                        web.get("/ws", echo)])
        return app


Serve = Callable[..., Awaitable[str]]


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(app, **runner_options)`` starts a real server; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, **options: Any) -> str:
        runner = web.AppRunner(app, **options)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await asyncio.wait_for(runner.cleanup(), DEADLINE)


@pytest_asyncio.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session:
        yield session


@pytest.mark.asyncio
async def test_rate_limit_429_with_retry_after(twin: str, serve: Serve,
                                               client: aiohttp.ClientSession) -> None:
    clock = gg.ManualClock()
    game = Game()
    url = await serve(game.app({"/ok": gg.TokenBucket(0.4, 1, clock=clock, name="lim")}))
    async with client.get(url + "/ok") as r:
        assert r.status == 200
    async with client.get(url + "/ok") as r:
        assert (r.status, r.headers["Retry-After"]) == (429, "3")  # 2.5 s, rounded up
        assert "lim" in await r.text()
    assert game.calls == 1
    clock.advance(2.5)
    async with client.get(url + "/ok") as r:
        assert r.status == 200


@pytest.mark.asyncio
async def test_breaker_counts_5xx_returned_and_raised_but_not_4xx(
        twin: str, serve: Serve, client: aiohttp.ClientSession) -> None:
    clock = gg.ManualClock()
    breaker = gg.CircuitBreaker(consecutive_failures=3, open_duration=2.0, clock=clock)
    game = Game()
    url = await serve(game.app({"/status/*": breaker, "/raise/*": breaker}))
    for path in ["/status/404", "/raise/404", "/status/499"] * 3:
        async with client.get(url + path) as r:
            assert r.status in (404, 499)
    snap = breaker.snapshot()
    assert (snap["calls"], snap["failures"]) == (9, 0)
    for path, code in [("/status/500", 500), ("/raise/503", 503), ("/status/502", 502)]:
        async with client.get(url + path) as r:
            assert r.status == code
    assert breaker.state == "open"
    calls = game.calls
    async with client.get(url + "/status/200") as r:
        assert (r.status, r.headers["Retry-After"]) == (503, "2")
    assert game.calls == calls
    clock.advance(2.0)
    async with client.get(url + "/status/200") as r:
        assert r.status == 200
    assert breaker.state == "closed"


@pytest.mark.asyncio
async def test_handler_exception_is_a_failure_and_propagates(
        twin: str, serve: Serve, client: aiohttp.ClientSession) -> None:
    breaker = gg.CircuitBreaker(consecutive_failures=1)
    bulkhead = gg.Bulkhead(1)
    url = await serve(Game().app({"/boom": [breaker, bulkhead]}))
    async with client.get(url + "/boom") as r:
        assert r.status == 500  # aiohttp's answer to an exception it saw
    assert breaker.state == "open" and bulkhead.in_flight == 0


@pytest.mark.asyncio
async def test_keyed_limiter_per_player_query_parameter(
        twin: str, serve: Serve, client: aiohttp.ClientSession) -> None:
    clock = gg.ManualClock()
    limiter = gg.KeyedLimiter(2.0, 1, clock=clock)
    url = await serve(Game().app({"*": limiter},
                                 key=lambda request: request.query.get("player")))
    statuses = []
    for player in ["a", "a", "b", "a", "b"]:
        async with client.get(url + "/ok", params={"player": player}) as r:
            statuses.append(r.status)
    assert statuses == [200, 429, 200, 429, 429]
    clock.advance(0.5)
    async with client.get(url + "/ok", params={"player": "a"}) as r:
        assert r.status == 200


@pytest.mark.asyncio
async def test_full_bulkhead_429_and_cancelled_handler_gives_the_slot_back(
        twin: str, serve: Serve, client: aiohttp.ClientSession) -> None:
    bulkhead = gg.Bulkhead(1)
    game = Game()
    url = await serve(game.app({"/slow": bulkhead, "/ok": bulkhead}), handler_cancellation=True)
    held = asyncio.ensure_future(client.get(url + "/slow"))
    await eventually(lambda: game.holding == 1, "the slow request held")
    async with client.get(url + "/ok") as r:
        assert r.status == 429 and "Retry-After" not in r.headers
    held.cancel()  # the client goes away; aiohttp cancels the handler
    with pytest.raises(asyncio.CancelledError):
        await held
    await eventually(lambda: bulkhead.in_flight == 0, "the slot back")
    assert game.cancelled == 1
    async with client.get(url + "/ok") as r:
        assert r.status == 200


@pytest.mark.asyncio
async def test_websocket_held_for_the_connection_and_rejected_with_1013(
        twin: str, serve: Serve, client: aiohttp.ClientSession) -> None:
    bulkhead = gg.Bulkhead(1)
    breaker = gg.CircuitBreaker(consecutive_failures=5)
    url = await serve(Game().app({"/ws": [breaker, bulkhead]}))
    async with client.ws_connect(url + "/ws") as first:
        await first.send_str("hi")
        assert (await first.receive(timeout=DEADLINE)).data == "hi"
        assert bulkhead.in_flight == 1
        async with client.ws_connect(url + "/ws") as second:
            msg = await second.receive(timeout=DEADLINE)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert msg.data == 1013 and "bulkhead" in msg.extra
        await first.send_str("still")
        assert (await first.receive(timeout=DEADLINE)).data == "still"
    await eventually(lambda: bulkhead.in_flight == 0, "the permit back after close")
    async with client.ws_connect(url + "/ws") as third:
        await third.send_str("boom")
        msg = await third.receive(timeout=DEADLINE)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await eventually(lambda: bulkhead.in_flight == 0, "the permit back after an exception")
    assert breaker.snapshot()["failures"] == 1


@pytest.mark.asyncio
async def test_websocket_abrupt_disconnect_gives_the_permit_back(
        twin: str, serve: Serve) -> None:
    bulkhead = gg.Bulkhead(1)
    url = await serve(Game().app({"/ws": bulkhead}))
    host, port = url[len("http://"):].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), DEADLINE)
    assert b" 101 " in status
    await eventually(lambda: bulkhead.in_flight == 1, "the connection admitted")
    writer.transport.abort()  # no close frame: the TCP connection just goes
    await eventually(lambda: bulkhead.in_flight == 0, "the permit back after a disconnect")


@pytest.mark.asyncio
async def test_unmatched_paths_pass_through(serve: Serve,
                                            client: aiohttp.ClientSession) -> None:
    limiter = gg.TokenBucket(1.0, 1, clock=gg.ManualClock())
    url = await serve(Game().app({"/ok": limiter}))
    for _ in range(3):
        async with client.get(url + "/free") as r:
            assert r.status == 200
    async with client.get(url + "/nowhere") as r:
        assert r.status == 404
    assert limiter.tokens == 1.0


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(gg.ConfigurationError, match="pass key="):
        GuardMiddleware({"*": gg.KeyedLimiter(1.0)})
    with pytest.raises(gg.ConfigurationError, match="must be a guard"):
        GuardMiddleware({"*": "bulkhead"})  # type: ignore[dict-item]


def test_without_aiohttp_the_import_error_names_the_extra() -> None:
    import subprocess
    import sys
    code = ("import sys; sys.modules['aiohttp'] = None\n"
            "try:\n    import gameguard.aiohttp\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "pip install 'gameguard[aiohttp]'" in out
