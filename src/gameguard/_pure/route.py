"""A call forwarded through one swappable reference (pure twin of ``_fast/route.pyx``).

``rules.guard(resource)`` decorates a function with a :class:`Route`: each call goes to
``route.target`` (the function wrapped by the rule in force, or the bare function), read
once per call, so a reload that swaps ``target`` is atomic for every call: a call runs
entirely under the old target or entirely under the new one.
"""
from __future__ import annotations

import types
from typing import Any, Callable

__all__ = ["Route"]


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
