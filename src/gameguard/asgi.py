"""Guards for ASGI apps (Starlette, FastAPI, any ASGI framework or server).

``GuardMiddleware(app, guards, *, key=None)`` routes each HTTP request and WebSocket
connection by path to the guards of its most specific pattern (``"/match"``,
``"/match/*"``, ``"*"``), outermost first::

    app = GuardMiddleware(app, {
        "/match/*": gg.pipeline(breaker, gg.Bulkhead(64)),
        "/chat": (per_player, chat_breaker),      # a KeyedLimiter needs key=
    }, key=lambda scope: dict(scope["headers"]).get(b"x-player-id"))

or ``app.add_middleware(GuardMiddleware, guards={...}, key=...)`` in Starlette/FastAPI.

- A rejected request is answered at once: 429 for a rate limit or a full bulkhead, 503 for
  an open breaker, draining or shedding, with ``Retry-After`` in whole seconds (rounded up,
  at least 1) when the guard knows it. The app is not called.
- A response with a 5xx status, or an exception out of the app, is a failure for the
  route's breakers (the exception as each breaker's ``record``/``ignore`` classify it; it
  still propagates to the server); any other status, 4xx included, is a success: the
  service answered. An app that returns without responding counts as failed (the server
  answers 500).
- A WebSocket connection holds its permits for its whole life. A rejected one is accepted
  and closed at once with code 1013 (Try Again Later), the reason carrying the message and
  retry-after: closed before accepting, the client would only see an HTTP 403.
- Every permit comes back exactly once: on return, app exception, client disconnect and
  cancellation. Lifespan and other scope types pass through untouched.

Pure ASGI: nothing here imports a framework.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, MutableMapping, Optional

from . import _http
from ._http import KeyFunc, Spec
from ._pure import call as protocol

__all__ = ["GuardMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: close code an app sends when it failed (RFC 6455 "Internal Error"): a failure outcome
_INTERNAL_ERROR = 1011


class GuardMiddleware:
    """ASGI middleware guarding ``app`` by path pattern; see the module docstring.

    ``guards`` maps patterns to a guard, a ``pipeline(...)``, a ``KeyedLimiter`` or a list of
    them (outermost first); ``key(scope) -> key`` gives a ``KeyedLimiter`` its key (the
    player id from a header or the query string, say). Bad arguments are a
    ``ConfigurationError`` here, never per request.
    """

    def __init__(self, app: ASGIApp, guards: Mapping[str, Spec], *,
                 key: Optional[KeyFunc] = None) -> None:
        self.app = app
        self._routes = _http.routes(guards, key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        route = (self._routes.lookup(scope["path"])
                 if kind == "http" or kind == "websocket" else None)
        if route is None:
            return await self.app(scope, receive, send)
        guards = route.guards(scope)
        read = route.read
        tokens: list[int] = []
        t0 = read()
        i = protocol.take(guards, t0, tokens)
        if i < len(guards):
            rejection = await _http.settle(guards, i, t0, tokens)
            if rejection is not None:
                if kind == "http":
                    return await _reject_http(send, rejection)
                return await _reject_websocket(receive, send, rejection)
        failed = True  # until a response starts with a status below 500

        async def watched(message: Message) -> None:
            nonlocal failed
            t = message["type"]
            if t == "http.response.start" or t == "websocket.http.response.start":
                failed = message["status"] >= 500
            elif t == "websocket.accept":
                failed = False
            elif t == "websocket.close":
                failed = message.get("code", 1000) == _INTERNAL_ERROR
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException as exc:
            _http.release(guards, tokens, t0, read, exc, True)
            raise
        _http.release(guards, tokens, t0, read, None, failed)


async def _reject_http(send: Send, rejection: BaseException) -> None:
    body = str(rejection).encode("utf-8")
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode("ascii"))]
    headers += [(n.lower().encode("ascii"), v.encode("ascii"))
                for n, v in _http.rejection_headers(rejection)]
    await send({"type": "http.response.start", "status": _http.status_of(rejection),
                "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _reject_websocket(receive: Receive, send: Send, rejection: BaseException) -> None:
    # the handshake must arrive before the app may answer it
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client left first
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": _http.TRY_AGAIN_LATER,
                "reason": _http.close_reason(rejection)})
