"""The one guard protocol: decorators, ``with``, ``async with`` and ``pipeline``.

Every primitive is a :class:`Guard`: a kernel with two steps, *enter* (admit or reject,
returning a permit token) and *exit* (record outcome and duration, release), plus the
policy around it. Decorators, ``with``, ``async with`` and ``pipeline(...)`` are written
once over that protocol, in each language: ``_pure/call.py`` (Python, the reference) and
``_fast/call.pyx`` (the compiled common paths). Wrappers are chosen once, at decoration
time. A permit, once taken, is released exactly once on every path.

Adding a guard kind
-------------------
One public module with a :class:`Guard` subclass and one kernel pair
(``_pure/<name>.py`` and ``_fast/<name>.pyx``, same class and signatures, subclassing
``GuardKernel``). The subclass calls ``self._init_guard(name, clock, fallback)``, sets
``self._kernel = _impl.kernel("<name>").<Kernel>(...)`` and implements the hooks of
:class:`GuardHooks` it needs; :class:`Guard` gives every other hook a default. Nothing else
changes: both wrappers, ``with`` and ``pipeline`` only ever talk to those hooks. They also
count every call in the kernel's counters (by outcome, rejections, fallbacks), so a new
guard that calls ``gameguard._registry.register(self)`` is exported by the metrics.

A guard that must run the call itself (re-run it, race it, cancel it: ``Retry``,
``Timeout``, ``Hedge``) is a :class:`WrappingGuard` instead: no kernel and no permit, only
``_wrap_sync(call)`` (the wrapped sync call; the default refuses sync functions) and
``_run_async(call, args, kwargs)`` (one guarded await). Decorating with a pipeline splits it
at such guards: the kernel guards inside one run under the protocol around each attempt,
then the wrapping guard wraps that, and so on outwards.
"""
from __future__ import annotations

from collections.abc import Callable

from . import _impl
from .clock import Clock, monotonic
from ._checks import check_callable, check_clock
from .errors import ConfigurationError, RejectedError
from ._hints import TYPE_CHECKING, Protocol, cast, overload
from ._log import logger

if TYPE_CHECKING:
    from typing import Any, Awaitable, Dict, Optional, Sequence, Tuple, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])
    G = TypeVar("G")

__all__ = ["Guard", "GuardHooks", "Pipeline", "WrappingGuard", "pipeline", "Classifier",
           "ExceptionSpec"]


#: what ``record=``/``ignore=`` take: exception types, or a predicate on the exception
ExceptionSpec = (type[BaseException] | tuple[type[BaseException], ...]
                 | Callable[[BaseException], bool])

_k = _impl.kernel("kernel")  # constants are the same in both twins
SUCCESS: int = _k.SUCCESS
FAILURE: int = _k.FAILURE
IGNORED: int = _k.IGNORED
REJECT: int = _k.REJECT
PENDING_EVENTS: int = _k.PENDING_EVENTS
PENDING_WAKE: int = _k.PENDING_WAKE
#: the kernel counters, in the order ``counters()`` gives them
COUNTER_NAMES = ("successful", "failed", "ignored", "rejected", "fallbacks")

if TYPE_CHECKING:
    _Base = object
else:  # with / async with (in C when compiled; pure-kernel guards go to _pure_call there)
    _Base = _impl.kernel("call").GuardBase


class GuardHooks(Protocol):
    """The hooks both call wrappers (``_pure/call.py``, ``_fast/call.pyx``) use, and all
    they use: every guard implements them (:class:`Guard` has defaults for all but
    ``_kernel`` and ``_rejection``). They are called on the calling thread, outside any
    kernel call, and may raise: the protocol still releases every permit taken.
    """

    #: the kernel: ``enter(now) -> token`` (``< 0``: refused), ``exit(token, now, duration,
    #: outcome)``, ``pending`` (non-zero: call ``_service`` after the kernel call)
    _kernel: Any
    #: the clock every wrapper reads (``None``: the monotonic clock, read in C when compiled)
    _clock: Optional[Clock]
    #: answers a call this guard refuses, before the wrapper's fallback (``None``: raise)
    _fallback: Optional[Callable[..., Any]]
    #: ``True`` if ``_admit_slow``/``_admit_slow_async`` may admit after ``enter`` refused
    _waits: bool
    #: ``True`` for a guard that needs a key per call (``pipeline()`` refuses it)
    _needs_key: bool

    def _classify(self, exc: BaseException) -> int:
        """The outcome of a call that raised ``exc``: SUCCESS, FAILURE or IGNORED."""

    def _admit_slow(self, now: float) -> int:
        """``enter`` refused at ``now``: wait for a permit (a token), or ``REJECT``."""

    def _admit_slow_async(self, now: float) -> Awaitable[int]:
        """``_admit_slow`` for asyncio; cancellation takes nothing."""

    def _service(self) -> None:
        """Do what the kernel flagged in ``pending`` (events to emit, waiters to wake)."""

    def _rejection(self, now: float) -> BaseException:
        """The exception a refused call raises (usually a :class:`RejectedError`)."""


