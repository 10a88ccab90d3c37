"""The one guard protocol: decorators, ``with``, ``async with`` and ``pipeline``.

Every primitive is a :class:`Guard` over a kernel with two steps, *enter* (admit or reject,
returning a token) and *exit* (record outcome and duration, release). Wrappers are chosen
once, at decoration time: sync functions get the compiled call wrapper when the kernels are
compiled, coroutine functions an ``async def`` wrapper that makes one kernel call on each
side of the ``await``.
"""
from __future__ import annotations

import functools
import inspect
import logging
from contextvars import ContextVar
from typing import (Any, Awaitable, Callable, Literal, Optional, Sequence, Tuple, Type, TypeVar,
                    Union, cast, overload)

from . import _impl
from .clock import Clock, monotonic
from ._checks import check_callable, check_clock
from .errors import ConfigurationError, RejectedError

__all__ = ["Guard", "Pipeline", "pipeline", "Classifier", "ExceptionSpec"]

log = logging.getLogger("gameguard")

F = TypeVar("F", bound=Callable[..., Any])
ExceptionSpec = Union[Type[BaseException], Tuple[Type[BaseException], ...],
                      Callable[[BaseException], bool]]

_k = _impl.kernel("kernel")  # constants are the same in both twins
SUCCESS: int = _k.SUCCESS
FAILURE: int = _k.FAILURE
IGNORED: int = _k.IGNORED
REJECT: int = _k.REJECT
PENDING_EVENTS: int = _k.PENDING_EVENTS
PENDING_WAKE: int = _k.PENDING_WAKE

# Permits taken by `with g:` / `async with g:`, per thread and per task (a ContextVar is
# both): a guard object is shared, so its __exit__ must find *this* block's token. A cons
# list (owner, tokens, t0, rest): push and the usual in-order pop are O(1).
_permits: ContextVar[Optional[tuple[Any, ...]]] = ContextVar("gameguard_permits", default=None)


def _pop_permit(owner: Any) -> Tuple[Any, float]:
    """Remove ``owner``'s newest open block; return its (tokens, t0)."""
    top = _permits.get()
    if top is not None and top[0] is owner:  # blocks close in the order they opened
        _permits.set(top[3])
        return top[1], top[2]
    skipped = []
    node = top
    while node is not None and node[0] is not owner:
        skipped.append(node)
        node = node[3]
    if node is None:
        raise RuntimeError(f"{owner!r}: __exit__ without a matching __enter__")
    rest = node[3]
    for entry in reversed(skipped):
        rest = (entry[0], entry[1], entry[2], rest)
    _permits.set(rest)
    return node[1], node[2]


class Classifier:
    """Sorts an exception into SUCCESS / FAILURE / IGNORED (DESIGN §4.1).

    ``ignore`` wins over ``record``; a non-``Exception`` (cancellation, KeyboardInterrupt)
    and a ``RejectedError`` from an inner guard count as nothing; an ``Exception`` matching
    ``record`` is a failure, any other means the dependency answered.
    """

    __slots__ = ("_record", "_ignore")

    def __init__(self, record: ExceptionSpec = Exception, ignore: Any = ()) -> None:
        self._record = self._spec("record", record)
        self._ignore = self._spec("ignore", ignore)

    @staticmethod
    def _spec(param: str, spec: Any) -> Any:
        if isinstance(spec, type) and issubclass(spec, BaseException):
            return (spec,)
        if isinstance(spec, tuple) and all(
                isinstance(t, type) and issubclass(t, BaseException) for t in spec):
            return spec
        if isinstance(spec, list) and all(
                isinstance(t, type) and issubclass(t, BaseException) for t in spec):
            return tuple(spec)
        if callable(spec) and not isinstance(spec, type):
            return spec
        raise ConfigurationError(
            f"{param} must be an exception type, a tuple of them, or a predicate, got {spec!r}")

    @staticmethod
    def _matches(spec: Any, exc: BaseException) -> bool:
        if isinstance(spec, tuple):
            return isinstance(exc, spec)
        try:
            return bool(spec(exc))
        except Exception:  # a broken predicate must not lose the caller's exception
            log.exception("gameguard: exception predicate %r raised; treating as no match", spec)
            return False

    def __call__(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception) or isinstance(exc, RejectedError):
            return IGNORED
        if self._matches(self._ignore, exc):
            return IGNORED
        return FAILURE if self._matches(self._record, exc) else SUCCESS


def _release(guards: Sequence["Guard"], tokens: Sequence[int], now: float, duration: float,
             exc: Optional[BaseException]) -> None:
    """Exit every admitted guard, innermost first. Never raises past a user's exception."""
    for i in range(len(tokens) - 1, -1, -1):
        g = guards[i]
        outcome = SUCCESS if exc is None else g._classify(exc)
        k = g._kernel
        k.exit(tokens[i], now, duration, outcome)
        if k.pending:
            g._service()


def _is_async_callable(func: Any) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None))


def _check_decoratable(func: Any) -> None:
    if not callable(func):
        raise TypeError(f"a guard decorates a callable, got {func!r}")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"cannot guard generator function {getattr(func, '__qualname__', func)!r}: the guard "
            "would only cover creating the generator; guard the code that iterates it instead")


def _wrap(func: F, guards: Sequence["Guard"], fallback: Optional[Callable[..., Any]]) -> F:
    _check_decoratable(func)
    clock = guards[0]._clock
    if _is_async_callable(func):
        return cast(F, _wrap_async(func, guards, clock, fallback))
    call = guards[0]._call
    if any(g._call is not call for g in guards):  # mixed twins: the pure wrapper takes any
        from ._pure import call
    return call.wrap_sync(func, tuple(guards), clock, fallback)  # type: ignore[no-any-return]


