"""The client interceptor for ``grpc.aio`` channels: :class:`ClientInterceptor`."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from grpc import aio

from .._edge import PatternTable
from ._status import FAILURE_CODES, Route, check_routes

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


class ClientInterceptor(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Guards a ``grpc.aio`` channel's unary calls:
    ``grpc.aio.insecure_channel(target, interceptors=[ClientInterceptor({...})])``.

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
    rejected call: ``fallback(request, call_details, continuation)`` returns the response.
    """

    def __init__(self, guards: Mapping[str, Optional[Route]]) -> None:
        check_routes(guards, refuse_keyed=(
            "a channel has no key per call; pass limiter.bind(key) for one key"))
        self._attempts: PatternTable[Any] = PatternTable(
            {pattern: None if route is None else route(_attempt)
             for pattern, route in guards.items()})

    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: Any, request: Any) -> Any:
        method = client_call_details.method
        attempt = self._attempts.lookup(method if isinstance(method, str) else method.decode())
        if attempt is None:
            return await continuation(client_call_details, request)
        result = await attempt(request, client_call_details, continuation)
        if isinstance(result, _Answered):
            raise result.error
        return result