class Classifier:
    """Sorts an exception into SUCCESS / FAILURE / IGNORED.

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
            logger().exception("gameguard: exception predicate %r raised; treating as no match",
                               spec)
            return False

    def __call__(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception) or isinstance(exc, RejectedError):
            return IGNORED
        if self._matches(self._ignore, exc):
            return IGNORED
        return FAILURE if self._matches(self._record, exc) else SUCCESS


def _is_async_callable(func: Any) -> bool:
    import inspect
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None))


def _check_decoratable(func: Any) -> None:
    import inspect
    if not callable(func):
        raise TypeError(f"a guard decorates a callable, got {func!r}")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"cannot guard generator function {getattr(func, '__qualname__', func)!r}: the guard "
            "would only cover creating the generator; guard the code that iterates it instead")


def _pure_kernel(g: "Guard") -> bool:
    kernel = getattr(g, "_kernel", None)
    return kernel is not None and type(kernel).__module__.startswith("gameguard._pure.")


def _admit(func: Any, guards: Sequence["Guard"], fallback: Optional[Callable[..., Any]],
           is_async: bool) -> Any:
    """``func`` under kernel guards (outermost first): the protocol's wrapper."""
    call = guards[0]._call
    # mixed twins (a pure guard beside compiled ones, or a compiled kernel that fell back to
    # its pure twin on first use): the pure wrapper takes any
    if any(g._call is not call or _pure_kernel(g) for g in guards):
        from ._pure import call
    wrap = call.wrap_async if is_async else call.wrap_sync
    return wrap(func, tuple(guards), guards[0]._clock, fallback)


def _wrap(func: F, guards: Sequence["Guard"], fallback: Optional[Callable[..., Any]]) -> F:
    _check_decoratable(func)
    is_async = _is_async_callable(func)
    if not any(isinstance(g, WrappingGuard) for g in guards):
        return cast("F", _admit(func, guards, fallback, is_async))
    # innermost first: each run of kernel guards is one protocol wrapper around what is
    # inside it, each wrapping guard wraps everything inside it (so it sees every attempt)
    wrapped: Any = func
    end = len(guards)
    for i in range(len(guards) - 1, -1, -1):
        g = guards[i]
        if isinstance(g, WrappingGuard):
            if i + 1 < end:
                wrapped = _admit(wrapped, guards[i + 1:end], fallback, is_async)
            wrapped = g._wrap_async(wrapped) if is_async else g._wrap_sync(wrapped)
            end = i
    if end:
        wrapped = _admit(wrapped, guards[:end], fallback, is_async)
    wrapped.__wrapped__ = func  # the user's function, not the inner wrapper
    return cast("F", wrapped)


class _GuardMixin(_Base):
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

    # -- with / async with: the permits of each open block are kept per thread and task ----
    if TYPE_CHECKING:
        def __enter__(self: G) -> G: ...
        def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool: ...
        async def __aenter__(self: G) -> G: ...
        async def __aexit__(self, exc_type: Any, exc: Optional[BaseException],
                            tb: Any) -> bool: ...


