# cython: language_level=3
"""The decorated-call wrapper for sync functions (compiled twin of ``gameguard._pure.call``).

A ``cdef class`` with ``__call__``: on the common path (default clock, admitted, returns)
it reads CLOCK_MONOTONIC in C, calls the kernel's ``enter``/``exit`` through the vtable and
makes no Python-level call besides the user's function.
"""
import functools
import types

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF

cdef extern from *:
    """
    /* Returning NULL with the caller's exception still set: Cython's error path then
       re-raises that very exception object, traceback kept. */
    static CYTHON_INLINE PyObject *gg_propagate(void) { return NULL; }
    """
    object gg_propagate()
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from gameguard._fast.kernel cimport (GuardKernel, SUCCESS_, IGNORED_, monotonic_precise,
                                     monotonic_coarse)

cdef extern from "Python.h":
    ctypedef PyObject *(*vectorcallfunc)(PyObject *, PyObject **, size_t, PyObject *)
    unsigned long Py_TPFLAGS_HAVE_VECTORCALL
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)
    object PyObject_Vectorcall(object callable, PyObject **args, size_t nargsf, PyObject *kwnames)
    ctypedef struct TypeSlots "PyTypeObject":
        Py_ssize_t tp_vectorcall_offset
        unsigned long tp_flags
    PyObject *vectorcall_raw "PyObject_Vectorcall" (PyObject *, PyObject **, size_t, PyObject *)
    void PyErr_Fetch(PyObject **, PyObject **, PyObject **)
    void PyErr_Restore(PyObject *, PyObject *, PyObject *)
    void PyErr_NormalizeException(PyObject **, PyObject **, PyObject **)
    Py_ssize_t PyTuple_GET_SIZE(PyObject *)
    PyObject *PyTuple_GET_ITEM(PyObject *, Py_ssize_t)

__all__ = ["wrap_sync", "monotonic"]

cdef enum:
    MAX_GUARDS = 16


def monotonic():
    """CLOCK_MONOTONIC in seconds (what ``time.monotonic`` reads on Linux)."""
    return monotonic_precise()


def monotonic_coarse_():
    """CLOCK_MONOTONIC as of the last kernel tick: what compiled wrappers read for guards
    that do not measure durations."""
    return monotonic_coarse()


cdef class _Nothing(BaseException):
    pass

cdef object _NOTHING = _Nothing()


cdef class GuardedCall:
    """A guarded sync function. Keeps ``__wrapped__``, ``__name__``, ``__doc__`` and the
    signature (through ``__wrapped__``), and binds like a function when used as a method."""

    cdef readonly object func
    cdef object guards           # tuple of public guards
    cdef object fallback
    cdef object clock            # None: the default clock, read in C
    cdef int clock_kind          # 0: call self.clock, 1: precise, 2: coarse
    cdef GuardKernel k0
    cdef object g0
    cdef int n
    cdef tuple kernels
    cdef vectorcallfunc vectorcall   # found by CPython through tp_vectorcall_offset
    cdef dict __dict__

    def __cinit__(self):
        self.vectorcall = <vectorcallfunc>_guarded_vectorcall

    def __init__(self, func, tuple guards, clock, fallback):
        cdef int i
        self.func = func
        self.guards = guards
        self.fallback = fallback
        self.clock = clock
        self.n = len(guards)
        if not 1 <= self.n <= MAX_GUARDS:
            raise ValueError(f"between 1 and {MAX_GUARDS} guards, got {self.n}")
        self.kernels = tuple([<GuardKernel?>g._kernel for g in guards])
        self.k0 = <GuardKernel>self.kernels[0]
        if clock is not None:
            self.clock_kind = 0
        elif any([(<GuardKernel>k).precise for k in self.kernels]):
            self.clock_kind = 1
        else:
            self.clock_kind = 2
        self.g0 = guards[0]

    cdef inline double _now(self) except? -1.0:
        if self.clock_kind == 2:
            return monotonic_coarse()
        if self.clock_kind == 1:
            return monotonic_precise()
        return self.clock()

    def __call__(self, *args, **kwargs):
        if self.n == 1:
            return self._call1(args, kwargs)
        return self._calln(args, kwargs)

    cdef object _call1(self, tuple args, dict kwargs, bint entered=False, double t0=0.0,
                       long long token=0):
        cdef GuardKernel k = self.k0
        cdef double t1
        if not entered:  # the tuple-calling path (PyObject_Call)
            t0 = self._now()
            token = k.enter(t0)
        if token < 0:
            token = self.g0._admit_slow(t0)
            if token < 0:
                if k.pending:
                    self.g0._service()
                return self._reject(self.g0, t0, args, kwargs)
        if k.pending:
            self.g0._service()
        try:
            result = self.func(*args, **kwargs)
        except BaseException as exc:
            t1 = self._now()
            k.exit(token, t1, t1 - t0, self.g0._classify(exc))
            if k.pending:
                self.g0._service()
            raise
        t1 = self._now()
        k.exit(token, t1, t1 - t0, SUCCESS_)
        if k.pending:
            self.g0._service()
        return result

    cdef object _calln(self, tuple args, dict kwargs):
        cdef long long tokens[MAX_GUARDS]
        cdef int i, entered = 0
        cdef double t0 = self._now()
        cdef double t1
        cdef long long token
        cdef GuardKernel k
        try:
            for i in range(self.n):
                k = <GuardKernel>self.kernels[i]
                token = k.enter(t0)
                if token < 0:
                    token = self.guards[i]._admit_slow(t0)
                if k.pending:
                    self.guards[i]._service()
                if token < 0:
                    self._release(tokens, entered, t0, 0.0, _NOTHING)
                    return self._reject(self.guards[i], t0, args, kwargs)
                tokens[i] = token
                entered += 1
        except BaseException:
            self._release(tokens, entered, t0, 0.0, _NOTHING)
            raise
        try:
            result = self.func(*args, **kwargs)
        except BaseException as exc:
            t1 = self._now()
            self._release(tokens, entered, t1, t1 - t0, exc)
            raise
        t1 = self._now()
        self._release(tokens, entered, t1, t1 - t0, None)
        return result

    cdef int _release(self, long long *tokens, int entered, double now, double duration,
                      object exc) except -1:
        cdef int i, outcome
        cdef GuardKernel k
        for i in range(entered - 1, -1, -1):
            outcome = SUCCESS_ if exc is None else self.guards[i]._classify(exc)
            k = <GuardKernel>self.kernels[i]
            k.exit(tokens[i], now, duration, outcome)
            if k.pending:
                self.guards[i]._service()
        return 0

    cdef object _reject(self, guard, double now, tuple args, dict kwargs):
        fb = guard._fallback if guard._fallback is not None else self.fallback
        if fb is not None:
            return fb(*args, **kwargs)
        raise guard._rejection(now)

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self):
        return f"<guarded {self.func!r}>"


