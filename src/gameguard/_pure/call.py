"""The decorated-call wrapper for sync functions (pure twin of ``_fast/call.pyx``).

``wrap_sync`` builds, at decoration time, the function that runs one guarded call:
read the clock, ``enter`` every kernel (outermost first), call the user's function, then
``exit`` every kernel (innermost first) with the outcome and duration. A rejected call
never runs the function; every admitted permit is given back exactly once.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

from ..clock import monotonic
from .kernel import SUCCESS

__all__ = ["wrap_sync", "wrap_async", "reject", "new_rejection"]


def new_rejection(cls: type, message: str, retry_after: Optional[float],
                  name: Optional[str]) -> Any:
    """``cls(message, retry_after=..., name=...)``; the compiled twin skips ``__init__``."""
    return cls(message, retry_after=retry_after, name=name)


def reject(guard: Any, now: float, fallback: Optional[Callable[..., Any]],
           args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A refused call: the guard's own fallback, else the wrapper's, else raise."""
    fb = guard._fallback if guard._fallback is not None else fallback
    if fb is not None:
        return fb(*args, **kwargs)
    raise guard._rejection(now)


def _release(guards: Sequence[Any], kernels: Sequence[Any], tokens: list[Any], now: float,
             duration: float, exc: Optional[BaseException]) -> None:
    for i in range(len(tokens) - 1, -1, -1):
        outcome = SUCCESS if exc is None else guards[i]._classify(exc)
        kernels[i].exit(tokens[i], now, duration, outcome)
        if kernels[i].pending:
            guards[i]._service()


def wrap_sync(func: Callable[..., Any], guards: Sequence[Any],
              clock: Optional[Callable[[], float]],
              fallback: Optional[Callable[..., Any]]) -> Callable[..., Any]:
    clock = clock if clock is not None else monotonic
    kernels = tuple(g._kernel for g in guards)

    if len(guards) == 1:
        guard, kernel = guards[0], kernels[0]
        enter, exit_ = kernel.enter, kernel.exit
        classify, service = guard._classify, guard._service

        def guarded(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            token = enter(t0)
            if token < 0:
                token = guard._admit_slow(t0)
                if token < 0:
                    if kernel.pending:
                        service()
                    return reject(guard, t0, fallback, args, kwargs)
            if kernel.pending:
                service()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                t1 = clock()
                exit_(token, t1, t1 - t0, classify(exc))
                if kernel.pending:
                    service()
                raise
            t1 = clock()
            exit_(token, t1, t1 - t0, SUCCESS)
            if kernel.pending:
                service()
            return result
    else:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            tokens: list[Any] = []
            rejected_by = -1
            try:
                for i, kernel in enumerate(kernels):
                    token = kernel.enter(t0)
                    if token < 0:
                        token = guards[i]._admit_slow(t0)
                    if kernel.pending:
                        guards[i]._service()
                    if token < 0:
                        rejected_by = i
                        break
                    tokens.append(token)
            except BaseException:  # a wait interrupted: give back what was taken
                _release(guards, kernels, tokens, t0, 0.0, _REJECTED_INSIDE)
                raise
            if rejected_by >= 0:  # the ones entered count it as nothing, released once
                _release(guards, kernels, tokens, t0, 0.0, _REJECTED_INSIDE)
                return reject(guards[rejected_by], t0, fallback, args, kwargs)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                t1 = clock()
                _release(guards, kernels, tokens, t1, t1 - t0, exc)
                raise
            t1 = clock()
            _release(guards, kernels, tokens, t1, t1 - t0, None)
            return result

    functools.update_wrapper(guarded, func)
    return guarded


class _RejectedInside(BaseException):
    """Stands for 'released without an outcome': every guard classifies it as IGNORED."""


_REJECTED_INSIDE = _RejectedInside()


def wrap_async(func: Callable[..., Any], guard: Any, clock: Optional[Callable[[], float]],
               slow: Callable[..., Any]) -> Callable[..., Any]:
    """The guarded coroutine function for ``func`` under one ``guard``: the kernel call on
    each side of the ``await``; refused (or waiting) calls go to ``slow(t0, args, kwargs)``."""
    read = clock if clock is not None else monotonic
    kernel = guard._kernel
    enter, exit_ = kernel.enter, kernel.exit
    classify, service = guard._classify, guard._service

    async def guarded(*args: Any, **kwargs: Any) -> Any:
        t0 = read()
        token = enter(t0)
        if token < 0:
            if kernel.pending:
                service()
            return await slow(t0, args, kwargs)
        if kernel.pending:
            service()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            t1 = read()
            exit_(token, t1, t1 - t0, classify(exc))
            if kernel.pending:
                service()
            raise
        t1 = read()
        exit_(token, t1, t1 - t0, SUCCESS)
        if kernel.pending:
            service()
        return result

    functools.update_wrapper(guarded, func)
    return guarded
