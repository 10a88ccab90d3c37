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

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, MutableMapping, Optional

from . import _http, _impl
from ._http import KeyFunc, ServerErrorResponse, Spec

__all__ = ["GuardMiddleware", "ServerErrorResponse"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_edge = _impl.kernel("edge")
if TYPE_CHECKING:
    from ._pure.edge import Middleware as _Base
else:  # the request path (in C when compiled; objects built on the pure twin go to it)
    _Base = _edge.Middleware


class GuardMiddleware(_Base):
    """ASGI middleware guarding ``app`` by path pattern; see the module docstring.

    ``guards`` maps patterns to a guard, a ``pipeline(...)``, a ``KeyedLimiter`` or a list of
    them (outermost first); ``key(scope) -> key`` gives a ``KeyedLimiter`` its key (the
    player id from a header or the query string, say). Bad arguments are a
    ``ConfigurationError`` here, never per request.
    """

    app: ASGIApp

    def __init__(self, app: ASGIApp, guards: Mapping[str, Spec], *,
                 key: Optional[KeyFunc] = None) -> None:
        super().__init__(app, _http.routes(guards, key), _impl.active() == "pure")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request or WebSocket connection. (Calling the middleware runs
        the kernel's request path directly; this coroutine function is what servers
        inspect to recognise an ASGI 3 app, and serves explicit ``__call__`` calls.)"""
        await _serve(self, scope, receive, send)


_serve = _Base.__call__
_edge.adopt_call(GuardMiddleware)  # compiled: calls skip the Python frame above
