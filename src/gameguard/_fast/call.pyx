# cython: language_level=3
"""The decorated-call wrapper for sync functions (compiled twin of ``gameguard._pure.call``).

A ``cdef class`` with ``__call__``: on the common path (default clock, admitted, returns)
it reads CLOCK_MONOTONIC in C, calls the kernel's ``enter``/``exit`` through the vtable and
makes no Python-level call besides the user's function.
"""
import functools
import types

cimport cython

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.exc cimport PyErr_SetObject

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
    Py_ssize_t PyTuple_GET_SIZE(PyObject *)
    PyObject *PyTuple_GET_ITEM(PyObject *, Py_ssize_t)

__all__ = ["wrap_sync", "wrap_async", "new_rejection", "monotonic"]

cdef enum:
    MAX_GUARDS = 16


def monotonic():
    """CLOCK_MONOTONIC in seconds (what ``time.monotonic`` reads on Linux)."""
    return monotonic_precise()


def monotonic_coarse_():
    """CLOCK_MONOTONIC as of the last kernel tick: what compiled wrappers read for guards
    that do not measure durations."""
    return monotonic_coarse()


cdef inline double _c_clock(int kind) noexcept nogil:
    return monotonic_coarse() if kind == 2 else monotonic_precise()


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
    cdef object fallback0        # what answers a rejection by guards[0] (None: raise)
    cdef object rejection0       # guards[0]._rejection, bound once
    cdef bint waits0             # guards[0] may wait for admission (_admit_slow)
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
        self.fallback0 = guards[0]._fallback if guards[0]._fallback is not None else fallback
        self.rejection0 = guards[0]._rejection
        self.waits0 = guards[0]._waits
        if clock is not None:
            self.clock_kind = 0
        elif any([(<GuardKernel>k).precise for k in self.kernels]):
            self.clock_kind = 1
        else:
            self.clock_kind = 2
        self.g0 = guards[0]

    cdef inline double _now(self) except? -1.0:
        if self.clock_kind:
            return _c_clock(self.clock_kind)
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
        cdef int refused = -1
        try:
            for i in range(self.n):
                k = <GuardKernel>self.kernels[i]
                token = k.enter(t0)
                if token < 0:
                    token = self.guards[i]._admit_slow(t0)
                if k.pending:
                    self.guards[i]._service()
                if token < 0:
                    refused = i
                    break
                tokens[i] = token
                entered += 1
        except BaseException:
            self._release(tokens, entered, t0, 0.0, _NOTHING)
            raise
        if refused >= 0:  # the ones entered count it as nothing, released once
            self._release(tokens, entered, t0, 0.0, _NOTHING)
            return self._reject(self.guards[refused], t0, args, kwargs)
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
        return _guarded_vectorcall_n(self, args, nargsf, kwnames)
    k = self.k0
    t0 = _c_clock(self.clock_kind) if self.clock_kind else self.clock()
    token = k.enter(t0)
    if token < 0:
        if self.waits0:
            token = self.g0._admit_slow(t0)
        if token < 0:
            # rejected: raised from this frame only (each Cython frame an exception passes
            # through adds a traceback entry, which costs more than the rest of the path)
            if k.pending:
                self.g0._service()
            if self.fallback0 is not None:
                positional, kwargs = _pack(args, nargsf, kwnames)
                return self.fallback0(*positional, **kwargs)
            raise self.rejection0(t0)
    if k.pending:
        self.g0._service()
    # No try/except: its exception-state bookkeeping would run on every call. The raw call
    # returns NULL on error and only then is the pending exception looked at.
    cdef PyObject *res = vectorcall_raw(<PyObject *>self.func, args, nargsf, kwnames)
    if res == NULL:
        _exit_with_pending_error(self.g0, k, token, t0, self.clock_kind, self.clock)
        return gg_propagate()
    t1 = _c_clock(self.clock_kind) if self.clock_kind else self.clock()
    k.exit(token, t1, t1 - t0, SUCCESS_)
    if k.pending:
        self.g0._service()
    result = <object>res
    Py_DECREF(result)  # `result` holds its own reference now; drop the one the call gave us
    return result


