"""What the ASGI and aiohttp middleware share: routes, admission, outcomes, rejections.

A route is the guards one path pattern names, outermost first. Runs of plain guards enter
as one block through the guard protocol's ``async with`` (compiled when the kernels are: no
Python frame per guard), so a waiting bulkhead waits, cancellation gives back what was
taken and every permit comes back exactly once; a :class:`KeyedLimiter` decides with its
table's ``try_acquire(key)`` (it holds no permit). The guards' fallbacks are not used: the
middleware answers a rejection itself (429 or 503), since a guard's fallback takes a
handler's arguments, not a request.
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

from ._checks import check_callable
from ._edge import PatternTable, retry_after_seconds
from ._log import logger
from .errors import BulkheadFullError, ConfigurationError, RateLimitExceeded, RejectedError
from .guard import Guard, Pipeline, pipeline
from .ratelimit import KeyedLimiter

__all__ = ["Route", "routes", "ServerErrorResponse", "keyed_refusal", "leave_with_status",
           "leave_quietly", "status_of", "rejection_headers", "close_reason", "TRY_AGAIN_LATER"]

#: what one pattern may name: a guard, a pipeline, a keyed limiter, or several (outermost first)
Part = Union[Guard, Pipeline, KeyedLimiter]
Spec = Union[Part, Sequence[Part]]
KeyFunc = Callable[[Any], Any]
Clock = Callable[[], float]

#: WebSocket close code "Try Again Later" (RFC 6455 registry): a rejected connection
TRY_AGAIN_LATER = 1013
#: a close frame's reason is at most 123 bytes of UTF-8
_REASON_BYTES = 123


class ServerErrorResponse(Exception):
    """How a route's breakers see a response with a 5xx ``status``: the outcome their
    ``record``/``ignore`` give it (a failure by default; ``ignore=lambda e: getattr(e,
    "status", 0) == 501`` would spare one status). Never raised to anyone."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _judges(guard: Any) -> bool:
    """Whether ``guard`` classifies outcomes (breakers, throttles): only then is a
    response's status watched."""
    return "_classify" in vars(guard) or type(guard)._classify is not Guard._classify


