"""Calls and blocks that reach the rule in force through one swappable reference (pure
twin of ``_fast/route.pyx``).

``rules.guard(resource)`` decorates a function with a :class:`Route`: each call goes to
``route.target`` (the function wrapped by the rule in force, or the bare function), read
once per call, so a reload that swaps ``target`` is atomic for every call: a call runs
entirely under the old target or entirely under the new one.
"""
from __future__ import annotations

import types
from typing import Any, Callable, List, Optional, Tuple, TypeVar

from .call import clock_of, enter, enter_async, exception_of, finish, pop_permit, push_permit

__all__ = ["Route", "Slot", "Block"]

F = TypeVar("F", bound=Callable[..., Any])


class Route:
    """Calls ``self.target(*args, **kwargs)``; keeps ``func`` (the undecorated function)
    and binds like a function when used as a method."""

    def __init__(self, func: Callable[..., Any], target: Callable[..., Any]) -> None:
        self.func = func
        self.target = target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.target(*args, **kwargs)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self) -> str:
        return f"<route {self.func!r}>"


class Slot:
    """The entry in force for one resource (a guard, a pipeline, or ``None``: pass-through),
    replaced by a reload: what ``with rules.guard(resource):`` blocks enter."""

    __slots__ = ("_entry", "_plan")

    def __init__(self, entry: Any = None) -> None:
        self.entry = entry

    @property
    def entry(self) -> Any:
        return self._entry

    @entry.setter
    def entry(self, entry: Any) -> None:
        # what a block enters, one reference a reload swaps: the entry's guards (a tuple)
        # when its blocks are the stock protocol, else the entry itself (None: pass-through)
        self._plan = _guards_of(entry) or entry
        self._entry = entry


def _guards_of(entry: Any) -> Optional[Tuple[Any, ...]]:
    """``entry``'s guards when its blocks are the stock protocol over them (a ``Guard`` or
    ``Pipeline`` that does not override them), for a block to enter in its place."""
    from ..guard import Guard

    cls = type(entry)
    if entry is None or any(getattr(cls, name, None) is not getattr(Guard, name)
                            for name in ("__enter__", "__exit__", "__aenter__", "__aexit__")):
        return None
    return tuple(entry._guards)


class Block:
    """``rules.guard(resource)``: a decorator (``decorate(func)``) and a ``with`` / ``async
    with`` block over ``slot._plan``. A block enters the rule's guards itself, on the
    per-thread, per-task stack of open blocks the protocol keeps, recording the guards it
    entered with their permits: a reload while it runs changes nothing for it, and it costs
    one slot read over the guard used directly. Another kind of entry is entered through
    its own methods, the block recording it."""

    __slots__ = ("slot", "resource", "_decorate")

    def __init__(self, slot: Slot, resource: str, decorate: Callable[[Any], Any]) -> None:
        self.slot = slot
        self.resource = resource
        self._decorate = decorate

    def __call__(self, func: F) -> F:
        return self._decorate(func)  # type: ignore[no-any-return]

    def __enter__(self) -> "Block":
        plan: Any = self.slot._plan  # read once: what this block enters and exits
        if type(plan) is not tuple:
            if plan is not None:
                plan.__enter__()
            push_permit(self, plan, 0.0)
            return self
        now = clock_of(plan)()
        tokens: List[int] = []
        return self._admitted(plan, now, tokens, enter(plan, now, tokens))

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        entered: Any
        entered, t0 = pop_permit(self)  # the tokens slot holds what the block entered
        if type(entered) is tuple or entered is None:
            return _release(entered, t0, exc_type, exc)
        return bool(entered.__exit__(exc_type, exc, tb))

    async def __aenter__(self) -> "Block":
        plan: Any = self.slot._plan
        if type(plan) is not tuple:
            if plan is not None:
                await plan.__aenter__()
            push_permit(self, plan, 0.0)
            return self
        now = clock_of(plan)()
        tokens: List[int] = []
        return self._admitted(plan, now, tokens, await enter_async(plan, now, tokens))

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        entered: Any
        entered, t0 = pop_permit(self)
        if type(entered) is tuple or entered is None:
            return _release(entered, t0, exc_type, exc)
        return bool(await entered.__aexit__(exc_type, exc, tb))

    def _admitted(self, guards: Tuple[Any, ...], now: float, tokens: List[int],
                  i: int) -> "Block":
        """After entering ``guards``: refused (every permit given back), or opened."""
        if i < len(guards):
            raise guards[i]._rejection(now)
        push_permit(self, (guards, tokens), now)
        return self

    def __repr__(self) -> str:
        return f"<rules.guard({self.resource!r})>"


def _release(entered: Optional[Tuple[Tuple[Any, ...], List[int]]], t0: float, exc_type: Any,
             exc: Optional[BaseException]) -> bool:
    """Close a block that entered guards itself (``(guards, tokens)``; None: nothing):
    every permit released with the block's outcome; never suppresses."""
    if entered is not None:
        guards, tokens = entered
        finish(guards, tokens, t0, clock_of(guards), exception_of(exc_type, exc))
    return False