cdef object _guarded_vectorcall_n(GuardedCall self, PyObject **args, size_t nargsf,
                                  PyObject *kwnames):
    """A pipeline: enter every guard outermost first, exit innermost first."""
    cdef long long tokens[MAX_GUARDS]
    cdef int i, j
    cdef double t0 = self._now()
    cdef double t1
    cdef long long token
    cdef GuardKernel k
    for i in range(self.n):
        k = <GuardKernel>self.kernels[i]
        token = k.enter(t0)
        if token < 0:
            g = self.guards[i]
            if g._waits:
                try:
                    token = g._admit_slow(t0)
                except BaseException:  # interrupted while waiting: release the outer ones
                    _release_n(self, tokens, i, t0)
                    raise
        if k.pending:
            self.guards[i]._service()
        if token < 0:  # rejected: the guards already entered count it as nothing
            _release_n(self, tokens, i, t0)
            g = self.guards[i]
            fb = g._fallback if g._fallback is not None else self.fallback
            if fb is not None:
                positional, kwargs = _pack(args, nargsf, kwnames)
                return fb(*positional, **kwargs)
            raise g._rejection(t0)
        tokens[i] = token
    cdef PyObject *res = vectorcall_raw(<PyObject *>self.func, args, nargsf, kwnames)
    if res == NULL:
        for j in range(self.n - 1, -1, -1):
            _exit_with_pending_error(self.guards[j], <GuardKernel>self.kernels[j], tokens[j],
                                     t0, self.clock_kind, self.clock)
        return gg_propagate()
    t1 = self._now()
    for j in range(self.n - 1, -1, -1):
        k = <GuardKernel>self.kernels[j]
        k.exit(tokens[j], t1, t1 - t0, SUCCESS_)
        if k.pending:
            self.guards[j]._service()
    result = <object>res
    Py_DECREF(result)
    return result


cdef int _release_n(GuardedCall self, long long *tokens, int entered, double now) except -1:
    """Give back the permits of the first ``entered`` guards, as no outcome."""
    cdef int j
    cdef GuardKernel k
    for j in range(entered - 1, -1, -1):
        k = <GuardKernel>self.kernels[j]
        k.exit(tokens[j], now, 0.0, IGNORED_)
        if k.pending:
            self.guards[j]._service()
    return 0


cdef double _read_clock(int kind, clock) noexcept:
    """The clock for exit paths that must not raise (a broken custom clock falls back to
    the monotonic clock rather than lose a permit)."""
    if kind == 2:
        return monotonic_coarse()
    if kind == 1:
        return monotonic_precise()
    try:
        return clock()
    except BaseException:
        return monotonic_precise()


cdef void _exit_with_pending_error(guard, GuardKernel k, long long token, double t0,
                                   int clock_kind, clock) noexcept:
    """The user's function raised (the exception is set): classify it, release the permit,
    and leave that same exception (object and traceback) set for the caller. The exception
    is fetched before any Python code runs: none may run with an exception set."""
    cdef PyObject *etype
    cdef PyObject *evalue
    cdef PyObject *etb
    cdef int outcome
    cdef double t1
    PyErr_Fetch(&etype, &evalue, &etb)
    PyErr_NormalizeException(&etype, &evalue, &etb)
    t1 = _read_clock(clock_kind, clock)
    try:
        outcome = guard._classify(<object>evalue)
    except BaseException:
        outcome = IGNORED_  # a broken classifier never loses the permit or the exception
    k.exit(token, t1, t1 - t0, outcome)
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




