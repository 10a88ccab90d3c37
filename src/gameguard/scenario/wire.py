"""The scenario's wire: JSON over grpc.aio generic handlers, so no ``.proto`` is compiled.

Method names are ``/game.<Service>/<Op>``; requests and answers are JSON objects.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Dict, Mapping

import grpc

Handler = Callable[[Dict[str, Any], "grpc.aio.ServicerContext"], Awaitable[Dict[str, Any]]]


def encode(obj: Dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode(data: bytes) -> Dict[str, Any]:
    out = json.loads(data) if data else {}
    if not isinstance(out, dict):
        raise ValueError(f"expected a JSON object, got {out!r}")
    return out


def service(name: str, ops: Mapping[str, Handler]) -> grpc.GenericRpcHandler:
    """A generic handler serving ``/game.<name>/<op>`` for each op."""
    handlers = {op: grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=decode, response_serializer=encode)
        for op, fn in ops.items()}
    return grpc.method_handlers_generic_handler(f"game.{name}", handlers)


class Client:
    """Calls ``/game.<service>/<op>`` on one channel; ``call(service, op, body, timeout)``."""

    def __init__(self, target: str, interceptors: Any = None) -> None:
        self.channel = grpc.aio.insecure_channel(
            target, interceptors=interceptors,
            options=[("grpc.enable_retries", 0), ("grpc.max_reconnect_backoff_ms", 500),
                     ("grpc.initial_reconnect_backoff_ms", 100)])
        self._calls: Dict[str, Any] = {}

    async def call(self, service: str, op: str, body: Dict[str, Any], *,
                   timeout: float) -> Dict[str, Any]:
        method = f"/game.{service}/{op}"
        stub = self._calls.get(method)
        if stub is None:
            stub = self._calls[method] = self.channel.unary_unary(
                method, request_serializer=encode, response_deserializer=decode)
        result: Dict[str, Any] = await stub(body, timeout=timeout)
        return result

    async def close(self) -> None:
        await self.channel.close()