cdef object _guarded_vectorcall(GuardedCall self, PyObject **args, size_t nargsf,
                                PyObject *kwnames):
    """The common path, called by CPython's vectorcall protocol: no argument tuple or dict
    is built, and the user's function is called with the caller's own argument vector."""
    cdef GuardKernel k
    cdef double t0, t1
    cdef long long token
    if self.n != 1:
        positional, kwargs = _pack(args, nargsf, kwnames)
        return self._calln(positional, kwargs)
    k = self.k0
    t0 = self._now()
    token = k.enter(t0)
    if token < 0:
        positional, kwargs = _pack(args, nargsf, kwnames)
        return self._call1(positional, kwargs, True, t0, token)
    if k.pending:
        self.g0._service()
    # No try/except: its exception-state bookkeeping would run on every call. The raw call
    # returns NULL on error and only then is the pending exception looked at.
    cdef PyObject *res = vectorcall_raw(<PyObject *>self.func, args, nargsf, kwnames)
    t1 = self._now()
    if res == NULL:
        _exit_with_pending_error(self.g0, k, token, t1, t1 - t0)
        return gg_propagate()
    k.exit(token, t1, t1 - t0, SUCCESS_)
    if k.pending:
        self.g0._service()
    result = <object>res
    Py_DECREF(result)  # `result` holds its own reference now; drop the one the call gave us
    return result


cdef void _exit_with_pending_error(guard, GuardKernel k, long long token, double now,
                                   double duration) noexcept:
    """Classify the exception the user's function raised, release the permit, and leave
    that same exception (object and traceback) set for the caller."""
    cdef PyObject *etype
    cdef PyObject *evalue
    cdef PyObject *etb
    cdef int outcome
    PyErr_Fetch(&etype, &evalue, &etb)
    PyErr_NormalizeException(&etype, &evalue, &etb)
    try:
        outcome = guard._classify(<object>evalue)
    except BaseException:
        outcome = IGNORED_  # a broken classifier never loses the permit or the exception
    k.exit(token, now, duration, outcome)
    if k.pending:
        try:
            guard._service()
        except BaseException:
            pass
    PyErr_Restore(etype, evalue, etb)


cdef tuple _pack(PyObject **args, size_t nargsf, PyObject *kwnames):
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


cdef _install_vectorcall():
    cdef GuardedCall probe = GuardedCall.__new__(GuardedCall)
    cdef TypeSlots *tp = <TypeSlots *>GuardedCall
    tp.tp_vectorcall_offset = <Py_ssize_t>(<char *>&probe.vectorcall - <char *><PyObject *>probe)
    tp.tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL

_install_vectorcall()


def wrap_sync(func, guards, clock, fallback):
    """The compiled guarded call for ``func`` under ``guards`` (outermost first)."""
    cdef GuardedCall wrapper = GuardedCall(func, tuple(guards), clock, fallback)
    functools.update_wrapper(wrapper, func)
    return wrapper
