# What call.pyx gives route.pyx: ``rules.guard(resource)`` blocks enter the rule's compiled
# plan through the guard protocol's own block functions, the plan recorded with the block's
# permits, so a rules block costs one slot read over the guard used directly.
from cpython.object cimport PyObject

cdef extern from "Python.h":
    ctypedef struct PyMethodDef:
        const char *ml_name
        void *ml_meth
        int ml_flags
        const char *ml_doc
    int METH_FASTCALL

cdef object block_plan(entry)
cdef bint enter_plan(plan, owner) except -1
cdef object aenter_plan(plan, owner, done)
cdef int push_entry(owner, entry) except -1
cdef object close_block(owner, exc_type, exc)
cdef int install_method(type cls, PyMethodDef *method) except -1
