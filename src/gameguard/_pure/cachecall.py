"""The memoised coroutine function's hit path (pure twin of ``_fast/cachecall.pyx``).

A call of a ``cached`` coroutine function makes its key and looks it up at once. A hit
returns :class:`Ready`, an awaitable already holding the value: no coroutine is created and
awaiting it never suspends. A miss or a due refresh returns the public layer's coroutine
``slow(key, marker, args, kwargs)`` (singleflight, refresh in the background).
"""
from __future__ import annotations

from typing import Any, Callable, NoReturn, Optional

from .cachetable import CacheTable, CachedCall

__all__ = ["AsyncCachedCall", "Ready"]


class Ready:
    """A finished awaitable: ``await`` gives ``value`` at once (again on every await, like
    a done Future). It has ``send``/``throw``/``close``, so ``asyncio.create_task`` and
    ``asyncio.iscoroutine`` take it as a coroutine."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Ready:
        return self

    def __iter__(self) -> Ready:
        return self

    def __next__(self) -> NoReturn:
        raise StopIteration(self.value)

    def send(self, value: Any) -> NoReturn:
        raise StopIteration(self.value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> NoReturn:
        """Never suspended, so nothing can catch it: the exception comes straight back."""
        exc = typ if val is None else val
        if isinstance(exc, type):
            exc = exc()
        if tb is not None:
            exc = exc.with_traceback(tb)
        raise exc

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<ready {self.value!r}>"


class _Pending:
    """What the inner :class:`CachedCall` returns on a miss: the slow path's coroutine."""

    __slots__ = ("coro",)

    def __init__(self, coro: Any) -> None:
        self.coro = coro


class AsyncCachedCall(CachedCall):
    """A memoised coroutine function: ``CachedCall``'s keying and lookup, with a hit
    answered by :class:`Ready` and a miss by the coroutine ``slow`` returns."""

    def __init__(self, func: Callable[..., Any], table: CacheTable,
                 keyfunc: Optional[Callable[..., Any]],
                 make_key: Callable[[tuple[Any, ...], dict[str, Any]], Any],
                 slow: Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any],
                 absent_out: Any) -> None:
        super().__init__(func, table, keyfunc, make_key,
                         lambda *a: _Pending(slow(*a)), absent_out)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        r = CachedCall.__call__(self, *args, **kwargs)
        return r.coro if type(r) is _Pending else Ready(r)
