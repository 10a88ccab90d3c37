"""An ASGI request through its route's guards (pure twin of ``_fast/edge.pyx``, and the
reference for what it does).

:class:`Middleware` is the base of ``gameguard.asgi.GuardMiddleware``; its ``__call__`` is
:func:`serve`. A route of keyed limiters then at most one block (its ``plan``) is decided
inline; any other route goes through ``Route.enter`` / ``Route.exit``. The compiled twin
does the common path in C and hands every other case (a guard that waits, a rejection, a
route without a plan, an object built on this twin) to the coroutines here.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, MutableMapping, Optional

from .. import _http
from ..errors import RejectedError

__all__ = ["Middleware", "adopt_call"]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Leave = Callable[[Any, Any, Any], Any]

#: close code an app sends when it failed (RFC 6455 "Internal Error"): a failure outcome
INTERNAL_ERROR = 1011


async def serve(mw: Any, scope: Any, receive: Any, send: Any) -> None:
    """One ASGI call through ``mw`` (``app``, ``routes``): see ``gameguard.asgi``."""
    kind = scope["type"]
    route = (mw.routes.lookup(scope["path"])
             if kind == "http" or kind == "websocket" else None)
    if route is None:
        await mw.app(scope, receive, send)
        return
    plan = route.plan
    if plan is not None:  # keyed limiters, then at most one block
        keyed, key, block, judges, enter, leave = plan
        if keyed:
            rejection = _http.keyed_refusal(route, keyed, key, scope)
            if rejection is not None:
                return await reject(kind, receive, send, rejection)
            if block is None:  # keyed limiters hold nothing: no outcome to report
                await mw.app(scope, receive, send)
                return
        return await admitted(enter, leave, mw.app, scope, receive, send, judges)
    rejection = await route.enter(scope)
    if rejection is not None:
        return await reject(kind, receive, send, rejection)
    await run(route.exit, mw.app, scope, receive, send, route.judges)


async def admitted(enter: Callable[[], Awaitable[Any]], leave: Leave, app: Any, scope: Any,
                   receive: Any, send: Any, judges: bool,
                   entering: Optional[Awaitable[Any]] = None) -> None:
    """Enter a block (await ``enter()``, its ``__aenter__``, or ``entering``, what an
    earlier call of it returned), then run the app under it; a rejection is answered
    instead."""
    try:
        await (enter() if entering is None else entering)
    except RejectedError as refused:
        return await reject(scope["type"], receive, send, refused)
    await run(leave, app, scope, receive, send, judges)


async def run(leave: Leave, app: Any, scope: Any, receive: Any, send: Any,
              judges: bool) -> None:
    """The app, admitted; then ``leave(exc_type, exc, tb)`` once with its outcome: its
    exception, a 5xx status as :class:`ServerErrorResponse` (when a guard ``judges``
    outcomes), else success."""
    if not judges:  # no guard here classifies outcomes: the status is not needed
        try:
            await app(scope, receive, send)
        except BaseException as exc:
            _http.leave_quietly(leave, exc)
            raise
        leave(None, None, None)
        return
    status = 500  # until a response starts: the server answers 500 for an app that didn't

    def watched(message: Message) -> Awaitable[None]:
        # a plain function handing back send's awaitable: no coroutine of its own
        nonlocal status
        status = status_after(status, message)
        return send(message)  # type: ignore[no-any-return]

    try:
        await app(scope, receive, watched)
    except BaseException as exc:
        _http.leave_quietly(leave, exc)
        raise
    _http.leave_with_status(leave, status)


def status_after(status: int, message: Message) -> int:
    """The response status once ``message`` is sent: its HTTP status, 101 for an accepted
    or normally closed WebSocket, 500 for one closed with 1011 (internal error)."""
    t = message["type"]
    if t == "http.response.start" or t == "websocket.http.response.start":
        return int(message["status"])
    if t == "websocket.accept":
        return 101
    if t == "websocket.close":
        return 500 if message.get("code", 1000) == INTERNAL_ERROR else 101
    return status


async def reject(kind: str, receive: Any, send: Any, rejection: BaseException) -> None:
    """Answer a refused request: 429/503 with ``Retry-After``, or for a WebSocket an
    accepted connection closed at once with 1013."""
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


async def _reject_websocket(receive: Any, send: Send, rejection: BaseException) -> None:
    # the handshake must arrive before the app may answer it
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client left first
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": _http.TRY_AGAIN_LATER,
                "reason": _http.close_reason(rejection)})


class Middleware:
    """Serves ASGI calls for ``app`` by the route ``routes`` (a ``PatternTable`` of
    ``_http.Route``) gives each path. ``pure``: built while the pure twin is active (the
    compiled twin then serves it with the coroutines here)."""

    def __init__(self, app: Any, routes: Any, pure: bool = False) -> None:
        self.app = app
        self.routes = routes
        self.pure = pure

    __call__ = serve


def adopt_call(cls: type) -> None:
    """Nothing to do on this twin: ``cls.__call__`` (a coroutine function) serves calls.
    (The compiled twin points ``cls``'s calls at its request path in C.)"""