class Route:
    """The guards of one pattern, outermost first, with the clock they share.

    ``steps`` holds, in order, blocks (a guard or a pipeline of the consecutive plain
    guards: ``async with`` forms) and keyed limiters (decided per request under
    ``key(subject)``; ``subject`` is the ASGI scope or the aiohttp request). ``judges``:
    some guard classifies outcomes, so the response status matters.

    Most routes are keyed limiters, then at most one block: ``plan`` is then ``(keyed,
    key, block or None, judges, block.__aenter__, block.__exit__)``, ``keyed`` holding
    ``(limiter, limiter.try_acquire)`` pairs (methods bound once, called per request): what a
    middleware decides inline (no coroutine of the route's own per request); ``None`` for
    any other route (:meth:`enter`, :meth:`exit`)."""

    __slots__ = ("steps", "blocks", "judges", "read", "plan", "_key", "_keyed")

    def __init__(self, pattern: str, spec: Any, key: Optional[KeyFunc]) -> None:
        parts = _parts(pattern, spec)
        self._keyed = any(isinstance(p, KeyedLimiter) for p in parts)
        if self._keyed and key is None:
            raise ConfigurationError(
                f"guards[{pattern!r}] holds a KeyedLimiter: pass key=... (a function of the "
                "request returning the key, e.g. the player id)")
        if len({id(p._clock) for p in parts}) != 1:
            raise ConfigurationError(
                f"guards[{pattern!r}]: the guards of one pattern must share one clock "
                "(pass the same clock=)")
        steps: List[Any] = []
        run: List[Guard] = []
        for p in parts + [None]:
            if isinstance(p, Guard) and not isinstance(p, KeyedLimiter):
                run.append(p)
                continue
            if run:
                steps.append(run[0] if len(run) == 1 else pipeline(*run))
                run = []
            if p is not None:
                p.bind(None)  # refuses a capacity below one call now, not per request
                steps.append(p)
        self.steps: Tuple[Any, ...] = tuple(steps)
        #: the blocks, innermost first: the order they are exited in
        self.blocks: Tuple[Any, ...] = tuple(
            s for s in reversed(steps) if not isinstance(s, KeyedLimiter))
        self.judges = any(_judges(p) for p in parts if not isinstance(p, KeyedLimiter))
        self._key = key
        self.read: Clock = parts[0].clock
        lead = 0
        while lead < len(steps) and isinstance(steps[lead], KeyedLimiter):
            lead += 1
        block = steps[lead] if lead < len(steps) else None
        self.plan: Optional[Tuple[Any, ...]] = (
            (tuple((k, k.try_acquire) for k in self.steps[:lead]), key, block, self.judges,
             None if block is None else block.__aenter__,  # bound once, called per request
             None if block is None else block.__exit__)
            if len(steps) - lead <= 1 else None)

    def refusal(self, limiter: KeyedLimiter, key: Any) -> BaseException:
        """The rejection of a keyed ``limiter`` that refused ``key`` just now."""
        return limiter.bind(key)._rejection(self.read())

    async def enter(self, subject: Any) -> Optional[BaseException]:
        """Enter every step outermost first: ``None`` once all admitted, else the refusing
        guard's rejection, with the steps already entered exited as no outcome. Anything
        else raising (cancellation while waiting, a broken clock) exits them too."""
        key = self._key(subject) if self._keyed else None  # type: ignore[misc]
        entered = 0
        try:
            for step in self.steps:
                if isinstance(step, KeyedLimiter):
                    if not step.try_acquire(key):
                        rejection = self.refusal(step, key)
                        self._unwind(entered, rejection)
                        return rejection
                    continue
                try:
                    await step.__aenter__()
                except RejectedError as refused:
                    self._unwind(entered, refused)
                    return refused
                entered += 1
        except BaseException as error:
            self._unwind(entered, error)
            raise
        return None

    def _unwind(self, entered: int, why: BaseException) -> None:
        """Exit the ``entered`` outermost blocks, innermost first, as no outcome."""
        if entered:
            self._exit(self.blocks[len(self.blocks) - entered:], why, True)

    def exit(self, exc_type: Any, exc: Optional[BaseException], tb: Any = None) -> None:
        """Exit every block, innermost first, with ``exc`` as the outcome (``None``:
        success; an app exception; a :class:`ServerErrorResponse`): a block's
        ``__exit__`` signature, so one call serves a route and a lone block alike."""
        self._exit(self.blocks, exc, exc is not None)

    @staticmethod
    def _exit(blocks: Sequence[Any], exc: Optional[BaseException], quiet: bool) -> None:
        # a RejectedError outcome counts as nothing (local overload), as in a pipeline
        error: Optional[BaseException] = None
        for block in blocks:
            try:
                block.__exit__(None if exc is None else type(exc), exc, None)
            except BaseException as e:  # the next blocks still get their permits back
                error = error or e
        if error is not None:
            if not quiet:
                raise error
            logger().error("gameguard: %r raised while releasing permits; the request's own "
                           "%r stands", error, exc, exc_info=error)


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


def keyed_refusal(route: Route, keyed: Sequence[Any], key: KeyFunc,
                  subject: Any) -> Optional[BaseException]:
    """Decide a plan's ``keyed`` limiters (``(limiter, try_acquire)`` pairs) under
    ``key(subject)``: the first refusal's rejection, or ``None`` when all admit."""
    k = key(subject)
    for limiter, try_acquire in keyed:
        if not try_acquire(k):
            return route.refusal(limiter, k)
    return None


def leave_with_status(leave: Callable[[Any, Any, Any], Any], status: int) -> None:
    """``leave`` (a block's ``__exit__`` or ``Route.exit``) with a response's outcome: a
    5xx is a :class:`ServerErrorResponse` failure, anything else a success."""
    if status >= 500:
        leave(ServerErrorResponse, ServerErrorResponse(status), None)
    else:
        leave(None, None, None)


def leave_quietly(leave: Callable[[Any, Any, Any], Any], exc: BaseException) -> None:
    """``leave`` with the handler's exception ``exc`` as the outcome; an error releasing is
    logged, never raised: the handler's own exception is what reaches the server."""
    try:
        leave(type(exc), exc, None)
    except BaseException as error:
        logger().error("gameguard: %r raised while releasing permits; the request's own "
                       "%r stands", error, exc, exc_info=error)


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
