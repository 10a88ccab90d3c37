# The vectorcall protocol for compiled wrappers (GuardedCall, RetryCall), header-only: one
# copy of the declarations and the argument packing, cimported by call.pyx and retry.pyx.
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM

cdef extern from *:
    """
    /* Returning NULL with the caller's exception still set: Cython's error path then
       re-raises that very exception object, traceback kept. */
    static CYTHON_INLINE PyObject *gg_propagate(void) { return NULL; }
    """
    object gg_propagate()

cdef extern from "Python.h":
    ctypedef PyObject *(*vectorcallfunc)(PyObject *, PyObject **, size_t, PyObject *)
    unsigned long Py_TPFLAGS_HAVE_VECTORCALL
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)
    object PyVectorcall_Call(object callable, object args, object kwargs)
    ctypedef struct TypeSlots "PyTypeObject":
        Py_ssize_t tp_vectorcall_offset
        unsigned long tp_flags
    PyObject *vectorcall_raw "PyObject_Vectorcall" (PyObject *, PyObject **, size_t, PyObject *)
    Py_ssize_t PyTuple_GET_SIZE(PyObject *)
    PyObject *PyTuple_GET_ITEM(PyObject *, Py_ssize_t)


cdef inline tuple pack_args(PyObject **args, size_t nargsf, PyObject *kwnames):
    """(args tuple, kwargs dict) from a vectorcall argument vector (slow paths only)."""
    cdef Py_ssize_t nargs = PyVectorcall_NARGS(nargsf)
    cdef Py_ssize_t nkw = 0 if kwnames == NULL else PyTuple_GET_SIZE(kwnames)
    cdef Py_ssize_t i
    cdef tuple positional = PyTuple_New(nargs)
    cdef dict kwargs = {}
    cdef object item
    for i in range(nargs):
        item = <object>args[i]
        Py_INCREF(item)
        PyTuple_SET_ITEM(positional, i, item)
    for i in range(nkw):
        kwargs[<object>PyTuple_GET_ITEM(kwnames, i)] = <object>args[nargs + i]
    return (positional, kwargs)


cdef inline void enable_vectorcall(type cls, Py_ssize_t offset) noexcept:
    """Make CPython call instances of ``cls`` through the ``vectorcallfunc`` field at
    ``offset`` bytes into the object."""
    cdef TypeSlots *ts = <TypeSlots *><PyObject *>cls
    ts.tp_vectorcall_offset = offset
    ts.tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL
