"""The guard protocol in Python: the pure twin of ``_fast/call.pyx``, written once.

Every form of a guarded call (``@g`` on a sync or async function, ``with g:``,
``async with g:``, ``pipeline(...)``) is the same three steps over a sequence of guards:

1. :func:`take` / :func:`enter` / :func:`enter_async`: read the clock once, ``enter`` every
   kernel outermost first, waiting where a refusing guard waits; a refusal gives back the
   permits taken so far (as no outcome) and names the guard that refused;
2. the user's code runs;
3. :func:`finish`: read the clock again and ``exit`` every permit innermost first with the
   outcome each guard gives the exception (or success).

The rule that makes it safe: **a permit, once taken, is released exactly once whatever
raises** (a kernel, a clock, a throttle ``rng``, a listener in ``_service``, a classifier):
:func:`release` never stops half way, and an exit-time clock failure releases every permit
with no outcome (``IGNORED``) at the entry reading, duration 0. The caller's own exception
always propagates; a machinery error met on the way is then logged, otherwise raised.
The only "no outcome" value is ``IGNORED``.

The compiled twin keeps the common paths in C and uses these functions for waiting.
"""
from __future__ import annotations

import functools
from contextvars import ContextVar
from .._hints import TYPE_CHECKING
from ..clock import monotonic
from .kernel import FAILURE, FALLBACK, IGNORED, REJECTED, SUCCESS
from .._log import logger

if TYPE_CHECKING:
    from typing import Any, Callable, List, Optional, Sequence, Tuple

    from ..clock import Clock
    from ..guard import GuardHooks

    Guards = Sequence[GuardHooks]

# the twin API (the same names as the compiled module); the protocol functions below are the
# Python implementation guard.py and the compiled waiting paths call
__all__ = ["GuardBase", "monotonic", "new_rejection", "wrap_async", "wrap_sync"]




def new_rejection(cls: type, message: str, retry_after: Optional[float],
                  name: Optional[str]) -> Any:
    """``cls(message, retry_after=..., name=...)``; the compiled twin skips ``__init__``."""
    return cls(message, retry_after=retry_after, name=name)


def clock_of(guards: Guards) -> Clock:
    clock = guards[0]._clock
    return clock if clock is not None else monotonic


# -- the protocol ------------------------------------------------------------------------------
def release(guards: Guards, tokens: List[int], now: float, duration: float,
            exc: Optional[BaseException] = None, outcome: int = SUCCESS,
            t0: Optional[float] = None) -> Optional[BaseException]:
    """Exit every permit in ``tokens`` innermost first, each exactly once, and empty it.

    Each guard's outcome is ``exc`` as its ``_classify`` sees it, else ``outcome``, and is
    counted in the kernel's ``counts`` (IGNORED when the kernel refused it). Nothing
    stops the loop: a classifier that raises counts as no outcome, a kernel ``exit`` that
    refuses ``now`` is retried at the entry reading ``t0`` with no outcome, a ``_service``
    that raises is noted; the first such error is returned (never raised here).
    """
    error: Optional[BaseException] = None
    held = i = len(tokens)
    while i:  # innermost first (a while loop: a range object per call costs more)
        i -= 1
        g = guards[i]
        k = g._kernel
        o = outcome
        if exc is not None:
            try:
                o = g._classify(exc)
            except BaseException as e:
                o, error = IGNORED, error or e
        try:
            k.exit(tokens[i], now, duration, o)
        except BaseException as e:
            o, error = IGNORED, error or e
            if t0 is not None and t0 != now:
                try:
                    k.exit(tokens[i], t0, 0.0, IGNORED)
                except BaseException:
                    pass  # the first error already says what went wrong
        o = o if o == SUCCESS or o == FAILURE else IGNORED  # (`in` would build a tuple)
        try:  # a pure kernel's list, inline (cheaper than a call); a compiled one: bump
            k._counts[o] += 1
        except AttributeError:
            k.bump(o)
        if k.pending:
            try:
                g._service()
            except BaseException as e:
                error = error or e
    del tokens[:held]
    return error