@cython.no_gc_clear
cdef class GuardedAsync:
    """A guarded coroutine function (one guard). Calling it enters the guard in C and
    returns a :class:`GuardedAwaitable` over the user's coroutine; rejected or waiting calls
    go to the Python coroutine ``slow`` instead."""

    cdef readonly object func
    cdef object g0, clock, slow
    cdef GuardKernel k0
    cdef int clock_kind
    cdef vectorcallfunc vectorcall
    cdef dict __dict__

    def __cinit__(self):
        self.vectorcall = <vectorcallfunc>_async_vectorcall

    def __init__(self, func, guard, clock, slow):
        self.func = func
        self.g0 = guard
        self.k0 = <GuardKernel?>guard._kernel
        self.clock = clock
        self.slow = slow
        self.clock_kind = 0 if clock is not None else (1 if self.k0.precise else 2)

    cdef inline double _now(self) except? -1.0:
        if self.clock_kind:
            return _c_clock(self.clock_kind)
        return self.clock()

    def __call__(self, *args, **kwargs):  # the tuple-calling path (PyObject_Call)
        return self.slow(None, args, kwargs)

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self):
        return f"<guarded {self.func!r}>"


cdef object _async_vectorcall(GuardedAsync self, PyObject **args, size_t nargsf,
                              PyObject *kwnames):
    cdef GuardKernel k = self.k0
    cdef double t0 = self._now()
    cdef long long token = k.enter(t0)
    cdef GuardedAwaitable aw
    if token < 0:  # rejected, or may wait: the Python path (fallback, waiting, raising)
        if k.pending:
            self.g0._service()
        positional, kwargs = _pack(args, nargsf, kwnames)
        return self.slow(t0, positional, kwargs)
    if k.pending:
        self.g0._service()
    cdef PyObject *res = vectorcall_raw(<PyObject *>self.func, args, nargsf, kwnames)
    if res == NULL:  # raised before making a coroutine (e.g. bad arguments)
        _exit_with_pending_error(self.g0, k, token, t0, self.clock_kind, self.clock)
        return gg_propagate()
    aw = GuardedAwaitable.__new__(GuardedAwaitable)
    aw.owner = self
    aw.token = token
    aw.t0 = t0
    coro = <object>res
    Py_DECREF(coro)
    aw.coro = coro
    return aw


@cython.no_gc_clear  # __dealloc__ releases the permit through owner.k0: keep them alive
cdef class GuardedAwaitable:
    """Awaits the user's coroutine and records its outcome: a Coroutine (``send``,
    ``throw``, ``close``, ``__await__``) so ``asyncio.create_task`` takes it too. The
    permit is released exactly once: on return, exception, cancellation (``throw``),
    ``close()``, or when dropped without being awaited."""

    cdef GuardedAsync owner
    cdef object coro
    cdef long long token
    cdef double t0
    cdef bint done

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self._resume(None)

    def send(self, value):
        return self._resume(value)

    cdef object _resume(self, value):
        cdef PyObject *res = NULL
        cdef PySendResult r
        if self.done:
            raise RuntimeError("cannot reuse already awaited coroutine")
        r = PyIter_Send(<PyObject *>self.coro, <PyObject *>value, &res)
        if r == PYGEN_NEXT:
            out = <object>res
            Py_DECREF(out)
            return out
        if r == PYGEN_RETURN:
            self._finish(SUCCESS_)
            out = <object>res
            Py_DECREF(out)
            raise StopIteration(out)
        self._fail_pending()
        return gg_propagate()

    def throw(self, typ, val=None, tb=None):
        try:
            if val is None and tb is None:
                return self.coro.throw(typ)
            return self.coro.throw(typ, val, tb)
        except StopIteration:
            self._finish(SUCCESS_)
            raise
        except BaseException as exc:
            self._finish(_classify_safe(self.owner.g0, exc))
            raise

    def close(self):
        try:
            self.coro.close()
        finally:
            self._finish(IGNORED_)

    @property
    def cr_await(self):
        return getattr(self.coro, "cr_await", None)

    def __repr__(self):
        return f"<guarded awaitable {self.coro!r}>"

    cdef void _finish(self, int outcome) noexcept:
        cdef double t1
        cdef GuardKernel k
        if self.done:
            return
        self.done = True
        k = self.owner.k0
        t1 = _read_clock(self.owner.clock_kind, self.owner.clock)
        k.exit(self.token, t1, t1 - self.t0, outcome)
        if k.pending:
            _service_safe(self.owner.g0)

    cdef void _fail_pending(self) noexcept:
        if self.done:
            return
        self.done = True
        _exit_with_pending_error(self.owner.g0, self.owner.k0, self.token, self.t0,
                                 self.owner.clock_kind, self.owner.clock)

    def __dealloc__(self):
        if not self.done and self.owner is not None:  # never awaited: give the permit back
            self.done = True
            self.owner.k0.exit(self.token, self.t0, 0.0, IGNORED_)


