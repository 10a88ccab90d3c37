"""What the server and client interceptors share: the status a rejection maps to, its
trailing metadata, the codes that count as failures, and checking a guards table."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import grpc

from .._edge import PatternTable, retry_after_ms
from ..errors import (BulkheadFullError, ConfigurationError, RateLimitExceeded,
                      RejectedError)
from .._pure.route import Block
from ..guard import Guard, GuardHooks, Pipeline

try:  # grpcio-status brings googleapis-common-protos: rich error details
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import error_details_pb2, status_pb2
except ImportError:  # pragma: no cover - the extra installs it
    status_pb2 = None

__all__ = ["FAILURE_CODES", "HANDLER_FAILURE_CODES", "Route", "check_routes", "status_code",
           "trailers"]

#: what a method pattern routes to: a guard, a pipeline, or a rules set's guard for a resource
Route = Union[Guard, Pipeline, Block]
Metadata = Tuple[Tuple[str, Union[str, bytes]], ...]

#: the codes a client counts as a failure of the service (go-zero's set, plus
#: RESOURCE_EXHAUSTED: an overloaded server); any other code means the service answered
FAILURE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DATA_LOSS, grpc.StatusCode.RESOURCE_EXHAUSTED})
#: on the server, UNKNOWN too: it is what grpc sends for a handler that raised
HANDLER_FAILURE_CODES = FAILURE_CODES | {grpc.StatusCode.UNKNOWN}

RETRY_AFTER_KEY = "retry-after-ms"
DETAILS_KEY = "grpc-status-details-bin"


def status_code(exc: RejectedError) -> grpc.StatusCode:
    """The status a rejection aborts a call with: ``RESOURCE_EXHAUSTED`` for a rate limit or
    a full bulkhead (this caller asks too much), ``UNAVAILABLE`` for the rest (an open
    circuit, draining, load shedding: the server cannot serve anyone now)."""
    if isinstance(exc, (RateLimitExceeded, BulkheadFullError)):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNAVAILABLE


def trailers(exc: RejectedError, code: grpc.StatusCode) -> Metadata:
    """Trailing metadata for a rejection: ``retry-after-ms`` (whole ms, rounded up) when the
    delay is known, and a ``google.rpc.Status`` with a ``RetryInfo`` detail."""
    ms = retry_after_ms(exc)
    md: Metadata = () if ms is None else ((RETRY_AFTER_KEY, str(ms)),)
    if status_pb2 is None:
        return md
    status = status_pb2.Status(code=code.value[0], message=str(exc))
    if ms is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
            seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)))
        status.details.append(detail)
    return md + ((DETAILS_KEY, status.SerializeToString()),)


def is_rules_guard(route: Any) -> bool:
    """``rules.guard(resource)`` (either twin's ``Block``): it decorates unary calls with the
    rule in force at each call (a reload applies to the next call); it has no fixed guards
    to hold a stream by. Checked when a guards table is built, not per call."""
    if isinstance(route, Block):
        return True
    import importlib
    try:
        fast = importlib.import_module("gameguard._fast.route")
    except ImportError:
        return False
    return isinstance(route, fast.Block)


def stream_guards(route: Any) -> Sequence[GuardHooks]:
    """The guards a stream holds its permit on (per stream: one attribute read); a rules
    guard has none fixed."""
    guards: Optional[Sequence[GuardHooks]] = getattr(route, "_guards", None)
    if guards is None:
        raise TypeError(f"{route!r} guards unary calls only: a stream holds one permit for "
                        f"its whole life, so route streams to a guard or a pipeline(...)")
    return guards


def check_routes(guards: Mapping[str, Optional[Route]], *,
                 refuse_keyed: Optional[str]) -> PatternTable[Optional[Route]]:
    """``guards`` checked (every value a guard, a ``pipeline(...)`` or ``None``) and made a
    pattern table; ``refuse_keyed``, when given, is why a guard that needs a key per call
    (a ``KeyedLimiter``) cannot be used here."""
    table: PatternTable[Optional[Route]] = PatternTable(guards, param="guards")
    for pattern, route in guards.items():
        if route is None or is_rules_guard(route):
            continue
        if not isinstance(route, (Guard, Pipeline)):
            raise ConfigurationError(
                f"guards[{pattern!r}] must be a guard, a pipeline(...), rules.guard(resource) "
                f"or None, got {route!r}")
        if route._guards[0]._needs_key and refuse_keyed is not None:
            raise ConfigurationError(
                f"guards[{pattern!r}] is {route!r}, which limits per key: {refuse_keyed}")
    return table
