# cython: language_level=3
"""Retry bookkeeping (compiled twin of ``gameguard._pure.retry``): the retry budget and the
sync retrying call, whose first attempt costs one vectorcall and a NULL check."""
import functools
import types

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF

from gameguard._fast.kernel cimport monotonic_coarse
from gameguard._fast.vector cimport (vectorcallfunc, PyVectorcall_Call, pack_args,
                                     enable_vectorcall)
from gameguard._fast.window cimport RollingWindow
from gameguard._pure.window import clock_error

cdef extern from "Python.h":
    PyObject *PyExc_Exception
    int PyErr_ExceptionMatches(PyObject *)
    void PyErr_Fetch(PyObject **, PyObject **, PyObject **)
    void PyErr_NormalizeException(PyObject **, PyObject **, PyObject **)
    int PyException_SetTraceback(PyObject *, PyObject *)
    void Py_XDECREF(PyObject *)

__all__ = ["Budget", "wrap_sync"]


cdef class Budget:
    """Calls and retries over ``window`` seconds (``buckets`` buckets); ``withdraw`` allows a
    retry while it keeps ``retries <= reserve + ratio * calls``. See the pure twin."""

    cdef readonly double ratio, reserve
    cdef RollingWindow _window

    def __init__(self, double ratio, double reserve, double window, int buckets):
        self.ratio = ratio
        self.reserve = reserve
        self._window = RollingWindow(window, buckets)

    cdef inline int deposit_c(self, double now) except -1:
        if not self._window.usable(now):
            raise clock_error(now, self._window.limit)
        self._window.record_c(now, False, False, 0.0)
        return 0

    def deposit(self, double now):
        """Count one call (a first attempt)."""
        self.deposit_c(now)

    def withdraw(self, double now):
        """Take one retry if the budget allows it at ``now``."""
        cdef RollingWindow w = self._window
        if not w.usable(now):
            raise clock_error(now, w.limit)
        w.advance_c(now)
        cdef long long retries = w.failures
        if retries + 1 > self.reserve + self.ratio * (w.calls - retries):
            return False
        w.record_c(now, True, False, 0.0)
        return True

    def balance(self, double now):
        """Retries the budget allows at ``now`` (may be fractional; below 1: none)."""
        calls, retries, _, _ = self._window.totals(now)
        return self.reserve + self.ratio * (calls - retries) - retries

    def counts(self, double now):
        """``(calls, retries)`` over the window at ``now``."""
        calls, retries, _, _ = self._window.totals(now)
        return calls - retries, retries


cdef class RetryCall:
    """A retried sync function: keeps ``__wrapped__``, ``__name__``, ``__doc__``, binds
    like a function as a method, and is called through vectorcall."""

    cdef readonly object func
    cdef object again            # again(args, kwargs, exc): the retries, in Python
    cdef Budget budget           # None: no budget
    cdef object clock            # the budget's clock (None: CLOCK_MONOTONIC, read in C)
    cdef vectorcallfunc vectorcall
    cdef dict __dict__

    cdef PyObject *failed(self, PyObject **args, size_t nargsf,
                          PyObject *kwnames) except NULL:
        """The first attempt raised (the exception is set): the retries, if any."""
        if not PyErr_ExceptionMatches(PyExc_Exception):
            return NULL  # KeyboardInterrupt, SystemExit...: never retried, passed on as is
        result = _retry(self, args, nargsf, kwnames)
        Py_INCREF(result)  # the reference we return; `result`'s own goes when we leave
        return <PyObject *>result

    def __call__(self, *args, **kwargs):  # the tuple-calling path (PyObject_Call)
        return PyVectorcall_Call(self, args, kwargs)

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self):
        return f"<retried {self.func!r}>"


cdef extern from *:
    """
    /* The callee through its own vectorcall slot when it has one (a Python function, a
       bound method, a compiled guard): what PyObject_Vectorcall does, without its
       thread-state fetch and result check (our own caller checks our result). */
    static CYTHON_INLINE PyObject *gg_call(PyObject *f, PyObject *const *args, size_t nargsf,
                                           PyObject *kwnames) {
        PyTypeObject *tp = Py_TYPE(f);
        if (PyType_HasFeature(tp, Py_TPFLAGS_HAVE_VECTORCALL)) {
            vectorcallfunc vc = *(vectorcallfunc *)((char *)f + tp->tp_vectorcall_offset);
            if (vc != NULL)
                return vc(f, args, nargsf, kwnames);
        }
        return PyObject_Vectorcall(f, args, nargsf, kwnames);
    }
    """
    PyObject *gg_call(PyObject *f, PyObject **args, size_t nargsf, PyObject *kwnames)


# Two entry points, chosen once by wrap_sync: without a budget the first attempt is the
# callee's vectorcall and a NULL check, no test of ours on the way.
cdef PyObject *_retry_vectorcall(RetryCall self, PyObject **args, size_t nargsf,
                                 PyObject *kwnames) except NULL:
    """The first attempt: the callee's result handed back as it came (a new reference, no
    Python object of ours made); only a NULL (it raised) goes on to the retries."""
    cdef PyObject *res = gg_call(<PyObject *>self.func, args, nargsf, kwnames)
    if res != NULL:
        return res
    return self.failed(args, nargsf, kwnames)  # out of line: through the vtable


cdef PyObject *_budget_vectorcall(RetryCall self, PyObject **args, size_t nargsf,
                                  PyObject *kwnames) except NULL:
    """With a budget: the call deposits first."""
    # the coarse view (one tick, 1-4 ms, behind) will do: budget buckets are window/buckets
    # seconds wide (a second by default)
    self.budget.deposit_c(monotonic_coarse() if self.clock is None else self.clock())
    cdef PyObject *res = gg_call(<PyObject *>self.func, args, nargsf, kwnames)
    if res != NULL:
        return res
    return self.failed(args, nargsf, kwnames)


cdef object _retry(RetryCall self, PyObject **args, size_t nargsf, PyObject *kwnames):
    """The first attempt raised (the exception is set): attempts 2.. through ``again``."""
    cdef PyObject *etype
    cdef PyObject *evalue
    cdef PyObject *etb
    PyErr_Fetch(&etype, &evalue, &etb)
    PyErr_NormalizeException(&etype, &evalue, &etb)
    if etb != NULL:
        PyException_SetTraceback(evalue, etb)
    exc = <object>evalue
    Py_XDECREF(etype)
    Py_XDECREF(evalue)
    Py_XDECREF(etb)
    positional, kwargs = pack_args(args, nargsf, kwnames)
    return self.again(positional, kwargs, exc)


cdef _install_slots():
    cdef RetryCall probe = RetryCall.__new__(RetryCall)
    enable_vectorcall(RetryCall, <char *>&probe.vectorcall - <char *><PyObject *>probe)

_install_slots()


def wrap_sync(func, again, budget, clock):
    """``func`` retried: a call that raises an ``Exception`` goes to
    ``again(args, kwargs, exc)``, which retries it or re-raises ``exc``. With a ``budget``
    each call deposits once, at ``clock()`` (``None``: the monotonic clock)."""
    cdef RetryCall wrapper = RetryCall.__new__(RetryCall)
    wrapper.func = func
    wrapper.again = again
    wrapper.budget = budget
    wrapper.clock = clock
    wrapper.vectorcall = <vectorcallfunc>(_retry_vectorcall if budget is None
                                          else _budget_vectorcall)
    functools.update_wrapper(wrapper, func)
    return wrapper
