"""gameguard at the gRPC edge: server interceptors (``grpc.aio`` and ``grpc.server``) and a
client interceptor for ``grpc.aio`` channels.

Needs the ``grpc`` extra (``pip install gameguard[grpc]``: grpcio, grpcio-status)::

    from gameguard.grpc import ServerInterceptor
    server = grpc.aio.server(interceptors=[ServerInterceptor({
        "/game.Match/Find": gg.KeyedLimiter(5),          # per player, keyed from metadata
        "/game.Match/*": gg.Bulkhead(200),
        "/grpc.health.v1.Health/*": None,                # never guarded
    }, key=lambda method, metadata: dict(metadata).get("player-id"))])

Rejections become statuses: rate limit and bulkhead ``RESOURCE_EXHAUSTED``; open circuit,
draining and load shedding ``UNAVAILABLE``; with ``retry-after-ms`` trailing metadata and a
``google.rpc.RetryInfo`` detail when the delay is known.
"""
from __future__ import annotations

try:
    import grpc as _grpc  # noqa: F401  (absolute: the grpcio package, not this one)
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "gameguard.grpc needs grpcio: pip install 'gameguard[grpc]'") from exc

from ._status import FAILURE_CODES, status_code
from .client import ClientInterceptor
from .server import ServerInterceptor, SyncServerInterceptor

__all__ = ["ClientInterceptor", "FAILURE_CODES", "ServerInterceptor", "SyncServerInterceptor",
           "status_code"]
