"""Server interceptors: :class:`ServerInterceptor` (``grpc.aio``) and
:class:`SyncServerInterceptor` (``grpc.server``).

Each wraps a method's handler once (cached per method) so that a call takes its guards'
permits before the handler runs and gives them back when the call ends: a unary call when
the handler returns, a stream when it ends, fails or is cancelled. The permits are held by
the guard protocol's own enter/release steps, not by ``with`` blocks, because a stream's
iterator may be finished on another task or thread than the one that started it.
"""
from __future__ import annotations

import inspect
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, NoReturn,
                    Optional, Sequence, Tuple)

import grpc
from grpc import aio

from .._checks import check_callable
from .._pure import call as protocol
from .._pure.kernel import IGNORED, SUCCESS
from ..errors import RejectedError
from ._status import HANDLER_FAILURE_CODES, Route, check_routes, status_code, trailers

if TYPE_CHECKING:
    from ..guard import GuardHooks

__all__ = ["ServerInterceptor", "SyncServerInterceptor"]

#: ``key(method, metadata) -> key`` for a ``KeyedLimiter``: metadata as (key, value) pairs
KeyFunc = Callable[[str, Sequence[Tuple[str, Any]]], Any]
Guards = Sequence["GuardHooks"]
GuardsFor = Callable[[Any], Guards]

