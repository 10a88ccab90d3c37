"""Guards for ASGI apps (Starlette, FastAPI, any ASGI framework or server).

``GuardMiddleware(app, guards, *, key=None)`` routes each HTTP request and WebSocket
connection by path to the guards of its most specific pattern (``"/match"``,
``"/match/*"``, ``"*"``), outermost first::

    app = GuardMiddleware(app, {
        "/match/*": gg.pipeline(breaker, gg.Bulkhead(64)),
        "/chat": [per_player, chat_breaker],      # a KeyedLimiter needs key=
    }, key=lambda scope: dict(scope["headers"]).get(b"x-player-id"))

or ``app.add_middleware(GuardMiddleware, guards={...}, key=...)`` in Starlette/FastAPI.

- A rejected request is answered at once: 429 for a rate limit or a full bulkhead, 503 for
  an open breaker, draining or shedding, with ``Retry-After`` in whole seconds (rounded up,
  at least 1) when the guard knows it. The app is not called.
- A response with a 5xx status, or an exception out of the app, is a failure for the
  route's breakers (as their ``record``/``ignore`` classify it: a 5xx reaches them as a
  :class:`ServerErrorResponse`); the exception still propagates to the server. Any other
  status, 4xx included, is a success: the service answered. An app that returns without
  responding counts as a 500 (what the server then answers).
- A WebSocket connection holds its permits for its whole life; one the app closes with
  1011 (internal error) is a failure. A rejected one is accepted and closed at once with
  code 1013 (Try Again Later), the reason carrying the message and retry-after: closed
  before accepting, the client would only see an HTTP 403.
- Every permit comes back exactly once: on return, app exception, client disconnect and
  cancellation. Lifespan and other scope types pass through untouched.

Pure ASGI: nothing here imports a framework.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, MutableMapping, Optional

from . import _http
from ._http import KeyFunc, ServerErrorResponse, Spec
from .errors import RejectedError

__all__ = ["GuardMiddleware", "ServerErrorResponse"]

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
        single = route.single
        if single is not None:  # one guard or pipeline: entered inline
            try:
                await single.__aenter__()
            except RejectedError as refused:
                return await _reject(kind, receive, send, refused)
            leave = single.__exit__
        else:
            rejection = await route.enter(scope)
            if rejection is not None:
                return await _reject(kind, receive, send, rejection)
            leave = route.exit
        if not route.judges:  # no guard here classifies outcomes: the status is not needed
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                leave(type(exc), exc, None)
                raise
            leave(None, None, None)
            return
        status = 500  # until a response starts: the server answers 500 for an app that didn't

        def watched(message: Message) -> Awaitable[None]:
            # a plain function handing back send's awaitable: no coroutine of its own
            nonlocal status
            t = message["type"]
            if t == "http.response.start" or t == "websocket.http.response.start":
                status = message["status"]
            elif t == "websocket.accept":
                status = 101
            elif t == "websocket.close":
                status = 500 if message.get("code", 1000) == _INTERNAL_ERROR else 101
            return send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException as exc:
            leave(type(exc), exc, None)
            raise
        if status >= 500:
            failure = ServerErrorResponse(status)
            leave(ServerErrorResponse, failure, None)
        else:
            leave(None, None, None)


async def _reject(kind: str, receive: Receive, send: Send, rejection: BaseException) -> None:
    if kind == "http":
        await _reject_http(send, rejection)
    else:
        await _reject_websocket(receive, send, rejection)


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