def surface(error: Optional[BaseException], exc: Optional[BaseException]) -> None:
    """A machinery error after every permit was released: raised, unless the caller's own
    exception ``exc`` is on its way out (then logged: the caller's exception wins)."""
    if error is None:
        return
    if exc is None:
        raise error
    logger().error("gameguard: %r raised while releasing permits; the call's own %r propagates",
              error, exc, exc_info=error)


def take(guards: Guards, now: float, tokens: List[int], first: Optional[int] = None) -> int:
    """Enter ``guards[len(tokens):]`` outermost first, appending each permit to ``tokens``.

    Returns ``len(guards)`` when every guard admitted, else the index of the first guard
    that refused, the permits before it still held (the caller waits or gives them back).
    ``first``: that guard's ``enter`` result when the caller already called it (the compiled
    fast path), or what waiting for it gave. Anything raising (a kernel ``enter``, a
    ``_service``) gives back every permit in ``tokens`` before it propagates.
    """
    i = len(tokens)
    try:
        while i < len(guards):
            g = guards[i]
            k = g._kernel
            if first is None:
                token = k.enter(now)
            else:
                token, first = first, None
            if token >= 0:
                tokens.append(token)
            if k.pending:
                g._service()
            if token < 0:
                return i
            i += 1
        return i
    except BaseException as exc:
        surface(release(guards, tokens, now, 0.0, None, IGNORED, now), exc)
        raise


def _refused(guards: Guards, now: float, tokens: List[int], i: int,
             exc: Optional[BaseException] = None) -> int:
    surface(release(guards, tokens, now, 0.0, None, IGNORED, now), exc)
    if exc is None:  # refused for good (an interrupted wait is not a rejection)
        guards[i]._kernel.bump(REJECTED)
    return i


def enter(guards: Guards, now: float, tokens: List[int], first: Optional[int] = None) -> int:
    """:func:`take`, waiting (``_admit_slow``) where a refusing guard waits. Returns
    ``len(guards)`` when admitted, else the refusing guard's index with every permit
    given back."""
    i = take(guards, now, tokens, first)
    while i < len(guards) and guards[i]._waits:
        try:
            token = guards[i]._admit_slow(now)
        except BaseException as exc:  # interrupted while waiting: nothing taken by it
            _refused(guards, now, tokens, i, exc)
            raise
        j = take(guards, now, tokens, token)  # the wait's result stands for guard i's enter
        if j == i:
            break  # the wait ran out
        i = j
    return i if i == len(guards) else _refused(guards, now, tokens, i)


async def enter_async(guards: Guards, now: float, tokens: List[int],
                      first: Optional[int] = None) -> int:
    """:func:`enter` for asyncio: waits with ``_admit_slow_async``; cancellation while
    waiting gives back every permit taken."""
    i = take(guards, now, tokens, first)
    while i < len(guards) and guards[i]._waits:
        try:
            token = await guards[i]._admit_slow_async(now)
        except BaseException as exc:
            _refused(guards, now, tokens, i, exc)
            raise
        j = take(guards, now, tokens, token)
        if j == i:
            break
        i = j
    return i if i == len(guards) else _refused(guards, now, tokens, i)


def finish(guards: Guards, tokens: List[int], t0: float, clock: Clock,
           exc: Optional[BaseException]) -> None:
    """After the guarded code: read the clock and release every permit with ``exc``'s
    outcome (``None``: success). A clock that raises releases them with no outcome at
    ``t0``, duration 0. With ``exc`` given, an error met here is logged and the caller
    re-raises ``exc``; without, it is raised."""
    try:
        t1 = clock()
    except BaseException as error:
        release(guards, tokens, t0, 0.0, None, IGNORED, t0)
        surface(error, exc)
        return
    met = release(guards, tokens, t1, t1 - t0, exc, SUCCESS, t0)
    if met is not None:  # tested here: calling surface for nothing costs more than the test
        surface(met, exc)


