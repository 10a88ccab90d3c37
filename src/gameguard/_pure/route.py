"""Calls and blocks that reach the rule in force through one swappable reference (pure
twin of ``_fast/route.pyx``).

``rules.guard(resource)`` decorates a function with a :class:`Route`: each call goes to
``route.target`` (the function wrapped by the rule in force, or the bare function), read
once per call, so a reload that swaps ``target`` is atomic for every call: a call runs
entirely under the old target or entirely under the new one.
"""
from __future__ import annotations

import types
from typing import Any, Callable, Optional, TypeVar

from .call import _permits, pop_permit

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

    __slots__ = ("entry",)

    def __init__(self, entry: Any = None) -> None:
        self.entry = entry


class Block:
    """``rules.guard(resource)``: a decorator (``decorate(func)``) and a ``with`` / ``async
    with`` block over ``slot.entry``. A block keeps the entry it entered (on the per-thread,
    per-task stack of open blocks the pure protocol keeps), so a reload while it runs
    changes nothing for it."""

    __slots__ = ("slot", "resource", "_decorate")

    def __init__(self, slot: Slot, resource: str, decorate: Callable[[Any], Any]) -> None:
        self.slot = slot
        self.resource = resource
        self._decorate = decorate

    def __call__(self, func: F) -> F:
        return self._decorate(func)  # type: ignore[no-any-return]

    def __enter__(self) -> "Block":
        entry = self.slot.entry
        if entry is not None:
            entry.__enter__()
        _permits.set((self, entry, 0.0, _permits.get()))
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        entry: Any = pop_permit(self)[0]
        return False if entry is None else bool(entry.__exit__(exc_type, exc, tb))

    async def __aenter__(self) -> "Block":
        entry = self.slot.entry
        if entry is not None:
            await entry.__aenter__()
        _permits.set((self, entry, 0.0, _permits.get()))
        return self

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        entry: Any = pop_permit(self)[0]
        return False if entry is None else bool(await entry.__aexit__(exc_type, exc, tb))

    def __repr__(self) -> str:
        return f"<rules.guard({self.resource!r})>"
