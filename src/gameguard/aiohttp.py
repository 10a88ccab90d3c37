"""Guards for aiohttp servers: the ASGI middleware's behaviour as an aiohttp middleware.

``web.Application(middlewares=[GuardMiddleware(guards, key=None)])``: ``guards`` maps path
patterns (``"/match"``, ``"/match/*"``, ``"*"``; most specific wins) to a guard, a
``pipeline(...)``, a ``KeyedLimiter`` or a list of them (outermost first); ``key(request)
-> key`` gives a ``KeyedLimiter`` its key.

- A rejected request gets 429 (rate limit, full bulkhead) or 503 (open breaker, draining,
  shedding), with ``Retry-After`` in whole seconds when known; the handler does not run.
- A 5xx response (returned or raised as ``web.HTTPException``) or another exception of the
  handler is a failure for the route's breakers (exceptions as their ``record``/``ignore``
  classify them); 4xx is a success. Exceptions propagate unchanged.
- A WebSocket handler holds its permits for the whole connection; a rejected upgrade is
  accepted and closed at once with code 1013 (Try Again Later).
- Every permit comes back exactly once, on cancellation (client disconnect) too.

Needs the extra: ``pip install gameguard[aiohttp]``.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Optional

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "gameguard.aiohttp needs aiohttp: pip install 'gameguard[aiohttp]'") from exc

from . import _http
from ._http import KeyFunc, Spec
from ._pure import call as protocol

__all__ = ["GuardMiddleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GuardMiddleware:
    """An aiohttp (new-style) middleware guarding handlers by path pattern; see the module
    docstring. Bad arguments are a ``ConfigurationError`` here, never per request."""

    #: marks a new-style ``(request, handler)`` middleware for aiohttp 3
    __middleware_version__ = 1

    def __init__(self, guards: Mapping[str, Spec], *, key: Optional[KeyFunc] = None) -> None:
        self._routes = _http.routes(guards, key)

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = self._routes.lookup(request.path)
        if route is None:
            return await handler(request)
        guards = route.guards(request)
        read = route.read
        tokens: list[int] = []
        t0 = read()
        i = protocol.take(guards, t0, tokens)
        if i < len(guards):
            rejection = await _http.settle(guards, i, t0, tokens)
            if rejection is not None:
                return await _reject(request, rejection)
        try:
            response = await handler(request)
        except web.HTTPException as http_error:  # an answer, raised: judged by its status
            _http.release(guards, tokens, t0, read, None, http_error.status >= 500)
            raise
        except BaseException as error:
            _http.release(guards, tokens, t0, read, error, True)
            raise
        _http.release(guards, tokens, t0, read, None, response.status >= 500)
        return response


async def _reject(request: web.Request, rejection: BaseException) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    if ws.can_prepare(request).ok:
        await ws.prepare(request)
        await ws.close(code=_http.TRY_AGAIN_LATER,
                       message=_http.close_reason(rejection).encode("utf-8"))
        return ws
    headers: Any = dict(_http.rejection_headers(rejection))
    return web.Response(status=_http.status_of(rejection), text=str(rejection),
                        headers=headers)