def reject(guard: GuardHooks, now: float, fallback: Optional[Callable[..., Any]],
           args: Tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A refused call (counted as rejected by the caller): the guard's own fallback, else
    the wrapper's, else raise."""
    fb = guard._fallback if guard._fallback is not None else fallback
    if fb is not None:
        guard._kernel.bump(FALLBACK)
        return fb(*args, **kwargs)
    raise guard._rejection(now)


async def reject_async(guard: GuardHooks, now: float, fallback: Optional[Callable[..., Any]],
                       args: Tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """:func:`reject` for a coroutine function: a fallback may be sync or async."""
    result = reject(guard, now, fallback, args, kwargs)
    if hasattr(result, "__await__"):
        result = await result
    return result


def exception_of(exc_type: Any, exc: Optional[BaseException]) -> Optional[BaseException]:
    """The exception ``__exit__`` was given, built from ``exc_type`` when only the type was
    (a type that cannot be built counts as no outcome)."""
    if exc is not None or exc_type is None:
        return exc
    try:
        return exc_type()  # type: ignore[no-any-return]
    except BaseException:
        return BaseException()  # not an Exception: every guard classifies it IGNORED


# -- decorated calls ---------------------------------------------------------------------------
def wrap_sync(func: Callable[..., Any], guards: Guards, clock: Optional[Clock],
              fallback: Optional[Callable[..., Any]]) -> Callable[..., Any]:
    """The guarded sync function for ``func`` under ``guards`` (outermost first)."""
    read = clock if clock is not None else monotonic
    n = len(guards)

    def general(t0: float, first: Optional[int], args: Tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        tokens: List[int] = []
        i = enter(guards, t0, tokens, first)
        if i < n:
            return reject(guards[i], t0, fallback, args, kwargs)
        try:
            result = func(*args, **kwargs) if kwargs else func(*args)
        except BaseException as exc:
            finish(guards, tokens, t0, read, exc)
            raise
        finish(guards, tokens, t0, read, None)
        return result

    if n == 1:
        # The one-guard specialisation of the steps above: an admitted call with nothing
        # pending, returning, exits inline; every other path (refused, waiting, pending work,
        # an exception) is the general protocol, handed the kernel's answer.
        g = guards[0]
        k = g._kernel
        k_enter, k_exit = k.enter, k.exit
        # a pure kernel's counter list, bumped inline (a method call would cost more than
        # the rest of the exit); None for a compiled kernel, which counts through bump
        counts = getattr(k, "_counts", None)
        counts = counts if type(counts) is list else None

        def guarded(*args: Any, **kwargs: Any) -> Any:
            t0 = read()
            token = k_enter(t0)
            if token < 0 or k.pending:
                return general(t0, token, args, kwargs)
            try:
                # func(*args) when there are no keywords: `**kwargs` copies even an empty
                # dict, which costs more than the counter below
                result = func(*args, **kwargs) if kwargs else func(*args)
            except BaseException as exc:
                finish(guards, [token], t0, read, exc)
                raise
            try:
                t1 = read()
                k_exit(token, t1, t1 - t0, SUCCESS)
            except BaseException:  # the clock or the kernel refused the exit reading
                release(guards, [token], t0, 0.0, None, IGNORED, t0)
                raise
            if counts is not None:
                counts[0] += 1  # SUCCESS; no Python call in between: no thread switch
            else:
                k.bump(SUCCESS)
            if k.pending:
                g._service()  # the permit is back already; an error here is the call's
            return result
    else:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return general(read(), None, args, kwargs)

    functools.update_wrapper(guarded, func)
    return guarded


async def call_async(guards: Guards, read: Clock, fallback: Optional[Callable[..., Any]],
                     func: Callable[..., Any], args: Tuple[Any, ...], kwargs: dict[str, Any],
                     t0: float, tokens: List[int], first: Optional[int] = None) -> Any:
    """One guarded await of ``func(*args, **kwargs)`` from the entry reading ``t0`` on;
    ``tokens``/``first`` carry what the compiled fast path already entered."""
    i = await enter_async(guards, t0, tokens, first)
    if i < len(guards):
        return await reject_async(guards[i], t0, fallback, args, kwargs)
    try:
        result = await func(*args, **kwargs)
    except BaseException as exc:
        finish(guards, tokens, t0, read, exc)
        raise
    finish(guards, tokens, t0, read, None)
    return result


def wrap_async(func: Callable[..., Any], guards: Guards, clock: Optional[Clock],
               fallback: Optional[Callable[..., Any]]) -> Callable[..., Any]:
    """The guarded coroutine function for ``func`` under ``guards``."""
    read = clock if clock is not None else monotonic

    async def guarded(*args: Any, **kwargs: Any) -> Any:
        return await call_async(guards, read, fallback, func, args, kwargs, read(), [])

    functools.update_wrapper(guarded, func)
    return guarded


# -- with / async with -------------------------------------------------------------------------
# The permits of open blocks, per thread and per task (a ContextVar is both): a guard object
# is shared, so its __exit__ must find *this* block's tokens. A cons list of nodes
# [owner, held, t0, rest, token]: push and the usual in-order pop are O(1). ``token`` is what
# ContextVar.set returned when the node was pushed: resetting it is refused in any other
# context, so a task that inherited its parent's open blocks (a copied context) cannot close
# them and release their permits a second time.
_permits: ContextVar[Optional[List[Any]]] = ContextVar("gameguard_permits", default=None)


def push_permit(owner: Any, held: Any, t0: float) -> None:
    """Record an open block of ``owner`` in this context: ``held`` (its tokens, or what it
    entered) and its entry reading ``t0``."""
    node: List[Any] = [owner, held, t0, _permits.get(), None]
    node[4] = _permits.set(node)


def pop_permit(owner: Any) -> Tuple[Any, float]:
    """Remove ``owner``'s newest open block in this context; return its (held, t0)."""
    top = _permits.get()
    node = top
    while node is not None and node[0] is not owner:  # usually the top: in-order closes
        node = node[3]
    if node is None:
        raise RuntimeError(f"{owner!r}: __exit__ without a matching __enter__")
    try:
        _permits.reset(node[4])  # refused unless this context pushed the node
    except ValueError:
        raise RuntimeError(f"{owner!r}: __exit__ of a block another context opened "
                           f"(a task inherits its parent's blocks; it cannot close "
                           f"them)") from None
    rest = node[3]
    if node is not top:  # closed out of order: the newer nodes above it, rebuilt
        skipped = []
        above: Any = top
        while above is not node:
            skipped.append(above)
            above = above[3]
        for entry in reversed(skipped):
            rest = [entry[0], entry[1], entry[2], rest, entry[4]]
        _permits.set(rest)
    elif node[4].old_value is not rest:  # reset restored what was below it at push time,
        _permits.set(rest)               # which an out-of-order close has since rebuilt
    return node[1], node[2]


def block_enter(owner: Any) -> Any:
    """``owner.__enter__()``: ``owner._guards`` entered, or their rejection raised."""
    guards = owner._guards
    now = clock_of(guards)()
    tokens: List[int] = []
    i = enter(guards, now, tokens)
    if i < len(guards):
        raise guards[i]._rejection(now)
    push_permit(owner, tokens, now)
    return owner


async def block_aenter(owner: Any) -> Any:
    """``owner.__aenter__()``."""
    guards = owner._guards
    now = clock_of(guards)()
    tokens: List[int] = []
    i = await enter_async(guards, now, tokens)
    if i < len(guards):
        raise guards[i]._rejection(now)
    push_permit(owner, tokens, now)
    return owner


def block_exit(owner: Any, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
    """``owner.__exit__(...)``: this block's permits released; never suppresses."""
    tokens, t0 = pop_permit(owner)
    if exc is None and exc_type is not None:  # the common None, None: no call
        exc = exception_of(exc_type, exc)
    finish(owner._guards, tokens, t0, clock_of(owner._guards), exc)
    return False


async def block_aexit(owner: Any, exc_type: Any, exc: Optional[BaseException],
                      tb: Any) -> bool:
    """``owner.__aexit__(...)``."""
    return block_exit(owner, exc_type, exc, tb)


class GuardBase:
    """``with`` / ``async with`` for :class:`~gameguard.guard.Guard` and ``Pipeline``: the
    protocol over ``self._guards`` (the compiled twin's methods are in C)."""

    __slots__ = ()
    __enter__ = block_enter
    __exit__ = block_exit
    __aenter__ = block_aenter
    __aexit__ = block_aexit

