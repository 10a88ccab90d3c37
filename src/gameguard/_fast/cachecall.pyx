# cython: language_level=3
"""The memoised coroutine function's hit path (compiled twin of
``gameguard._pure.cachecall``; see it for the design).

On a hit the call makes the key, looks it up in the table and returns a :class:`Ready`
(from a free list) whose ``am_send`` slot reports the value as PYGEN_RETURN: no coroutine,
no frame, no StopIteration.
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

from gameguard._fast.cachetable import MISS, REFRESH

__all__ = ["AsyncCachedCall", "Ready"]

cdef object MISS_ = MISS
cdef object REFRESH_ = REFRESH


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


cdef class AsyncCachedCall:
    """A memoised coroutine function: a hit returns a :class:`Ready`, a miss or a due
    refresh the coroutine ``slow(key, marker, args, kwargs)``. Keys as ``CachedCall``."""

    cdef readonly object func
    cdef object lookup, absent, keyfunc, make_key, slow, absent_out
    cdef dict __dict__

    def __init__(self, func, table, keyfunc, make_key, slow, absent_out):
        self.func = func
        self.lookup = table.lookup
        self.absent = table.absent
        self.keyfunc = keyfunc
        self.make_key = make_key
        self.slow = slow
        self.absent_out = absent_out

    def __call__(self, *args, **kwargs):
        cdef object key
        if self.keyfunc is not None:
            key = self.keyfunc(*args, **kwargs)
        elif kwargs:
            key = self.make_key(args, kwargs)
        elif len(args) == 1 and (type(args[0]) is str or type(args[0]) is int):
            key = args[0]
        else:
            key = args
        v = self.lookup(key)
        if v is MISS_ or v is REFRESH_:
            return self.slow(key, v, args, kwargs)
        return _ready(self.absent_out if v is self.absent else v)

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self):
        return f"<cached {self.func!r}>"