class Guard(_GuardMixin):
    """Base of every guard: a kernel plus the policy around it (errors, fallback, waits).

    Subclasses set ``_kernel`` (from ``_impl.kernel(...)``), ``_rejection(now)``, and where
    needed the other hooks of :class:`GuardHooks`: ``_classify``, ``_admit_slow`` /
    ``_admit_slow_async`` with ``_waits = True`` (guards that may wait) and ``_service``
    (work the kernel flags in ``pending``).
    """

    name: str
    _kernel: Any
    _clock: Optional[Clock]
    _fallback: Optional[Callable[..., Any]]
    #: whether ``_admit_slow`` may admit after the kernel refused (guards that wait)
    _waits = False
    #: a guard that needs a key per call (KeyedLimiter): ``pipeline()`` refuses it
    _needs_key = False

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

    def _counters(self) -> Dict[str, int]:
        """Cumulative counts since creation (what ``snapshot()["counters"]`` and the metrics
        exporters report): calls by outcome as this guard classifies them (``successful``,
        ``failed``, ``ignored``), ``rejected``, and ``fallbacks`` (rejections a fallback
        answered)."""
        return dict(zip(COUNTER_NAMES, self._kernel.counters()))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


if TYPE_CHECKING:
    def _implements_the_hooks(g: Guard) -> GuardHooks:
        return g  # mypy checks here that Guard (so every guard) satisfies GuardHooks


class WrappingGuard(Guard):
    """Base of guards that run the call themselves rather than admit it: ``Retry`` re-runs
    it, ``Timeout`` cancels it, ``Hedge`` races copies of it. No kernel and no permit: the
    hooks are :meth:`_wrap_sync` (called once at decoration) and :meth:`_run_async` (once
    per call); ``call`` is the user's function, or the kernel guards inside this one in a
    pipeline, already wrapped.

    Such a guard cannot guard a ``with`` block (a block cannot be re-run, raced or
    pre-empted from outside): ``with`` and ``async with`` raise ``TypeError``.
    """

    def _init_wrapping(self, name: str, clock: Optional[Clock]) -> None:
        self._init_guard(name, clock, None)
        from ._registry import register
        register(self)

    def _wrap_sync(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call`` (a sync callable) under this guard; by default sync functions are
        refused (``TypeError``, at decoration)."""
        raise TypeError(f"{type(self).__name__} guards coroutine functions only: a sync "
                        f"function cannot be pre-empted or raced; got {_qualname(call)}")

    def _wrap_async(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call`` (a coroutine function) under this guard: :meth:`_run_async` per call."""
        import functools

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            return await self._run_async(call, args, kwargs)

        functools.update_wrapper(guarded, call)
        return guarded

    async def _run_async(self, call: Callable[..., Any], args: Tuple[Any, ...],
                         kwargs: Dict[str, Any]) -> Any:
        """One guarded await of ``call(*args, **kwargs)``."""
        raise NotImplementedError

    def _kind(self) -> str:
        return type(self).__name__

    def __enter__(self) -> Any:
        raise _no_block(self._kind())

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        raise _no_block(self._kind())

    async def __aenter__(self) -> Any:
        raise _no_block(self._kind())

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        raise _no_block(self._kind())


def _qualname(func: Any) -> str:
    return repr(getattr(func, "__qualname__", func))


def _no_block(kind: str) -> TypeError:
    return TypeError(f"{kind} runs the call itself (it may re-run, race or cancel it), which a "
                     f"with block does not allow: decorate the function instead")


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


class _WrappingPipeline(Pipeline):
    """A pipeline with a :class:`WrappingGuard` in it: a decorator only."""

    def _kind(self) -> str:
        return f"pipeline with {next(g for g in self._guards if isinstance(g, WrappingGuard))!r}"

    __enter__ = WrappingGuard.__enter__
    __exit__ = WrappingGuard.__exit__
    __aenter__ = WrappingGuard.__aenter__
    __aexit__ = WrappingGuard.__aexit__


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
        if g._needs_key:
            raise ConfigurationError(
                f"pipeline cannot take {g!r}: it limits per key; pass limiter.bind(key) for "
                "one key, or decorate with @limiter.limit(key=...)")
    if len({id(g) for g in guards}) != len(guards):
        raise ConfigurationError("pipeline got the same guard twice")
    clocks = {id(g._clock) for g in guards}
    if len(clocks) != 1:
        raise ConfigurationError("pipeline guards must share one clock (pass the same clock=)")
    check_callable("fallback", fallback)
    if any(isinstance(g, WrappingGuard) for g in guards):
        return _WrappingPipeline(guards, fallback)
    return Pipeline(guards, fallback)
