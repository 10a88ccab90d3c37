"""What the ASGI and aiohttp middleware share: routes, admission, outcomes, rejections.

A route is the guards one path pattern names, outermost first. Each request enters them
through the guard protocol (``_pure/call.py``, which drives kernels of either twin), so a
waiting bulkhead waits, cancellation gives back what was taken, and every permit comes back
exactly once. The protocol's fallbacks are not used: the middleware answers a rejection
itself (429 or 503), since a guard's fallback takes a handler's arguments, not a request.
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

from ._checks import check_callable
from ._edge import PatternTable, retry_after_seconds
from ._pure import call as protocol
from .errors import BulkheadFullError, ConfigurationError, RateLimitExceeded
from .guard import FAILURE, IGNORED, REJECT, Guard, Pipeline
from .ratelimit import KeyedLimiter

__all__ = ["Route", "routes", "settle", "release", "status_of", "rejection_headers",
           "close_reason", "TRY_AGAIN_LATER"]

#: what one pattern may name: a guard, a pipeline, a keyed limiter, or several (outermost first)
Part = Union[Guard, Pipeline, KeyedLimiter]
Spec = Union[Part, Sequence[Part]]
KeyFunc = Callable[[Any], Any]
Clock = Callable[[], float]

#: WebSocket close code "Try Again Later" (RFC 6455 registry): a rejected connection
TRY_AGAIN_LATER = 1013
#: a close frame's reason is at most 123 bytes of UTF-8
_REASON_BYTES = 123


class Route:
    """The guards of one pattern, outermost first, with the clock they share.

    ``guards(subject)`` is the tuple to enter for one request: fixed at construction, except
    that each :class:`KeyedLimiter` is bound to ``key(subject)`` (``subject``: the ASGI scope
    or the aiohttp request)."""

    __slots__ = ("_parts", "_fixed", "_key", "read")

    def __init__(self, pattern: str, spec: Any, key: Optional[KeyFunc]) -> None:
        parts = _parts(pattern, spec)
        keyed = any(isinstance(p, KeyedLimiter) for p in parts)
        if keyed and key is None:
            raise ConfigurationError(
                f"guards[{pattern!r}] holds a KeyedLimiter: pass key=... (a function of the "
                "request returning the key, e.g. the player id)")
        clocks = {id(p._clock) for p in parts}
        if len(clocks) != 1:
            raise ConfigurationError(
                f"guards[{pattern!r}]: the guards of one pattern must share one clock "
                "(pass the same clock=)")
        self._parts = tuple(parts)
        self._fixed: Optional[Tuple[Any, ...]] = None if keyed else self._parts
        self._key = key
        self.read: Clock = protocol.clock_of(self._parts)

    def guards(self, subject: Any) -> Tuple[Any, ...]:
        if self._fixed is not None:
            return self._fixed
        assert self._key is not None
        k = self._key(subject)
        return tuple(p.bind(k) if isinstance(p, KeyedLimiter) else p for p in self._parts)


def _parts(pattern: str, spec: Any) -> List[Any]:
    """``spec`` flattened into guards (pipelines opened) and keyed limiters, checked."""
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise ConfigurationError(f"guards[{pattern!r}] is empty")
    out: List[Any] = []
    for item in items:
        if isinstance(item, Pipeline):
            out.extend(item.guards)
        elif isinstance(item, (Guard, KeyedLimiter)):
            out.append(item)
        else:
            raise ConfigurationError(
                f"guards[{pattern!r}] must be a guard, a pipeline, a KeyedLimiter or a list of "
                f"them, got {item!r}")
    if len({id(p) for p in out}) != len(out):
        raise ConfigurationError(f"guards[{pattern!r}] names the same guard twice")
    return out


def routes(guards: Mapping[str, Spec], key: Optional[KeyFunc]) -> PatternTable[Route]:
    """The pattern table of a middleware's ``guards`` mapping (checked here, once)."""
    check_callable("key", key)
    if not isinstance(guards, Mapping):
        raise ConfigurationError(
            f"guards must map path patterns to guards, got {type(guards).__name__}: {guards!r}")
    return PatternTable({p: Route(p, spec, key) if isinstance(p, str) else spec
                         for p, spec in guards.items()})


async def settle(guards: Sequence[Any], i: int, t0: float,
                 tokens: List[int]) -> Optional[BaseException]:
    """Guard ``i`` refused at ``t0`` (``protocol.take`` returned ``i``): wait where it
    waits, else give back the permits before it. ``None`` once every guard admitted, else
    the refusing guard's rejection (nothing is then held). Cancellation while waiting
    gives back every permit."""
    if guards[i]._waits:
        i = await protocol.enter_async(guards, t0, tokens, REJECT)
        if i == len(guards):
            return None
    else:
        protocol.surface(protocol.release(guards, tokens, t0, 0.0, None, IGNORED, t0), None)
    rejection: BaseException = guards[i]._rejection(t0)
    return rejection


def release(guards: Sequence[Any], tokens: List[int], t0: float, read: Clock,
            exc: Optional[BaseException], failed: bool) -> None:
    """Give back an admitted request's permits: ``exc`` (the app's exception) is classified
    by each guard, as for a guarded call; ``failed`` (a 5xx answer) is a failure for all.
    With ``exc`` the caller re-raises it, and an error met here is only logged."""
    if exc is not None or not failed:
        protocol.finish(guards, tokens, t0, read, exc)
        return
    try:
        t1 = read()
    except BaseException:
        protocol.release(guards, tokens, t0, 0.0, None, IGNORED, t0)
        raise
    protocol.surface(protocol.release(guards, tokens, t1, t1 - t0, None, FAILURE, t0), None)


def status_of(rejection: BaseException) -> int:
    """429 for a rate limit or a full bulkhead (this client should slow down), 503 for the
    rest (breaker open, draining, shedding: the service cannot take calls now)."""
    return 429 if isinstance(rejection, (RateLimitExceeded, BulkheadFullError)) else 503


def rejection_headers(rejection: BaseException) -> List[Tuple[str, str]]:
    """``Retry-After`` in whole seconds (rounded up, at least 1) when the guard knows it."""
    seconds = retry_after_seconds(rejection)
    return [] if seconds is None else [("Retry-After", str(seconds))]


def close_reason(rejection: BaseException) -> str:
    """A WebSocket close reason for ``rejection``: its message and retry-after, cut to the
    123 bytes a close frame allows (on a character boundary)."""
    seconds = retry_after_seconds(rejection)
    text = str(rejection) if seconds is None else f"{rejection}; retry after {seconds} s"
    raw = text.encode("utf-8")[:_REASON_BYTES]
    return raw.decode("utf-8", "ignore")
