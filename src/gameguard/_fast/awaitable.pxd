# The awaitable slots of the C API and the one finished awaitable the compiled twins share
# (the guard wrappers' ``async with`` and the cache's async hit path).
from cpython.object cimport PyObject

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
    PySendResult PyIter_Send(PyObject *, PyObject *, PyObject **)

cimport cython

@cython.final
cdef class Ready:
    cdef readonly object value


cdef inline Ready ready(object value):
    """A finished awaitable of ``value`` (from the type's free list)."""
    cdef Ready r = Ready.__new__(Ready)
    r.value = value
    return r
