# cython: language_level=3
"""Retry bookkeeping (compiled twin of ``gameguard._pure.retry``): the retry budget and the
sync retrying call, whose first attempt costs one vectorcall and a NULL check."""
import functools
import types

from cpython.object cimport PyObject

from gameguard._fast.kernel cimport monotonic_coarse
from gameguard._fast.vector cimport (gg_propagate, vectorcallfunc, PyVectorcall_Call,
                                     vectorcall_raw, pack_args, enable_vectorcall)
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

    def __cinit__(self):
        self.vectorcall = <vectorcallfunc>_retry_vectorcall

    def __call__(self, *args, **kwargs):  # the tuple-calling path (PyObject_Call)
        return PyVectorcall_Call(self, args, kwargs)

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self):
        return f"<retried {self.func!r}>"


cdef object _retry_vectorcall(RetryCall self, PyObject **args, size_t nargsf,
                              PyObject *kwnames):
    cdef double now
    if self.budget is not None:
        # the coarse view (one tick, 1-4 ms, behind) will do: budget buckets are window/buckets
        # seconds wide (a second by default)
        now = monotonic_coarse() if self.clock is None else self.clock()
        self.budget.deposit_c(now)
    cdef PyObject *res = vectorcall_raw(<PyObject *>self.func, args, nargsf, kwnames)
    if res != NULL:
        result = <object>res
        Py_XDECREF(res)  # `result` holds its own reference now
        return result
    if not PyErr_ExceptionMatches(PyExc_Exception):
        return gg_propagate()  # KeyboardInterrupt, SystemExit...: never retried
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
    functools.update_wrapper(wrapper, func)
    return wrapper
