# cython: language_level=3
"""The memoised coroutine function's hit path (compiled twin of
``gameguard._pure.cachecall``; see it for the design).

On a hit the kernel's ``CachedCall`` makes the key and looks it up, and a :class:`Ready`
(from a free list) is returned whose ``am_send`` slot reports the value as PYGEN_RETURN:
no coroutine, no frame, no StopIteration.
"""
import types

cimport cython
from cpython.object cimport PyObject

from gameguard._fast.awaitable cimport Ready, ready
from gameguard._fast import awaitable as _awaitable
from gameguard._fast.cachetable import CachedCall

__all__ = ["AsyncCachedCall", "Ready"]

globals()["Ready"] = _awaitable.Ready  # the shared type, under its twin API name



@cython.final
cdef class _Pending:
    """What the inner ``CachedCall`` returns on a miss: the slow path's coroutine."""
    cdef object coro


@cython.final
cdef class _MarkSlow:
    """The inner ``CachedCall``'s ``slow``: the public layer's, its coroutine marked."""
    cdef object slow

    def __call__(self, key, marker, args, kwargs):
        cdef _Pending p = _Pending.__new__(_Pending)
        p.coro = self.slow(key, marker, args, kwargs)
        return p


cdef class AsyncCachedCall:
    """A memoised coroutine function: ``CachedCall``'s keying and lookup, with a hit
    answered by :class:`Ready` and a miss by the coroutine ``slow`` returns."""

    cdef readonly object func
    cdef object inner
    cdef dict __dict__

    def __init__(self, func, table, keyfunc, make_key, slow, absent_out):
        cdef _MarkSlow mark = _MarkSlow.__new__(_MarkSlow)
        mark.slow = slow
        self.func = func
        self.inner = CachedCall(func, table, keyfunc, make_key, mark, absent_out)

    def __call__(self, *args, **kwargs):
        r = self.inner(*args, **kwargs)
        if type(r) is _Pending:
            return (<_Pending>r).coro
        return ready(r)

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self):
        return f"<cached {self.func!r}>"
