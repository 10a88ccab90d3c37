"""Server interceptors: :class:`ServerInterceptor` (``grpc.aio``) and
:class:`SyncServerInterceptor` (``grpc.server``).

Each wraps a method's handler once (cached per method). Where the whole call is one
function call (every ``grpc.aio`` call: the wrapper writes a stream's messages itself; a
sync call with a unary response) that function is *decorated* with the method's guard, so
the compiled wrapper does the bookkeeping and the permit lives exactly as long as the call,
cancellation included. A sync stream's iterator outlives the handler call and may be
dropped unfinished: there the guard protocol's enter/release steps hold the permits, and
grpc's end-of-RPC callback gives them back if the iterator never does.
"""
from __future__ import annotations

import inspect
from typing import (Any, Callable, Dict, Iterator, Mapping, NoReturn,
                    Optional, Sequence, Tuple)

import grpc
from grpc import aio

from .._checks import check_callable
from ..errors import RejectedError
from ..guard import Guard, Pipeline
from ._permit import FailedStatus, Guards, Permit, admit
from ._status import (HANDLER_FAILURE_CODES, Route, check_routes, status_code,
                      stream_guards, trailers)

__all__ = ["ServerInterceptor", "SyncServerInterceptor"]

#: ``key(method, metadata) -> key`` for a ``KeyedLimiter``: metadata as (key, value) pairs
KeyFunc = Callable[[str, Sequence[Tuple[str, Any]]], Any]