#: wrapped handlers kept per interceptor (one per method the server serves)
_CACHE_LIMIT = 4096
#: (request_streaming, response_streaming) -> the handler factory and its behaviour field
_ARITIES = {
    (False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary"),
    (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream"),
    (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary"),
    (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream"),
}


class _FailedStatus(Exception):
    """What a handler's guards classify when it returned after setting a failure status
    (``context.set_code(INTERNAL)``) without raising."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(f"the handler finished with status {code}")
        self.code = code


#: the "exception" of a call that ended with no outcome (cancelled under a sync stream)
_NO_OUTCOME = BaseException("the RPC ended before its handler did")


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
        return exc if exc is not None else _FailedStatus(code)
    return None


class _Permit:
    """One call's permits, released exactly once: by the call's end or, for a sync stream,
    by grpc's end-of-RPC callback, whichever comes first (``list.pop`` is atomic)."""

    __slots__ = ("_guards", "_t0", "_box")

    def __init__(self, guards: Guards, t0: float, tokens: List[int]) -> None:
        self._guards = guards
        self._t0 = t0
        self._box = [tokens]

    def release(self, judged: Optional[BaseException], raised: Optional[BaseException]) -> None:
        """Release with ``judged``'s outcome; a machinery error is raised, or logged when the
        handler's own exception ``raised`` is on its way out."""
        try:
            tokens = self._box.pop()
        except IndexError:
            return
        guards, t0 = self._guards, self._t0
        try:
            t1 = protocol.clock_of(guards)()
        except BaseException as error:  # no exit reading: no outcome, at the entry reading
            protocol.release(guards, tokens, t0, 0.0, None, IGNORED, t0)
            protocol.surface(error, raised)
            return
        protocol.surface(protocol.release(guards, tokens, t1, t1 - t0, judged, SUCCESS, t0),
                         raised)

    def end(self, context: Any, exc: BaseException) -> Optional[RejectedError]:
        """The handler raised ``exc``: release as its status says; returns ``exc`` when it is
        a rejection (an inner guard's) for the caller to map to a status."""
        self.release(_judged(context, exc), exc)
        return exc if isinstance(exc, RejectedError) else None

    def cancel(self) -> None:
        """grpc's end-of-RPC callback: the permits come back with no outcome if still held."""
        self.release(_NO_OUTCOME, _NO_OUTCOME)


def _refusal(guard: GuardHooks, now: float) -> RejectedError:
    exc = guard._rejection(now)
    if not isinstance(exc, RejectedError):
        raise exc  # a guard that cannot run at all (a misconfiguration), not a rejection
    return exc


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
                                   self._guards_for(route, method))
            wrapped = make(behaviour, request_deserializer=handler.request_deserializer,
                           response_serializer=handler.response_serializer)
        if len(self._wrapped) < _CACHE_LIMIT:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _guards_for(self, route: Route, method: str) -> GuardsFor:
        """context -> the guards a call enters (a keyed limiter: bound to the call's key)."""
        if not route._guards[0]._needs_key:
            guards = route._guards
            return lambda context: guards
        limiter: Any = route
        key: Any = self._key

        def keyed(context: Any) -> Guards:
            metadata = tuple(context.invocation_metadata() or ())
            return limiter.bind(key(method, metadata))._guards  # type: ignore[no-any-return]
        return keyed

    def _wrap(self, behaviour: Callable[..., Any], streams_out: bool,
              guards_for: GuardsFor) -> Callable[..., Any]:
        raise NotImplementedError


# -- grpc.aio ----------------------------------------------------------------------------------
async def _abort_async(context: Any, exc: RejectedError) -> NoReturn:
    code = status_code(exc)
    await context.abort(code, str(exc), trailers(exc, code))
    raise exc  # abort() always raises; never go on should a context not


async def _admit_async(guards: Guards, context: Any) -> _Permit:
    t0 = protocol.clock_of(guards)()
    tokens: List[int] = []
    i = await protocol.enter_async(guards, t0, tokens)
    if i < len(guards):
        await _abort_async(context, _refusal(guards[i], t0))
    return _Permit(guards, t0, tokens)


class ServerInterceptor(_Routing, aio.ServerInterceptor):  # type: ignore[misc]
    """Guards a ``grpc.aio`` server's methods: ``grpc.aio.server(interceptors=[...])``.

    ``guards`` maps method patterns (``"/game.Match/Find"``, ``"/game.Match/*"``, ``"*"``;
    the most specific wins) to a guard, a ``pipeline(...)``, or ``None`` (not guarded). A
    ``KeyedLimiter`` needs ``key(method, metadata) -> key`` (metadata: the call's invocation
    metadata as (key, value) pairs), e.g. the player id a client sends.

    A rejected call never reaches its handler: it is aborted with ``status_code(error)``,
    details ``str(error)``, trailing ``retry-after-ms`` and a ``google.rpc.RetryInfo``
    detail when the delay is known. A rejection the handler itself raises (from a guard
    inside it) is mapped the same way. A stream holds its permits until it ends, fails or
    is cancelled. Breakers count what the client will see: a handler that raised or set a
    failure status (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL``, ``DATA_LOSS``,
    ``RESOURCE_EXHAUSTED``, ``UNKNOWN``) failed; one that answered, even with an error
    status such as ``NOT_FOUND``, succeeded. Guards' fallbacks are not called: the edge
    answers with a status and the client decides.
    """

    async def intercept_service(self, continuation: Callable[..., Any],
                                handler_call_details: Any) -> Any:
        return self._guarded(handler_call_details.method,
                             await continuation(handler_call_details))

    def _wrap(self, behaviour: Callable[..., Any], streams_out: bool,
              guards_for: GuardsFor) -> Callable[..., Any]:
        generates = inspect.isasyncgenfunction(behaviour)
        if not generates and not inspect.iscoroutinefunction(behaviour):
            raise TypeError(
                f"ServerInterceptor guards async handlers (async def), got {behaviour!r}: "
                "use SyncServerInterceptor with grpc.server for sync handlers")

        # one coroutine runs the whole call, writes included: its permits live and die
        # with the RPC's task, which grpc cancels when the client goes away
        async def guarded(request: Any, context: Any) -> Any:
            permit = await _admit_async(guards_for(context), context)
            try:
                if generates:
                    responses = behaviour(request, context)
                    try:
                        async for message in responses:
                            await context.write(message)
                    finally:
                        await responses.aclose()
                    result = None
                else:
                    result = await behaviour(request, context)
            except BaseException as exc:
                rejection = permit.end(context, exc)
                if rejection is not None:
                    await _abort_async(context, rejection)
                raise
            permit.release(_judged(context, None), None)
            return result
        return guarded


# -- grpc.server (threads) ---------------------------------------------------------------------
def _abort(context: Any, exc: RejectedError) -> NoReturn:
    code = status_code(exc)
    context.set_trailing_metadata(trailers(exc, code))
    context.abort(code, str(exc))
    raise exc  # abort() always raises; never go on should a context not


def _admit(guards: Guards, context: Any) -> _Permit:
    t0 = protocol.clock_of(guards)()
    tokens: List[int] = []
    i = protocol.enter(guards, t0, tokens)
    if i < len(guards):
        _abort(context, _refusal(guards[i], t0))
    return _Permit(guards, t0, tokens)


def _held(responses: Iterator[Any], permit: _Permit, context: Any) -> Iterator[Any]:
    """``responses`` passed through; the permit goes back when they end or fail (grpc's
    end-of-RPC callback covers a stream it stops reading)."""
    try:
        yield from responses
    except BaseException as exc:
        rejection = permit.end(context, exc)
        if rejection is not None:
            _abort(context, rejection)
        raise
    permit.release(_judged(context, None), None)


class SyncServerInterceptor(_Routing, grpc.ServerInterceptor):  # type: ignore[misc]
    """:class:`ServerInterceptor` for ``grpc.server`` (thread pool, sync handlers): the same
    table, key, status mapping and outcome rules. A guard that waits (a bulkhead with
    ``max_wait``) waits on the worker thread."""

    def intercept_service(self, continuation: Callable[..., Any],
                          handler_call_details: Any) -> Any:
        return self._guarded(handler_call_details.method, continuation(handler_call_details))

    def _wrap(self, behaviour: Callable[..., Any], streams_out: bool,
              guards_for: GuardsFor) -> Callable[..., Any]:
        def guarded(request: Any, context: Any) -> Any:
            permit = _admit(guards_for(context), context)
            if streams_out and not context.add_callback(permit.cancel):
                permit.cancel()  # the RPC is already over
            try:
                result = behaviour(request, context)
                if streams_out:
                    return _held(iter(result), permit, context)
            except BaseException as exc:
                rejection = permit.end(context, exc)
                if rejection is not None:
                    _abort(context, rejection)
                raise
            permit.release(_judged(context, None), None)
            return result
        return guarded
