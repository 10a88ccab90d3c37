"""A FastAPI game lobby guarded by gameguard.

- ``POST /lobby/join``: each player may join once every 2 seconds (burst 3), keyed by
  the ``X-Player-Id`` header: a player spamming the button gets 429 with ``Retry-After``;
  other players are untouched.
- ``GET /matchmaking/find``: calls the matchmaker, a dependency that can fail. A breaker
  counts its 5xx answers; after 3 in a row it opens and the lobby answers 503 with
  ``Retry-After`` at once, without calling the matchmaker, until a probe succeeds.
- ``WS /lobby/chat``: at most ``CHAT_SEATS`` chat connections at once (a bulkhead held for
  the whole connection); one more is closed with 1013, Try Again Later.
- ``GET /health``: not guarded.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Header, HTTPException, WebSocket, WebSocketDisconnect

import gameguard as gg
from gameguard.asgi import GuardMiddleware

CHAT_SEATS = 2


class Matchmaker:
    """The dependency: finds a match, or fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def find(self, player: str) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise HTTPException(status_code=502, detail="matchmaker unreachable")
        return {"player": player, "match": f"m-{self.calls}"}


def player_of(scope: Any) -> str:
    """The per-player key: the X-Player-Id header (anonymous callers share one key)."""
    for name, value in scope["headers"]:
        if name == b"x-player-id":
            return str(value.decode("latin-1"))
    return "anonymous"


def create_app() -> tuple[FastAPI, dict[str, Any]]:
    """The app, and the guards and dependency (for the client to report on)."""
    matchmaker = Matchmaker()
    joins = gg.KeyedLimiter(0.5, 3, name="lobby-joins")
    breaker = gg.CircuitBreaker("matchmaker", consecutive_failures=3, open_duration=1.0)
    chat = gg.Bulkhead(CHAT_SEATS, name="chat-seats")
    app = FastAPI(title="lobby")
    players: set[str] = set()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "breaker": breaker.state}

    @app.post("/lobby/join")
    async def join(x_player_id: str = Header(default="anonymous")) -> dict[str, Any]:
        players.add(x_player_id)
        return {"joined": x_player_id, "players": len(players)}

    @app.get("/matchmaking/find")
    async def find(x_player_id: str = Header(default="anonymous")) -> dict[str, Any]:
        return matchmaker.find(x_player_id)

    @app.websocket("/lobby/chat")
    async def chat_room(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                await ws.send_text(f"echo: {await ws.receive_text()}")
        except WebSocketDisconnect:
            pass

    app.add_middleware(GuardMiddleware, guards={
        "/lobby/join": joins,
        "/matchmaking/*": breaker,
        "/lobby/chat": chat,
    }, key=player_of)
    return app, {"matchmaker": matchmaker, "joins": joins, "breaker": breaker, "chat": chat}
