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
from cpython.ref cimport Py_INCREF

cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    ctypedef PySendResult (*sendfunc)(PyObject *, PyObject *, PyObject **)
    ctypedef struct AsyncSlots "PyAsyncMethods":
        sendfunc am_send
    ctypedef struct AwaitTypeSlots "PyTypeObject":
        AsyncSlots *tp_as_async

from gameguard._fast.cachetable import CachedCall

__all__ = ["AsyncCachedCall", "Ready"]



@cython.freelist(16)
@cython.final
cdef class Ready:
    """A finished awaitable: ``await`` gives ``value`` at once (again on every await)."""

    cdef readonly object value

    def __init__(self, value):
        self.value = value

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        raise StopIteration(self.value)

    def send(self, value):
        raise StopIteration(self.value)

    def throw(self, typ, val=None, tb=None):
        """Never suspended, so nothing can catch it: the exception comes straight back."""
        exc = typ if val is None else val
        if isinstance(exc, type):
            exc = exc()
        if tb is not None:
            exc = exc.with_traceback(tb)
        raise exc

    def close(self):
        pass

    def __repr__(self):
        return f"<ready {self.value!r}>"


cdef PySendResult _ready_am_send(PyObject *obj, PyObject *value, PyObject **result) noexcept:
    cdef object v = (<Ready>obj).value
    Py_INCREF(v)
    result[0] = <PyObject *>v
    return PYGEN_RETURN


cdef _install_am_send():
    cdef AwaitTypeSlots *tp = <AwaitTypeSlots *>Ready
    tp.tp_as_async.am_send = <sendfunc>_ready_am_send

_install_am_send()


cdef inline Ready _ready(object value):
    cdef Ready r = Ready.__new__(Ready)
    r.value = value
    return r


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
        return _ready(r)

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self):
        return f"<cached {self.func!r}>"
