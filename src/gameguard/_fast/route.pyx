# cython: language_level=3
"""Calls and blocks that reach the rule in force through one swappable reference (compiled
twin of ``gameguard._pure.route``). A call is forwarded through CPython's vectorcall
protocol, the caller's argument vector handed on unchanged: no tuple or dict built, no
Python frame; ``with`` enters the slot's entry from C."""
import types

from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from cpython.contextvars cimport PyContextVar_Get, PyContextVar_Set

from gameguard._pure.call import _permits, pop_permit as _py_pop

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

__all__ = ["Route", "Slot", "Block"]


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


# -- with / async with: the entry in force per resource ---------------------------------------
cdef class Slot:
    """The entry in force for one resource; see the pure twin."""

    cdef public object entry

    def __init__(self, entry=None):
        self.entry = entry


cdef inline int _push(owner, entry) except -1:
    """On the per-thread, per-task stack of open blocks the pure protocol keeps (the same
    nodes: ``(owner, entry, 0.0, rest)``)."""
    cdef PyObject *top = NULL
    PyContextVar_Get(_permits, NULL, &top)  # a new reference
    rest = <object>top
    Py_DECREF(rest)
    PyContextVar_Set(_permits, (owner, entry, 0.0, rest))
    return 0


cdef inline object _pop(owner):
    """``owner``'s newest block's entry: the top node inline, anything else (blocks
    closed out of order, a missing enter) by the pure protocol."""
    cdef PyObject *top = NULL
    PyContextVar_Get(_permits, NULL, &top)
    node = <object>top
    Py_DECREF(node)
    if type(node) is tuple and (<tuple>node)[0] is owner:
        PyContextVar_Set(_permits, (<tuple>node)[3])
        return (<tuple>node)[1]
    return _py_pop(owner)[0]


cdef class Block:
    """``rules.guard(resource)``; see the pure twin."""

    cdef readonly Slot slot
    cdef readonly object resource
    cdef object _decorate

    def __init__(self, Slot slot, resource, decorate):
        self.slot = slot
        self.resource = resource
        self._decorate = decorate

    def __call__(self, func):
        return self._decorate(func)

    def __enter__(self):
        entry = self.slot.entry
        if entry is not None:
            entry.__enter__()
        _push(self, entry)
        return self

    def __exit__(self, exc_type, exc, tb):
        entry = _pop(self)
        return False if entry is None else bool(entry.__exit__(exc_type, exc, tb))

    async def __aenter__(self):
        entry = self.slot.entry
        if entry is not None:
            await entry.__aenter__()
        _push(self, entry)
        return self

    async def __aexit__(self, exc_type, exc, tb):
        entry = _pop(self)
        return False if entry is None else bool(await entry.__aexit__(exc_type, exc, tb))

    def __repr__(self):
        return f"<rules.guard({self.resource!r})>"