cdef PySendResult _awaitable_am_send(PyObject *obj, PyObject *value, PyObject **result) noexcept:
    """am_send: what ``await`` and the C Task call. Completion is reported as PYGEN_RETURN
    with the value, so the common path raises no StopIteration at all."""
    cdef GuardedAwaitable self = <GuardedAwaitable>obj
    cdef PySendResult r
    if self.done:
        return _reused(result)
    r = PyIter_Send(<PyObject *>self.coro, value, result)
    if r == PYGEN_RETURN:
        self._finish(SUCCESS_)
    elif r == PYGEN_ERROR:
        self._fail_pending()
    return r


cdef PySendResult _reused(PyObject **result) noexcept:
    try:
        raise RuntimeError("cannot reuse already awaited coroutine")
    except RuntimeError as exc:
        _set_error(exc)
    result[0] = NULL
    return PYGEN_ERROR


cdef void _set_error(exc) noexcept:
    PyErr_SetObject(type(exc), exc)


cdef int _classify_safe(guard, exc) noexcept:
    try:
        return guard._classify(exc)
    except BaseException:
        return IGNORED_


cdef void _service_safe(guard) noexcept:
    try:
        guard._service()
    except BaseException:
        pass


cdef _install_am_send():
    cdef AwaitTypeSlots *tp = <AwaitTypeSlots *>GuardedAwaitable
    tp.tp_as_async.am_send = <sendfunc>_awaitable_am_send

_install_am_send()


def wrap_async(func, guard, clock, slow):
    """The compiled guarded coroutine function for ``func`` under one ``guard``."""
    cdef GuardedAsync wrapper = GuardedAsync(func, guard, clock, slow)
    functools.update_wrapper(wrapper, func)
    # look like a coroutine function to inspect.iscoroutinefunction (function-like object
    # with a CO_COROUTINE code) and asyncio.iscoroutinefunction
    code = getattr(func, "__code__", None)
    if code is not None:
        wrapper.__code__ = code
        wrapper.__defaults__ = getattr(func, "__defaults__", None)
        wrapper.__kwdefaults__ = getattr(func, "__kwdefaults__", None)
    return wrapper


def new_rejection(type cls, message, retry_after, name):
    """``cls(message, retry_after=..., name=...)`` without running a Python ``__init__``
    (a rejection is the hot path when shedding load)."""
    exc = cls.__new__(cls, message)
    exc.retry_after = retry_after
    exc.name = name
    return exc


cdef _install_vectorcall():
    cdef GuardedCall probe = GuardedCall.__new__(GuardedCall)
    cdef TypeSlots *tp = <TypeSlots *>GuardedCall
    tp.tp_vectorcall_offset = <Py_ssize_t>(<char *>&probe.vectorcall - <char *><PyObject *>probe)
    tp.tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL
    cdef GuardedAsync aprobe = GuardedAsync.__new__(GuardedAsync)
    tp = <TypeSlots *>GuardedAsync
    tp.tp_vectorcall_offset = <Py_ssize_t>(<char *>&aprobe.vectorcall - <char *><PyObject *>aprobe)
    tp.tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL

_install_vectorcall()


def wrap_sync(func, guards, clock, fallback):
    """The compiled guarded call for ``func`` under ``guards`` (outermost first)."""
    cdef GuardedCall wrapper = GuardedCall(func, tuple(guards), clock, fallback)
    functools.update_wrapper(wrapper, func)
    return wrapper
