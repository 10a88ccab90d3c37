# cython: language_level=3
"""A call forwarded through one swappable reference (compiled twin of
``gameguard._pure.route``): CPython's vectorcall protocol, the caller's argument vector
handed on unchanged, no tuple or dict built, no Python frame."""
import types

from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF

cdef extern from *:
    """
    static CYTHON_INLINE PyObject *gg_route_propagate(void) { return NULL; }
    """
    object gg_route_propagate()

cdef extern from "Python.h":
    ctypedef PyObject *(*vectorcallfunc)(PyObject *, PyObject **, size_t, PyObject *)
    unsigned long Py_TPFLAGS_HAVE_VECTORCALL
    object PyVectorcall_Call(object callable, object args, object kwargs)
    ctypedef struct TypeSlots "PyTypeObject":
        Py_ssize_t tp_vectorcall_offset
        unsigned long tp_flags
    PyObject *vectorcall_raw "PyObject_Vectorcall" (PyObject *, PyObject **, size_t, PyObject *)

__all__ = ["Route"]


cdef class Route:
    """Calls ``self.target(*args, **kwargs)``; see the pure twin."""

    cdef public object target
    cdef readonly object func
    cdef vectorcallfunc vectorcall   # found by CPython through tp_vectorcall_offset
    cdef dict __dict__
    cdef object __weakref__

    def __cinit__(self):
        self.vectorcall = <vectorcallfunc>_route_vectorcall

    def __init__(self, func, target):
        self.func = func
        self.target = target

    def __call__(self, *args, **kwargs):  # the tuple-calling path (PyObject_Call)
        return PyVectorcall_Call(self, args, kwargs)

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self):
        return f"<route {self.func!r}>"


cdef object _route_vectorcall(Route self, PyObject **args, size_t nargsf, PyObject *kwnames):
    # a local reference: a reload that swaps self.target meanwhile cannot free this one
    cdef object target = self.target
    cdef PyObject *res = vectorcall_raw(<PyObject *>target, args, nargsf, kwnames)
    if res == NULL:  # the target's exception stays set, object and traceback
        return gg_route_propagate()
    result = <object>res
    Py_DECREF(result)
    return result


cdef _install_slots():
    cdef Route probe = Route.__new__(Route)
    cdef Py_ssize_t offset = <char *>&probe.vectorcall - <char *><PyObject *>probe
    cdef TypeSlots *ts = <TypeSlots *><PyObject *>Route
    ts.tp_vectorcall_offset = offset
    ts.tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL

_install_slots()
