# cython: language_level=3
"""Calls and blocks that reach the rule in force through one swappable reference (compiled
twin of ``gameguard._pure.route``). A call is forwarded through CPython's vectorcall
protocol, the caller's argument vector handed on unchanged: no tuple or dict built, no
Python frame; ``with`` enters the slot's entry from C."""
import types

from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from cpython.contextvars cimport PyContextVar_Get, PyContextVar_Set
from contextvars import ContextVar

cimport cython

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

    # (entry, its bound __enter__, its bound __exit__) or None, swapped as one reference:
    # a block reads it once, so it never enters one entry and exits another
    cdef tuple parts

    def __init__(self, entry=None):
        self.entry = entry

    @property
    def entry(self):
        return None if self.parts is None else self.parts[0]

    @entry.setter
    def entry(self, entry):
        self.parts = None if entry is None else (entry, entry.__enter__, entry.__exit__)


cdef extern from "Python.h":
    ctypedef struct ThreadState "PyThreadState":
        PyObject *context   # the current contextvars.Context
    ThreadState *PyThreadState_Get()


cdef object _blocks = ContextVar("gameguard_rule_blocks")


@cython.final
cdef class _Stack:
    """The open blocks of one context (thread or task): owner, entry, owner, entry...,
    newest last. A ContextVar holds it; a copied context (a new task) shares the object,
    so it records the context it belongs to and another context makes its own."""

    cdef list items
    cdef object context  # held: no other context can have its address meanwhile


# The stack used last, held strongly: comparing its context with the thread's current one
# skips the ContextVar lookup on the common path (consistent under the GIL: no Python call
# between the comparison and the use).
cdef _Stack _last = None


cdef inline _Stack _stack():
    if _last is not None and <PyObject *>_last.context == PyThreadState_Get().context:
        return _last
    return _find_stack()


cdef _Stack _find_stack():
    global _last
    cdef PyObject *value = NULL
    cdef _Stack s
    PyContextVar_Get(_blocks, NULL, &value)  # a new reference, or NULL
    if value != NULL:
        s = <_Stack>value
        Py_DECREF(s)  # the ContextVar still holds it
        if <PyObject *>s.context == PyThreadState_Get().context:
            _last = s
            return s
    s = _Stack.__new__(_Stack)
    s.items = []
    PyContextVar_Set(_blocks, s)
    s.context = <object>PyThreadState_Get().context
    _last = s
    return s


cdef inline int _push(owner, entry) except -1:
    cdef list items = _stack().items
    items.append(owner)
    items.append(entry)
    return 0


cdef object _pop(owner):
    """``owner``'s newest block's entry (blocks usually close in order: the top one)."""
    cdef list items = _stack().items
    cdef Py_ssize_t i = len(items) - 2
    while i >= 0 and items[i] is not owner:
        i -= 2
    if i < 0:
        raise RuntimeError(f"{owner!r}: __exit__ without a matching __enter__")
    entry = items[i + 1]
    del items[i:i + 2]
    return entry


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

    @cython.binding(False)  # a method descriptor: CPython calls it directly
    def __enter__(self):
        parts = self.slot.parts
        if parts is None:
            _push(self, None)
        else:
            (<tuple>parts)[1]()
            _push(self, (<tuple>parts)[2])  # what this block exits, whatever reloads meanwhile
        return self

    @cython.binding(False)
    def __exit__(self, exc_type, exc, tb):
        exit_ = _pop(self)
        return False if exit_ is None else bool(exit_(exc_type, exc, tb))

    async def __aenter__(self):
        entry = self.slot.entry
        if entry is not None:
            await entry.__aenter__()
        _push(self, None if entry is None else entry.__aexit__)
        return self

    async def __aexit__(self, exc_type, exc, tb):
        aexit = _pop(self)
        return False if aexit is None else bool(await aexit(exc_type, exc, tb))

    def __repr__(self):
        return f"<rules.guard({self.resource!r})>"