#: wrapped handlers kept per interceptor (one per method the server serves)
_CACHE_LIMIT = 4096
#: (request_streaming, response_streaming) -> the handler factory and its behaviour field
_ARITIES = {
    (False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary"),
    (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream"),
    (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary"),
    (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream"),
}


class _Answered:
    """A handler that raised after setting a status that is an answer (``abort(NOT_FOUND)``):
    returned through the guard, so it counts as a success, then raised again for grpc."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _judged(context: Any, exc: Optional[BaseException]) -> Optional[BaseException]:
    """The exception a finished handler's guards classify (``None``: a success).

    ``abort()`` raises an exception that cannot be told from a crash (grpc #36022), so the
    status the handler set decides: a failure code (``HANDLER_FAILURE_CODES``) is a failure,
    any other code means the handler answered. With no status set, an exception is
    classified as it is (a crash is a failure; cancellation is no outcome)."""
    if exc is not None and not isinstance(exc, Exception):
        return exc
    code = context.code()
    if code is None or code == grpc.StatusCode.OK:
        return exc
    if code in HANDLER_FAILURE_CODES:
        return exc if exc is not None else FailedStatus(code)
    return None


class _Routing:
    """The guards table, the key function and the wrapped-handler cache both servers use."""

    def __init__(self, guards: Mapping[str, Optional[Route]], *,
                 key: Optional[KeyFunc] = None) -> None:
        self._key: Optional[KeyFunc] = check_callable("key", key)
        self._routes = check_routes(guards, refuse_keyed=None if key is not None else (
            "pass key=lambda method, metadata: ... to say whose budget a call spends"))
        self._wrapped: Dict[str, Tuple[Any, Any]] = {}

    def _guarded(self, method: str, handler: Any) -> Any:
        """``handler`` wrapped in its method's guards (``None`` and unguarded: as given)."""
        if handler is None:
            return None
        hit = self._wrapped.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        route = self._routes.lookup(method)
        if route is None:
            wrapped = handler
        else:
            make, field = _ARITIES[(bool(handler.request_streaming),
                                    bool(handler.response_streaming))]
            behaviour = self._wrap(getattr(handler, field), bool(handler.response_streaming),
                                   route, method)
            wrapped = make(behaviour, request_deserializer=handler.request_deserializer,
                           response_serializer=handler.response_serializer)
        if len(self._wrapped) < _CACHE_LIMIT:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _metadata_key(self, method: str) -> Callable[[Any, Any], Any]:
        """(request, context) -> the call's key: ``key(method, invocation metadata)``."""
        key: Any = self._key
        return lambda request, context: key(method, tuple(context.invocation_metadata() or ()))

    def _decorate(self, route: Route, method: str, run: Callable[..., Any]) -> Any:
        """``run(request, context)`` under ``route``: the guard's own (compiled) wrapper."""
        if isinstance(route, (Guard, Pipeline)) and route._guards[0]._needs_key:
            limiter: Any = route
            return limiter.limit(key=self._metadata_key(method))(run)
        return route(run)

    def _wrap(self, behaviour: Callable[..., Any], streams_out: bool, route: Route,
              method: str) -> Callable[..., Any]:
        raise NotImplementedError


def _raised(context: Any, exc: Exception) -> Any:
    """The handler raised ``exc``: returned as an answer if its status says it answered
    (the guard counts a success), re-raised otherwise (a failure, or a rejection)."""
    if _judged(context, exc) is None:
        return _Answered(exc)
    raise exc


def _returned(context: Any, result: Any) -> Any:
    """The handler returned ``result``: raised as a failure if it set a failure status."""
    failed = _judged(context, None)
    if failed is not None:
        failed.result = result  # type: ignore[attr-defined]
        raise failed
    return result


# -- grpc.aio ----------------------------------------------------------------------------------
async def _abort_async(context: Any, exc: RejectedError) -> NoReturn:
    code = status_code(exc)
    await context.abort(code, str(exc), trailers(exc, code))
    raise exc  # abort() always raises; never go on should a context not


class ServerInterceptor(_Routing, aio.ServerInterceptor):  # type: ignore[misc]
    """Guards a ``grpc.aio`` server's methods: ``grpc.aio.server(interceptors=[...])``.

    ``guards`` maps method patterns (``"/game.Match/Find"``, ``"/game.Match/*"``, ``"*"``;
    the most specific wins) to a guard, a ``pipeline(...)``, or ``None`` (not guarded). A
    ``KeyedLimiter`` needs ``key(method, metadata) -> key`` (metadata: the call's invocation
    metadata as (key, value) pairs), e.g. the player id a client sends.

    A rejected call never reaches its handler: it is aborted with ``status_code(error)``,
    details ``str(error)``, trailing ``retry-after-ms`` and a ``google.rpc.RetryInfo``
    detail when the delay is known; a guard's fallback, if it has one, answers instead
    (``fallback(request, context)`` returns the response of a unary-response call). A
    rejection the handler itself raises (from a guard inside it) is mapped the same way. A
    stream holds its permits until it ends, fails or is cancelled. Breakers count what the
    client will see: a handler that raised or set a failure status (``UNAVAILABLE``,
    ``DEADLINE_EXCEEDED``, ``INTERNAL``, ``DATA_LOSS``, ``RESOURCE_EXHAUSTED``,
    ``UNKNOWN``) failed; one that answered, even with a status such as ``NOT_FOUND``,
    succeeded.
    """

    async def intercept_service(self, continuation: Callable[..., Any],
                                handler_call_details: Any) -> Any:
        return self._guarded(handler_call_details.method,
                             await continuation(handler_call_details))

    def _wrap(self, behaviour: Callable[..., Any], streams_out: bool, route: Route,
              method: str) -> Callable[..., Any]:
        generates = inspect.isasyncgenfunction(behaviour)
        if not generates and not inspect.iscoroutinefunction(behaviour):
            raise TypeError(
                f"ServerInterceptor guards async handlers (async def), got {behaviour!r}: "
                "use SyncServerInterceptor with grpc.server for sync handlers")

        # the whole call, writes included, in one coroutine: its permits live and die with
        # the RPC's task, which grpc cancels when the client goes away
        async def run(request: Any, context: Any) -> Any:
            try:
                if not generates:
                    result = await behaviour(request, context)
                else:
                    responses = behaviour(request, context)
                    try:
                        async for message in responses:
                            await context.write(message)
                    finally:
                        await responses.aclose()
                    result = None
            except Exception as exc:
                return _raised(context, exc)
            return result if context.code() is None else _returned(context, result)
        decorated = self._decorate(route, method, run)

        async def guarded(request: Any, context: Any) -> Any:
            try:
                result = await decorated(request, context)
            except RejectedError as exc:
                await _abort_async(context, exc)
            except FailedStatus as failed:
                return failed.result
            if type(result) is _Answered:
                raise result.error
            return result
        return guarded


# -- grpc.server (threads) ---------------------------------------------------------------------
def _abort(context: Any, exc: RejectedError) -> NoReturn:
    code = status_code(exc)
    context.set_trailing_metadata(trailers(exc, code))
    context.abort(code, str(exc))
    raise exc  # abort() always raises; never go on should a context not


def _admit(guards: Guards, context: Any) -> Permit:
    permit = admit(guards)
    if isinstance(permit, RejectedError):
        _abort(context, permit)
    return permit


def _ended(permit: Permit, context: Any, exc: BaseException) -> None:
    """A sync stream's handler raised ``exc``: release as its status says; a rejection (an
    inner guard's) aborts with its status."""
    permit.release(_judged(context, exc), exc)
    if isinstance(exc, RejectedError):
        _abort(context, exc)


def _held(responses: Iterator[Any], permit: Permit, context: Any) -> Iterator[Any]:
    """``responses`` passed through; the permit goes back when they end or fail (grpc's
    end-of-RPC callback covers a stream it stops reading)."""
    try:
        yield from responses
    except BaseException as exc:
        _ended(permit, context, exc)
        raise
    permit.release(_judged(context, None), None)


class SyncServerInterceptor(_Routing, grpc.ServerInterceptor):  # type: ignore[misc]
    """:class:`ServerInterceptor` for ``grpc.server`` (thread pool, sync handlers): the same
    table, key, status mapping and outcome rules. A guard that waits (a bulkhead with
    ``max_wait``) waits on the worker thread."""

    def intercept_service(self, continuation: Callable[..., Any],
                          handler_call_details: Any) -> Any:
        return self._guarded(handler_call_details.method, continuation(handler_call_details))

    def _wrap(self, behaviour: Callable[..., Any], streams_out: bool, route: Route,
              method: str) -> Callable[..., Any]:
        if streams_out:
            return self._wrap_stream(behaviour, route, method)

        def run(request: Any, context: Any) -> Any:
            try:
                result = behaviour(request, context)
            except Exception as exc:
                return _raised(context, exc)
            return result if context.code() is None else _returned(context, result)
        decorated = self._decorate(route, method, run)

        def guarded(request: Any, context: Any) -> Any:
            try:
                result = decorated(request, context)
            except RejectedError as exc:
                _abort(context, exc)
            except FailedStatus as failed:
                return failed.result
            if type(result) is _Answered:
                raise result.error
            return result
        return guarded

    def _wrap_stream(self, behaviour: Callable[..., Any], route: Route,
                     method: str) -> Callable[..., Any]:
        guards = stream_guards(route)
        if guards[0]._needs_key:
            limiter: Any = route
            call_key = self._metadata_key(method)

            def guards_for(request: Any, context: Any) -> Guards:
                return limiter.bind(call_key(request, context))._guards  # type: ignore[no-any-return]
        else:
            def guards_for(request: Any, context: Any) -> Guards:
                return guards

        def guarded(request: Any, context: Any) -> Any:
            permit = _admit(guards_for(request, context), context)
            if not context.add_callback(permit.cancel):
                permit.cancel()  # the RPC is already over
            try:
                responses = iter(behaviour(request, context))
            except BaseException as exc:
                _ended(permit, context, exc)
                raise
            return _held(responses, permit, context)
        return guarded
