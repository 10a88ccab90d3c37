"""The client interceptor for ``grpc.aio`` channels: :class:`ClientInterceptor`."""
from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, List, Mapping, Optional, Set

from grpc import aio

from .._edge import PatternTable
from ..errors import RejectedError
from ._permit import NO_OUTCOME, FailedStatus, Permit, admit_async
from ._status import FAILURE_CODES, Route, check_routes, stream_guards

__all__ = ["ClientInterceptor"]


class _Answered:
    """An attempt the service answered with a status outside ``FAILURE_CODES``: returned,
    not raised, so the guards count it as a success; the caller still gets the error."""

    __slots__ = ("error",)

    def __init__(self, error: aio.AioRpcError) -> None:
        self.error = error


async def _attempt(request: Any, details: Any, continuation: Callable[..., Any]) -> Any:
    """One call on the wire: the completed call, an :class:`_Answered`, or the
    ``AioRpcError`` of a failure code raised (what breakers and retries see)."""
    call = await continuation(details, request)
    try:
        await call
    except aio.AioRpcError as error:
        if error.code() in FAILURE_CODES:
            raise
        return _Answered(error)
    except BaseException:
        call.cancel()  # the attempt was cancelled (a timeout, the caller): so is the RPC
        raise
    return call


def _method(details: Any) -> str:
    method = details.method
    return method if isinstance(method, str) else method.decode()


async def _stream_ended(permit: Permit, call: Any) -> None:
    """A guarded stream ended with a status: its permit goes back with that outcome."""
    code = await call.code()  # the call is done: this does not wait
    permit.release(FailedStatus(code) if code in FAILURE_CODES else None, NO_OUTCOME)


class ClientInterceptor(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Guards a ``grpc.aio`` channel's unary calls:
    ``grpc.aio.insecure_channel(target, interceptors=[ClientInterceptor({...})])``, or all
    its calls, streams too: ``interceptors=ClientInterceptor({...}).all()``.

    ``guards`` maps method patterns (``"/game.Match/Find"``, ``"/game.Match/*"``, ``"*"``;
    the most specific wins) to a guard or a ``pipeline(...)`` (``None``: not guarded),
    typically a :class:`~gameguard.CircuitBreaker` per dependency. Each call goes through
    the guard as a decorated coroutine, so a pipeline's order is the call's: put a retry
    outside the breaker and the breaker counts every attempt.

    ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL``, ``DATA_LOSS`` and
    ``RESOURCE_EXHAUSTED`` count as failures (``FAILURE_CODES``); any other status means the
    service answered, a success for the guards, and its ``AioRpcError`` still reaches the
    caller. While a breaker is open the call raises :class:`~gameguard.CircuitOpenError`
    locally, without touching the network. A guard's fallback, if it has one, answers a
    rejected unary call: ``fallback(request, call_details, continuation)`` returns the
    response.

    With ``all()``, a streaming call (unary-stream, stream-unary, stream-stream) holds its
    permits from its start until its status arrives or it is cancelled, and counts that
    status once, by the same codes; a rejected stream raises where the caller first reads
    it (grpc.aio files an interceptor under one call kind only, hence the siblings).
    """

    def __init__(self, guards: Mapping[str, Optional[Route]]) -> None:
        self._routes = check_routes(guards, refuse_keyed=(
            "a channel has no key per call; pass limiter.bind(key) for one key"))
        self._ending: Set[asyncio.Task[None]] = set()  # stream ends being recorded
        self._attempts: PatternTable[Any] = PatternTable(
            {pattern: None if route is None else route(_attempt)
             for pattern, route in guards.items()})

    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: Any, request: Any) -> Any:
        attempt = self._attempts.lookup(_method(client_call_details))
        if attempt is None:
            return await continuation(client_call_details, request)
        result = await attempt(request, client_call_details, continuation)
        if isinstance(result, _Answered):
            raise result.error
        return result

    async def _intercept_stream(self, continuation: Callable[..., Any],
                                client_call_details: Any, request: Any) -> Any:
        route = self._routes.lookup(_method(client_call_details))
        if route is None:
            return await continuation(client_call_details, request)
        permit = await admit_async(stream_guards(route))
        if isinstance(permit, RejectedError):
            raise permit
        try:
            call = await continuation(client_call_details, request)
        except BaseException as exc:
            permit.release(exc, exc)
            raise
        call.add_done_callback(functools.partial(self._on_stream_done, permit))
        return call

    def _on_stream_done(self, permit: Permit, call: Any) -> None:
        if call.cancelled():  # the common early end needs no task
            permit.cancel()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called back outside the loop (at teardown): no outcome
            permit.cancel()
            return
        task = loop.create_task(_stream_ended(permit, call))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    def all(self) -> List[Any]:
        """This interceptor and three siblings sharing its guards, one per streaming call
        kind: pass the list as a channel's ``interceptors``."""
        return [self, _UnaryStream(self), _StreamUnary(self), _StreamStream(self)]


class _UnaryStream(aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, owner: ClientInterceptor) -> None:
        self._owner = owner

    async def intercept_unary_stream(self, continuation: Callable[..., Any],
                                     client_call_details: Any, request: Any) -> Any:
        return await self._owner._intercept_stream(continuation, client_call_details, request)


class _StreamUnary(aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, owner: ClientInterceptor) -> None:
        self._owner = owner

    async def intercept_stream_unary(self, continuation: Callable[..., Any],
                                     client_call_details: Any, request_iterator: Any) -> Any:
        return await self._owner._intercept_stream(continuation, client_call_details,
                                                   request_iterator)


class _StreamStream(aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, owner: ClientInterceptor) -> None:
        self._owner = owner

    async def intercept_stream_stream(self, continuation: Callable[..., Any],
                                      client_call_details: Any, request_iterator: Any) -> Any:
        return await self._owner._intercept_stream(continuation, client_call_details,
                                                   request_iterator)
