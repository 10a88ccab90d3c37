# cython: language_level=3
"""Calls and blocks that reach the rule in force through one swappable reference (compiled
twin of ``gameguard._pure.route``). A call is forwarded through CPython's vectorcall
protocol, the caller's argument vector handed on unchanged: no tuple or dict built, no
Python frame. A block enters the rule's compiled plan itself (call.pyx's block protocol,
the plan recorded with the block's permits): one slot read over the guard used directly."""
import types

from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF

cimport cython

from gameguard._fast.awaitable cimport Ready, ready
from gameguard._fast.call cimport (PyMethodDef, METH_FASTCALL, block_plan, enter_plan,
                                   aenter_plan, push_entry, close_block, install_method)
from gameguard._fast.vector cimport (gg_propagate, vectorcallfunc, PyVectorcall_Call,
                                     vectorcall_raw, enable_vectorcall)

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
        return gg_propagate()
    result = <object>res
    Py_DECREF(result)
    return result


cdef _install_vectorcall():
    cdef Route probe = Route.__new__(Route)
    enable_vectorcall(Route, <char *>&probe.vectorcall - <char *><PyObject *>probe)

_install_vectorcall()


# -- with / async with: the entry in force per resource ---------------------------------------
cdef class Slot:
    """The entry in force for one resource; see the pure twin."""

    cdef object _entry
    # what a block enters, one reference a reload swaps: the entry's compiled Chain, else
    # the entry itself (its own methods; None: pass-through)
    cdef object _plan

    def __init__(self, entry=None):
        self.entry = entry

    @property
    def entry(self):
        return self._entry

    @entry.setter
    def entry(self, entry):
        plan = block_plan(entry)
        old = (self._entry, self._plan)  # freed on return, after both fields are set: no
        self._plan = entry if plan is None else plan  # Python code (a __del__) runs between
        self._entry = entry


cdef class Block:
    """``rules.guard(resource)``; see the pure twin."""

    cdef readonly Slot slot
    cdef readonly object resource
    cdef object _decorate
    cdef Ready _ready   # __aenter__'s finished awaitable of self (made on first use)

    def __init__(self, Slot slot, resource, decorate):
        self.slot = slot
        self.resource = resource
        self._decorate = decorate

    def __call__(self, func):
        return self._decorate(func)

    @cython.binding(False)  # a method descriptor: CPython calls it directly
    def __enter__(self):
        plan = self.slot._plan  # read once: what this block enters and exits
        if enter_plan(plan, self):
            return self
        return _enter_entry(self, plan)

    # __exit__ is _block_exit below, installed as a METH_FASTCALL method (as GuardBase's)

    @cython.binding(False)
    def __aenter__(self):
        plan = self.slot._plan
        if self._ready is None:
            self._ready = ready(self)
        entered = aenter_plan(plan, self, self._ready)
        return _aenter_entry(self, plan) if entered is None else entered

    @cython.binding(False)
    def __aexit__(self, exc_type, exc, tb):
        entry = close_block(self, exc_type, exc)
        if entry is None:
            return _DONE_FALSE
        return _aexit_entry(entry, exc_type, exc, tb)

    def __repr__(self):
        return f"<rules.guard({self.resource!r})>"


cdef object _block_exit(Block self, PyObject **args, Py_ssize_t nargs):
    """``Block.__exit__(exc_type, exc, tb)``: exits what the block entered."""
    if nargs != 3:
        raise TypeError(f"__exit__ takes 3 arguments ({nargs} given)")
    entry = close_block(self, <object>args[0], <object>args[1])
    if entry is None:
        return False
    return bool(entry.__exit__(<object>args[0], <object>args[1], <object>args[2]))


cdef PyMethodDef _BLOCK_EXIT
_BLOCK_EXIT.ml_name = "__exit__"
_BLOCK_EXIT.ml_meth = <void *>_block_exit
_BLOCK_EXIT.ml_flags = METH_FASTCALL
_BLOCK_EXIT.ml_doc = "__exit__(exc_type, exc, tb)\n--\n\nExit what this block entered."
install_method(Block, &_BLOCK_EXIT)

cdef Ready _DONE_FALSE = ready(False)


# An entry without a compiled plan (a guard on the pure twin, another kind of entry): its
# own methods, the block recording it.
cdef object _enter_entry(Block block, entry):
    if entry is not None:
        entry.__enter__()
    try:
        push_entry(block, entry)
    except BaseException as exc:  # no room to record it (MemoryError): give it back
        if entry is not None:
            entry.__exit__(type(exc), exc, exc.__traceback__)
        raise
    return block


async def _aenter_entry(Block block, entry):
    if entry is not None:
        await entry.__aenter__()
    try:
        push_entry(block, entry)
    except BaseException as exc:
        if entry is not None:
            await entry.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    return block


async def _aexit_entry(entry, exc_type, exc, tb):
    return bool(await entry.__aexit__(exc_type, exc, tb))