def _wrap_async(func: Callable[..., Awaitable[Any]], guards: Sequence["Guard"],
                clock: Optional[Clock], fallback: Optional[Callable[..., Any]]) -> Any:
    read = clock if clock is not None else monotonic
    guards = tuple(guards)

    async def rejected(g: Guard, now: float, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        fb = g._fallback if g._fallback is not None else fallback
        if fb is None:
            raise g._rejection(now)
        result = fb(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    if len(guards) == 1:
        g = guards[0]
        kernel = g._kernel

        async def admitted(token: int, t0: float, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> Any:
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                t1 = read()
                kernel.exit(token, t1, t1 - t0, g._classify(exc))
                if kernel.pending:
                    g._service()
                raise
            t1 = read()
            kernel.exit(token, t1, t1 - t0, SUCCESS)
            if kernel.pending:
                g._service()
            return result

        async def slow(t0: Optional[float], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            """The path off the compiled fast path: ``t0`` is when the kernel refused
            (None: not entered yet). Waits if the guard waits, else fallback or raise."""
            if t0 is None:
                t0 = read()
                token = kernel.enter(t0)
                if kernel.pending:
                    g._service()
                if token >= 0:
                    return await admitted(token, t0, args, kwargs)
            token = await g._admit_slow_async(t0) if g._waits else REJECT
            if kernel.pending:
                g._service()
            if token < 0:
                return await rejected(g, t0, args, kwargs)
            return await admitted(token, t0, args, kwargs)

        return g._call.wrap_async(func, g, clock, slow)
    else:
        @functools.wraps(func)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            t0 = read()
            tokens: list[Any] = []
            refused: Optional[Guard] = None
            try:
                for g in guards:
                    k = g._kernel
                    token = k.enter(t0)
                    if token < 0:
                        token = await g._admit_slow_async(t0)
                    if k.pending:
                        g._service()
                    if token < 0:
                        refused = g
                        break
                    tokens.append(token)
            except BaseException:  # cancelled while waiting for a slot
                _release(guards, tokens, t0, 0.0, _NOTHING)
                raise
            if refused is not None:  # the ones entered count it as nothing, released once
                _release(guards, tokens, t0, 0.0, _NOTHING)
                return await rejected(refused, t0, args, kwargs)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                t1 = read()
                _release(guards, tokens, t1, t1 - t0, exc)
                raise
            t1 = read()
            _release(guards, tokens, t1, t1 - t0, None)
            return result
    return guarded


class _Nothing(BaseException):
    """Released without an outcome: classified IGNORED by every guard."""


_NOTHING = _Nothing()


class _GuardMixin:
    """Decorator and context-manager behaviour shared by :class:`Guard` and :class:`Pipeline`."""

    _guards: Tuple["Guard", ...]

    @overload
    def __call__(self, func: F, /) -> F: ...
    @overload
    def __call__(self, func: None = None, /, *,
                 fallback: Optional[Callable[..., Any]] = None) -> Callable[[F], F]: ...

    def __call__(self, func: Any = None, /, *,
                 fallback: Optional[Callable[..., Any]] = None) -> Any:
        """Decorate ``func`` (``@g``), or return a decorator (``@g(fallback=f)``).

        ``fallback(*args, **kwargs)`` answers calls this decorator's guards reject when the
        rejecting guard has no fallback of its own.
        """
        check_callable("fallback", fallback)
        fb = fallback if fallback is not None else self._wrapper_fallback()
        if func is None:
            return lambda f: _wrap(f, self._guards, fb)
        return _wrap(func, self._guards, fb)

    def _wrapper_fallback(self) -> Optional[Callable[..., Any]]:
        return None

    # -- with / async with ------------------------------------------------------------------
    def __enter__(self) -> Any:
        now = self._read_clock()
        tokens: list[Any] = []
        try:
            for g in self._guards:
                k = g._kernel
                token = k.enter(now)
                if token < 0:
                    token = g._admit_slow(now)
                if k.pending:
                    g._service()
                if token < 0:
                    raise g._rejection(now)
                tokens.append(token)
        except BaseException:
            _release(self._guards, tokens, now, 0.0, _NOTHING)
            raise
        _permits.set((self, tokens, now, _permits.get()))
        return self

    async def __aenter__(self) -> Any:
        now = self._read_clock()
        tokens: list[Any] = []
        try:
            for g in self._guards:
                k = g._kernel
                token = k.enter(now)
                if token < 0:
                    token = await g._admit_slow_async(now)
                if k.pending:
                    g._service()
                if token < 0:
                    raise g._rejection(now)
                tokens.append(token)
        except BaseException:
            _release(self._guards, tokens, now, 0.0, _NOTHING)
            raise
        _permits.set((self, tokens, now, _permits.get()))
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> Literal[False]:
        tokens, t0 = _pop_permit(self)
        now = self._read_clock()
        if exc is None and exc_type is not None:  # exit called with a type only
            exc = exc_type()
        _release(self._guards, tokens, now, now - t0, exc)
        return False

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException],
                        tb: Any) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)

    def _read_clock(self) -> float:
        clock = self._guards[0]._clock
        return clock() if clock is not None else monotonic()


class Guard(_GuardMixin):
    """Base of every guard: a kernel plus the policy around it (errors, fallback, waits).

    Subclasses set ``_kernel`` (from ``_impl.kernel(...)``), ``_rejection(now)``, and where
    needed ``_classify``, ``_admit_slow``/``_admit_slow_async`` (guards that may wait) and
    ``_service`` (work the kernel flags in ``pending``).
    """

    name: str
    _kernel: Any
    _clock: Optional[Clock]
    _fallback: Optional[Callable[..., Any]]
    #: whether ``_admit_slow`` may admit after the kernel refused (guards that wait)
    _waits = False

    def _init_guard(self, name: str, clock: Optional[Clock],
                    fallback: Optional[Callable[..., Any]] = None) -> None:
        self.name = name
        self._clock = check_clock(clock)
        self._fallback = check_callable("fallback", fallback)
        self._call = _impl.kernel("call")
        self._guards = (self,)

    @property
    def clock(self) -> Clock:
        """The clock this guard reads."""
        return self._clock if self._clock is not None else monotonic

    def _now(self) -> float:
        return self._clock() if self._clock is not None else monotonic()

    def _classify(self, exc: BaseException) -> int:
        return IGNORED

    # -- with / async with: the single-guard fast path (one kernel call on each side) ------
    def __enter__(self) -> Any:
        now = self._clock() if self._clock is not None else monotonic()
        k = self._kernel
        token = k.enter(now)
        if token < 0 and self._waits:
            token = self._admit_slow(now)  # interrupted: raises, nothing was taken
        if k.pending:
            self._service()
        if token < 0:
            raise self._rejection(now)
        _permits.set((self, token, now, _permits.get()))
        return self

    async def __aenter__(self) -> Any:
        now = self._clock() if self._clock is not None else monotonic()
        k = self._kernel
        token = k.enter(now)
        if token < 0 and self._waits:
            token = await self._admit_slow_async(now)
        if k.pending:
            self._service()
        if token < 0:
            raise self._rejection(now)
        _permits.set((self, token, now, _permits.get()))
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> Literal[False]:
        token, t0 = _pop_permit(self)
        now = self._clock() if self._clock is not None else monotonic()
        if exc is None and exc_type is not None:  # exit called with a type only
            exc = exc_type()
        k = self._kernel
        k.exit(token, now, now - t0, SUCCESS if exc is None else self._classify(exc))
        if k.pending:
            self._service()
        return False

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException],
                        tb: Any) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)

    def _admit_slow(self, now: float) -> int:
        """Called when the kernel refused: wait for admission if this guard waits."""
        return REJECT

    async def _admit_slow_async(self, now: float) -> int:
        return REJECT

    def _rejection(self, now: float) -> RejectedError:
        raise NotImplementedError

    def _service(self) -> None:
        """Handle what the kernel flagged in ``pending`` (events to emit, waiters to wake)."""
        self._kernel.pending = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class Pipeline(_GuardMixin):
    """Guards composed outermost first; see :func:`pipeline`."""

    def __init__(self, guards: Sequence[Guard], fallback: Optional[Callable[..., Any]]) -> None:
        self._guards = tuple(guards)
        self.fallback = fallback

    def _wrapper_fallback(self) -> Optional[Callable[..., Any]]:
        return self.fallback

    @property
    def guards(self) -> Tuple[Guard, ...]:
        return self._guards

    def __repr__(self) -> str:
        return f"pipeline({', '.join(map(repr, self._guards))})"


MAX_PIPELINE = 16


def pipeline(*guards: Guard, fallback: Optional[Callable[..., Any]] = None) -> Pipeline:
    """Compose guards, outermost first: ``pipeline(breaker, limiter, bulkhead)``.

    A call enters every guard in order and exits them in reverse; a rejection by one guard
    releases those already entered, which count it as nothing (it is local overload, not a
    dependency failure). ``fallback`` answers any rejection whose guard has no fallback of
    its own. All guards must read the same clock.
    """
    if not guards:
        raise ConfigurationError("pipeline needs at least one guard, got none")
    if len(guards) > MAX_PIPELINE:
        raise ConfigurationError(f"pipeline takes at most {MAX_PIPELINE} guards, got {len(guards)}")
    for g in guards:
        if not isinstance(g, Guard):
            raise ConfigurationError(f"pipeline takes guards, got {g!r}")
    if len({id(g) for g in guards}) != len(guards):
        raise ConfigurationError("pipeline got the same guard twice")
    clocks = {id(g._clock) for g in guards}
    if len(clocks) != 1:
        raise ConfigurationError("pipeline guards must share one clock (pass the same clock=)")
    check_callable("fallback", fallback)
    return Pipeline(guards, fallback)
