"""Guards for aiohttp servers: the ASGI middleware's behaviour as an aiohttp middleware.

``web.Application(middlewares=[GuardMiddleware(guards, key=None)])``: ``guards`` maps path
patterns (``"/match"``, ``"/match/*"``, ``"*"``; most specific wins) to a guard, a
``pipeline(...)``, a ``KeyedLimiter`` or a list of them (outermost first); ``key(request)
-> key`` gives a ``KeyedLimiter`` its key.

- A rejected request gets 429 (rate limit, full bulkhead) or 503 (open breaker, draining,
  shedding), with ``Retry-After`` in whole seconds when known; the handler does not run.
- A 5xx response (returned or raised as ``web.HTTPException``) or another exception of the
  handler is a failure for the route's breakers (as their ``record``/``ignore`` classify
  it: a 5xx reaches them as a :class:`ServerErrorResponse`); 4xx is a success. Exceptions
  propagate unchanged.
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
from ._http import KeyFunc, ServerErrorResponse, Spec
from .errors import RejectedError

__all__ = ["GuardMiddleware", "ServerErrorResponse"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GuardMiddleware:
    """An aiohttp (new-style) middleware guarding handlers by path pattern; see the module
    docstring. Bad arguments are a ``ConfigurationError`` here, never per request."""

    #: marks a new-style ``(request, handler)`` middleware for aiohttp 3
    __middleware_version__ = 1

    def __init__(self, guards: Mapping[str, Spec], *, key: Optional[KeyFunc] = None) -> None:
        self._routes = _http.routes(guards, key)
        self._seen = self._routes.seen  # the lookup cache, tried inline first

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        try:
            route = self._seen[path]
        except KeyError:
            route = self._routes.lookup(path)
        if route is None:
            return await handler(request)
        plan = route.plan
        if plan is not None:  # keyed limiters, then at most one block: decided inline
            keyed, key, block, _, enter, leave = plan
            if keyed:
                rejection = _http.keyed_refusal(route, keyed, key, request)
                if rejection is not None:
                    return await _reject(request, rejection)
                if block is None:  # keyed limiters hold nothing: no outcome to report
                    return await handler(request)
            try:
                await enter()
            except RejectedError as refused:
                return await _reject(request, refused)
        else:
            rejection = await route.enter(request)
            if rejection is not None:
                return await _reject(request, rejection)
            leave = route.exit
        try:
            response = await handler(request)
        except web.HTTPException as answer:  # an answer, raised: judged by its status
            _http.leave_with_status(leave, answer.status)
            raise
        except BaseException as error:
            _http.leave_quietly(leave, error)
            raise
        _http.leave_with_status(leave, response.status)
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
