# cython: language_level=3, boundscheck=False, wraparound=False
"""The guard protocol's common paths in C (compiled twin of ``gameguard._pure.call``).

One :class:`Chain` (guards outermost first, their kernels, the clock) carries the protocol:
``admit`` (the single-guard common case inline, everything else through ``take``),
``release`` (every permit exactly once, whatever raises), ``exit_ok`` and ``finish``. The
decorated sync call (:class:`GuardedCall`), the decorated coroutine (:class:`GuardedAsync`
and its :class:`GuardedAwaitable`) and ``with`` / ``async with`` (:class:`GuardBase`, the
base of ``Guard``) are that protocol around a call, an await or a block. On the common path
(default clock, admitted, returns) they read CLOCK_MONOTONIC in C, call ``enter``/``exit``
through the kernel's vtable and make no Python-level call besides the user's code. Waiting
for admission, and guards built on the pure twin, go to the Python protocol.
"""
import functools
import types
from contextvars import ContextVar

cimport cython

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_XINCREF, Py_XDECREF
from cpython.exc cimport PyErr_SetObject
from cpython.mem cimport PyMem_Realloc, PyMem_Free
from cpython.contextvars cimport PyContextVar_Get, PyContextVar_Set
from libc.string cimport memcpy, memmove

from gameguard._fast.kernel cimport (GuardKernel, SUCCESS_, IGNORED_, REJECTED_, FALLBACK_,
                                     bump, monotonic_precise, monotonic_coarse)
from gameguard._pure import call as _py
from gameguard._fast.awaitable cimport (Ready, ready, PySendResult, PYGEN_RETURN, PYGEN_ERROR,
                                        PYGEN_NEXT, sendfunc, AwaitTypeSlots, PyIter_Send)

cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030A0000
    #error "gameguard._fast.call needs CPython >= 3.10 (am_send, PyIter_Send); on older Pythons gameguard runs its pure-Python twin"
    #endif
    """
from gameguard._fast.vector cimport (gg_propagate, vectorcallfunc, PyVectorcall_Call,
                                     vectorcall_raw, pack_args as _pack, enable_vectorcall)
from gameguard._log import logger

cdef extern from "Python.h":
    ctypedef struct DictSlots "PyTypeObject":
        PyObject *tp_dict
    object PyDescr_NewMethod(type cls, PyMethodDef *method)
    void PyType_Modified(type cls)
    void PyErr_Fetch(PyObject **, PyObject **, PyObject **)
    void PyErr_Restore(PyObject *, PyObject *, PyObject *)
    void PyErr_NormalizeException(PyObject **, PyObject **, PyObject **)
    ctypedef struct ThreadState "PyThreadState":
        PyObject *context   # the current contextvars.Context
    ThreadState *PyThreadState_Get()

__all__ = ["wrap_sync", "wrap_async", "new_rejection", "monotonic", "GuardBase"]


cdef enum:
    MAX_GUARDS = 16
    NOT_ENTERED = -2   # take(): the first guard's enter is still to be called


def monotonic():
    """CLOCK_MONOTONIC in seconds (what ``time.monotonic`` reads on Linux)."""
    return monotonic_precise()


def monotonic_coarse_():
    """CLOCK_MONOTONIC as of the last kernel tick: what compiled wrappers read for guards
    that do not measure durations."""
    return monotonic_coarse()


cdef inline double _c_clock(int kind) noexcept nogil:
    return monotonic_coarse() if kind == 2 else monotonic_precise()


cdef int _surface(error, exc) except -1:
    """A machinery error met after every permit was released: raised, unless the caller's
    own exception ``exc`` is on its way out (then logged: the caller's exception wins)."""
    if error is None:
        return 0
    if exc is None:
        raise error
    logger().error("gameguard: %r raised while releasing permits; the call's own %r propagates",
              error, exc, exc_info=error)
    return 0


cdef object _serviced(guard, error):
    """``guard._service()``; returns the first error so far (a service that raises after
    an exit must not stop the remaining exits)."""
    try:
        guard._service()
    except BaseException as e:
        return error if error is not None else e
    return error


cdef class Chain:
    """Guards entered outermost first, with their kernels and clock: the protocol in C."""

    cdef tuple guards            # the public guards (GuardHooks)
    cdef tuple kernels           # their GuardKernels
    cdef int n
    cdef object clock            # None: the default clock, read in C
    cdef object read             # the clock as a Python callable (for the Python protocol)
    cdef int clock_kind          # 0: call self.clock, 1: precise, 2: coarse
    cdef GuardKernel k0
    cdef long long *counts0      # k0's counters (views share theirs before any call)
    cdef object ready            # with blocks: the finished awaitable __aenter__ returns

    cdef int setup(self, tuple guards, clock) except -1:
        self.n = len(guards)
        if not 1 <= self.n <= MAX_GUARDS:
            raise ValueError(f"between 1 and {MAX_GUARDS} guards, got {self.n}")
        self.guards = guards
        self.kernels = tuple([<GuardKernel?>g._kernel for g in guards])
        self.k0 = <GuardKernel>self.kernels[0]
        self.counts0 = self.k0.counts
        self.clock = clock
        if clock is not None:
            self.clock_kind, self.read = 0, clock
        elif any([(<GuardKernel>k).precise for k in self.kernels]):
            self.clock_kind, self.read = 1, monotonic
        else:
            self.clock_kind, self.read = 2, monotonic_coarse_
        return 0

    @cython.final
    cdef inline double now(self) except? -1.0:
        if self.clock_kind:
            return _c_clock(self.clock_kind)
        return self.clock()

    @cython.final
    cdef inline int admit(self, double now, long long *tokens, bint wait) except -1:
        """Enter every guard at ``now``: ``n`` when admitted, else what :meth:`take`
        says. One guard admitted with nothing pending is the inline common case."""
        cdef long long token
        if self.n == 1:
            token = self.k0.enter(now)
            if token >= 0 and not self.k0.pending:
                tokens[0] = token
                return 1
            return self.take(now, tokens, token, wait)
        return self.take(now, tokens, NOT_ENTERED, wait)

    cdef int take(self, double now, long long *tokens, long long first, bint wait) except -1:
        """Enter the guards outermost first into ``tokens``. Returns ``n`` when every guard
        admitted, else the index of the first that refused, the permits before it still
        held. ``first``: guard 0's ``enter`` result if already called. ``wait``: a refusing
        guard that waits is waited for here (sync); else the caller waits (async).
        Anything raising gives back every permit taken before it propagates."""
        cdef int i = 0, held = 0
        cdef long long token
        cdef GuardKernel k
        try:
            while i < self.n:
                k = <GuardKernel>self.kernels[i]
                if first != NOT_ENTERED:
                    token, first = first, NOT_ENTERED
                else:
                    token = k.enter(now)
                if token < 0 and wait and self.guards[i]._waits:
                    token = self.guards[i]._admit_slow(now)
                if token >= 0:
                    tokens[i] = token
                    held = i + 1
                if k.pending:
                    self.guards[i]._service()
                if token < 0:
                    return i
                i += 1
            return i
        except BaseException as exc:
            _surface(self.release(tokens, held, now, 0.0, None, IGNORED_, now), exc)
            raise

    cdef object release(self, long long *tokens, int held, double now, double duration,
                        exc, int outcome, double t0, bint tally=True):
        """Exit the first ``held`` permits innermost first, each exactly once, whatever
        raises (see the pure twin's ``release``), counting each call's outcome unless
        ``tally`` is false (permits given back to be taken again). Returns the first error
        met, or None."""
        cdef int i, o
        cdef GuardKernel k
        error = None
        for i in range(held - 1, -1, -1):
            g = self.guards[i]
            k = <GuardKernel>self.kernels[i]
            o = outcome
            if exc is not None:
                try:
                    o = g._classify(exc)
                except BaseException as e:
                    o = IGNORED_
                    error = error if error is not None else e
            try:
                k.exit(tokens[i], now, duration, o)
            except BaseException as e:
                o = IGNORED_
                error = error if error is not None else e
                if t0 != now:  # a reading the kernel refused: the entry reading it took
                    try:
                        k.exit(tokens[i], t0, 0.0, IGNORED_)
                    except BaseException:
                        pass
            if tally:
                bump(k, o if 0 <= o < IGNORED_ else IGNORED_)
            if k.pending:
                error = _serviced(g, error)
        return error

    cdef object finish(self, long long *tokens, double t0, exc, int outcome=SUCCESS_):
        """After the guarded code: read the clock, release every permit with ``exc``'s
        outcome (else ``outcome``); a clock that raises releases them with no outcome at
        ``t0``, duration 0. Returns the first machinery error, or None."""
        cdef double t1
        if self.clock_kind:
            t1 = _c_clock(self.clock_kind)
        else:
            try:
                t1 = self.clock()
            except BaseException as e:
                self.release(tokens, self.n, t0, 0.0, None, IGNORED_, t0)
                return e
        return self.release(tokens, self.n, t1, t1 - t0, exc, outcome, t0)

    @cython.final
    cdef inline int exit_ok(self, long long *tokens, double t0) except -1:
        """The guarded code returned: release every permit as a success, then raise the
        first machinery error if any. One guard on a C clock (a valid reading, so no kernel
        refuses it) is the inline case."""
        cdef double t1
        if self.n == 1 and self.clock_kind:
            t1 = _c_clock(self.clock_kind)
            self.k0.exit(tokens[0], t1, t1 - t0, SUCCESS_)
            self.counts0[SUCCESS_] += 1  # not bump(self.k0): that takes a reference
            if self.k0.pending:
                return _surface(_serviced(self.guards[0], None), None)
            return 0
        return self.exit_all(tokens, t0)

    cdef int exit_all(self, long long *tokens, double t0) except -1:
        cdef double t1
        cdef int j
        cdef GuardKernel k
        if not self.clock_kind:
            return _surface(self.finish(tokens, t0, None), None)
        t1 = _c_clock(self.clock_kind)
        error = None
        for j in range(self.n - 1, -1, -1):
            k = <GuardKernel>self.kernels[j]
            k.exit(tokens[j], t1, t1 - t0, SUCCESS_)
            bump(k, SUCCESS_)
            if k.pending:
                error = _serviced(self.guards[j], error)
        return 0 if error is None else _surface(error, None)

    @cython.final
    cdef int give_back(self, long long *tokens, int held, double now,
                       bint retaken=False) except -1:
        """A guard refused: the ``held`` permits before it count the call as ignored
        (``retaken``: not counted at all, the Python protocol enters them again)."""
        if held:
            _surface(self.release(tokens, held, now, 0.0, None, IGNORED_, now, not retaken),
                     None)
        return 0

    @cython.final
    cdef inline void refused(self, int i, bint answered) noexcept:
        """``guards[i]`` refused the call for good; ``answered``: a fallback answers it."""
        cdef GuardKernel k = <GuardKernel>self.kernels[i]
        bump(k, REJECTED_)
        if answered:
            bump(k, FALLBACK_)


cdef void _finish_raised(Chain c, long long *tokens, double t0) noexcept:
    """The guarded code raised (the exception is set): release every permit with its
    outcome and leave that same exception (object and traceback) set for the caller. The
    exception is fetched first: no Python code may run with an exception set."""
    cdef PyObject *etype
    cdef PyObject *evalue
    cdef PyObject *etb
    PyErr_Fetch(&etype, &evalue, &etb)
    PyErr_NormalizeException(&etype, &evalue, &etb)
    try:
        _surface(c.finish(tokens, t0, <object>evalue), <object>evalue)
    except BaseException:
        pass  # _surface only logs when an exception is given
    PyErr_Restore(etype, evalue, etb)


# -- decorated sync calls ----------------------------------------------------------------------
cdef class _Wrapper(Chain):
    """A guarded function: keeps ``__wrapped__``, ``__name__``, ``__doc__`` and the
    signature (through ``__wrapped__``), binds like a function when used as a method, and
    is called through CPython's vectorcall protocol (the subclass sets ``vectorcall``)."""

    cdef readonly object func
    cdef object fallback
    cdef vectorcallfunc vectorcall   # found by CPython through tp_vectorcall_offset
    cdef dict __dict__

    def __init__(self, func, tuple guards, clock, fallback):
        self.setup(guards, clock)
        self.func = func
        self.fallback = fallback

    def __call__(self, *args, **kwargs):  # the tuple-calling path (PyObject_Call)
        return PyVectorcall_Call(self, args, kwargs)

    def __get__(self, obj, objtype):
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __repr__(self):
        return f"<guarded {self.func!r}>"


cdef class GuardedCall(_Wrapper):
    """A guarded sync function."""

    cdef object fallback0        # what answers a rejection by guards[0] (None: raise)
    cdef object rejection0       # guards[0]._rejection, bound once

    def __cinit__(self):
        self.vectorcall = <vectorcallfunc>_guarded_vectorcall

    def __init__(self, func, tuple guards, clock, fallback):
        _Wrapper.__init__(self, func, guards, clock, fallback)
        self.fallback0 = guards[0]._fallback if guards[0]._fallback is not None else fallback
        self.rejection0 = guards[0]._rejection


cdef object _refused_fallback(Chain c, int i, double now, long long *tokens, fallback):
    """``guards[i]`` refused: give back the permits before it; its fallback, else ``fallback``."""
    c.give_back(tokens, i, now)
    g = c.guards[i]
    return g._fallback if g._fallback is not None else fallback


cdef object _guarded_vectorcall(GuardedCall self, PyObject **args, size_t nargsf,
                                PyObject *kwnames):
    """The call, through CPython's vectorcall protocol: no argument tuple or dict is built,
    and the user's function is called with the caller's own argument vector."""
    cdef long long tokens[MAX_GUARDS]
    cdef double t0 = _c_clock(self.clock_kind) if self.clock_kind else self.clock()
    cdef int i = self.admit(t0, tokens, True)
    if i < self.n:
        # refused: raised from this frame only (each Cython frame an exception passes
        # through adds a traceback entry, which costs more than the rest of the path)
        fb = self.fallback0 if i == 0 else _refused_fallback(self, i, t0, tokens, self.fallback)
        self.refused(i, fb is not None)
        if fb is not None:
            positional, kwargs = _pack(args, nargsf, kwnames)
            return fb(*positional, **kwargs)
        raise self.rejection0(t0) if i == 0 else self.guards[i]._rejection(t0)
    # No try/except: its exception-state bookkeeping would run on every call. The raw call
    # returns NULL on error and only then is the pending exception looked at.
    cdef PyObject *res = vectorcall_raw(<PyObject *>self.func, args, nargsf, kwnames)
    if res == NULL:
        _finish_raised(self, tokens, t0)
        return gg_propagate()
    result = <object>res
    Py_DECREF(result)  # `result` holds its own reference now; drop the one the call gave us
    self.exit_ok(tokens, t0)
    return result


# -- decorated coroutines ----------------------------------------------------------------------
cdef class GuardedAsync(_Wrapper):
    """A guarded coroutine function. Calling it enters the guards in C and returns a
    :class:`GuardedAwaitable` over the user's coroutine; a refused call returns the Python
    protocol's coroutine (it waits, answers with the fallback, or raises when awaited)."""

    def __cinit__(self):
        self.vectorcall = <vectorcallfunc>_async_vectorcall


cdef object _async_vectorcall(GuardedAsync self, PyObject **args, size_t nargsf,
                              PyObject *kwnames):
    cdef long long tokens[MAX_GUARDS]
    cdef double t0 = self.now()
    cdef int i = self.admit(t0, tokens, False)
    cdef GuardedAwaitable aw
    if i < self.n:  # refused: permits before it given back, the Python protocol goes on
        g = self.guards[i]
        self.give_back(tokens, i, t0, g._waits)
        positional, kwargs = _pack(args, nargsf, kwnames)
        if g._waits:  # entered again, waiting, when awaited: nothing is held meanwhile
            return _py.call_async(self.guards, self.read, self.fallback, self.func,
                                  positional, kwargs, t0, [])
        self.refused(i, False)  # reject_async counts the fallback if one answers
        return _py.reject_async(g, t0, self.fallback, positional, kwargs)
    cdef PyObject *res = vectorcall_raw(<PyObject *>self.func, args, nargsf, kwnames)
    if res == NULL:  # raised before making a coroutine (e.g. bad arguments)
        _finish_raised(self, tokens, t0)
        return gg_propagate()
    aw = GuardedAwaitable.__new__(GuardedAwaitable)
    aw.owner = self
    memcpy(aw.tokens, tokens, self.n * sizeof(long long))
    aw.t0 = t0
    coro = <object>res
    Py_DECREF(coro)
    aw.coro = coro
    return aw


@cython.no_gc_clear  # __dealloc__ releases the permits through owner: keep it alive
cdef class GuardedAwaitable:
    """Awaits the user's coroutine and records its outcome: a Coroutine (``send``,
    ``throw``, ``close``, ``__await__``) so ``asyncio.create_task`` takes it too. The
    permits are released exactly once: on return, exception, cancellation (``throw``),
    ``close()``, or when dropped without being awaited (waking whoever waits for them)."""

    cdef GuardedAsync owner
    cdef object coro
    cdef long long tokens[MAX_GUARDS]
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
            out = <object>res
            Py_DECREF(out)
            self._ended(None, SUCCESS_)
            raise StopIteration(out)
        self._raised()
        return gg_propagate()

    def throw(self, typ, val=None, tb=None):
        try:
            if val is None and tb is None:
                return self.coro.throw(typ)
            return self.coro.throw(typ, val, tb)
        except StopIteration:
            self._ended(None, SUCCESS_)
            raise
        except BaseException as exc:
            self._ended(exc, SUCCESS_)
            raise

    def close(self):
        try:
            self.coro.close()
        finally:
            self._ended(None, IGNORED_)

    @property
    def cr_await(self):
        return getattr(self.coro, "cr_await", None)

    def __repr__(self):
        return f"<guarded awaitable {self.coro!r}>"

    cdef int _ended(self, exc, int outcome) except -1:
        """Release the permits (once) with ``exc``'s outcome, else ``outcome``; a machinery
        error is raised, or logged when ``exc`` is on its way out."""
        if self.done:
            return 0
        self.done = True
        if exc is None and outcome == SUCCESS_:
            return self.owner.exit_ok(self.tokens, self.t0)
        return _surface(self.owner.finish(self.tokens, self.t0, exc, outcome), exc)

    cdef void _raised(self) noexcept:
        if not self.done:
            self.done = True
            _finish_raised(self.owner, self.tokens, self.t0)

    def __dealloc__(self):
        if not self.done and self.owner is not None:  # never awaited: give the permits back
            self.done = True
            error = self.owner.release(self.tokens, self.owner.n, self.t0, 0.0, None,
                                       IGNORED_, self.t0)
            if error is not None:
                logger().error("gameguard: %r raised releasing a guarded coroutine that was "
                          "never awaited", error, exc_info=error)


cdef PySendResult _awaitable_am_send(PyObject *obj, PyObject *value, PyObject **result) noexcept:
    """am_send: what ``await`` and the C Task call. Completion is reported as PYGEN_RETURN
    with the value, so the common path raises no StopIteration at all."""
    cdef GuardedAwaitable self = <GuardedAwaitable>obj
    cdef PySendResult r
    if self.done:
        return _raise_in_send(RuntimeError("cannot reuse already awaited coroutine"), result)
    r = PyIter_Send(<PyObject *>self.coro, value, result)
    if r == PYGEN_RETURN:
        try:
            self._ended(None, SUCCESS_)
        except BaseException as error:  # a machinery error after every permit was released
            Py_DECREF(<object>result[0])
            return _raise_in_send(error, result)
    elif r == PYGEN_ERROR:
        self._raised()
    return r


cdef PySendResult _raise_in_send(exc, PyObject **result) noexcept:
    PyErr_SetObject(type(exc), exc)
    result[0] = NULL
    return PYGEN_ERROR


# -- with / async with -------------------------------------------------------------------------
cdef extern from *:
    """
    /* A weak reference's referent, borrowed: Py_None once the referent died (CPython clears
       its weak references before freeing it, so a new object at its address never matches). */
    static CYTHON_INLINE PyObject *gg_referent(PyObject *ref) {
        return ((PyWeakReference *)ref)->wr_object;
    }
    """
    PyObject *gg_referent(PyObject *ref)

cdef extern from "Python.h":
    PyObject *PyWeakref_NewRef(PyObject *ob, PyObject *callback) except NULL


cdef struct Block:
    PyObject *owner              # a strong reference
    PyObject *plan               # NULL: the owner's own plan; else (a strong reference) what
                                 # the block entered: a Chain, another entry, or None
    double t0
    int n
    long long tokens[MAX_GUARDS]


@cython.final
cdef class PermitStack:
    """The open blocks of one context (thread or task), newest last. A ContextVar holds it;
    a copied context (a new task) shares the object, so it records the context it belongs
    to (weakly: the context holds the stack, and a strong reference back would make a cycle
    per task, freed only by the cyclic GC) and another context makes its own."""

    cdef Block *blocks
    cdef int depth, cap
    cdef object context_ref  # a weak reference to the context

    def __dealloc__(self):
        cdef int i
        for i in range(self.depth):
            Py_DECREF(<object>self.blocks[i].owner)
            Py_XDECREF(self.blocks[i].plan)
        PyMem_Free(self.blocks)

    cdef inline bint current(self) noexcept:
        """Whether this is the running context's stack."""
        return gg_referent(<PyObject *>self.context_ref) == PyThreadState_Get().context

    cdef inline int reserve(self) except -1:
        """Room for one more block."""
        if self.depth < self.cap:
            return 0
        return self.grow()

    cdef int grow(self) except -1:
        cdef int cap
        cdef Block *grown
        cap = self.cap * 2 if self.cap else 4
        grown = <Block *>PyMem_Realloc(self.blocks, cap * sizeof(Block))
        if grown == NULL:
            raise MemoryError()
        self.blocks, self.cap = grown, cap
        return 0

    cdef inline void push(self, owner, long long *tokens, int n, double t0,
                          PyObject *plan) noexcept:
        """After :meth:`reserve`; ``plan`` is held (NULL: the owner's own)."""
        cdef int i
        cdef Block *b = &self.blocks[self.depth]
        Py_INCREF(owner)
        b.owner = <PyObject *>owner
        Py_XINCREF(plan)
        b.plan = plan
        b.t0 = t0
        b.n = n
        for i in range(n):
            b.tokens[i] = tokens[i]
        self.depth += 1

    cdef int pop(self, owner, long long *tokens, double *t0, PyObject **plan) except -1:
        """Remove ``owner``'s newest block (blocks usually close in order: the top one);
        its plan's reference passes to the caller."""
        cdef int i = self.depth - 1
        while i >= 0 and self.blocks[i].owner != <PyObject *>owner:
            i -= 1
        if i < 0:
            raise RuntimeError(f"{owner!r}: __exit__ without a matching __enter__")
        cdef int j
        for j in range(self.blocks[i].n):
            tokens[j] = self.blocks[i].tokens[j]
        t0[0] = self.blocks[i].t0
        plan[0] = self.blocks[i].plan
        if i < self.depth - 1:  # closed out of order
            memmove(&self.blocks[i], &self.blocks[i + 1], (self.depth - i - 1) * sizeof(Block))
        self.depth -= 1
        Py_DECREF(owner)  # the caller holds it too
        return 0


cdef object _stacks = ContextVar("gameguard_blocks")


# The stack of the context used last (held: a context's stack can outlive the context, as the
# value a copy of it inherited). Read and written only by C code that makes no Python call in
# between, so under the GIL it is consistent.
cdef PermitStack _last = None


cdef inline PermitStack _stack(bint create):
    """This context's open blocks (``create``: made if there are none)."""
    if _last is not None and _last.current():
        return _last
    return _find_stack(create)


cdef PermitStack _find_stack(bint create):
    global _last
    cdef PyObject *value = NULL
    PyContextVar_Get(_stacks, NULL, &value)  # a new reference, or NULL
    if value != NULL:
        Py_DECREF(<object>value)  # the ContextVar still holds it
        if (<PermitStack>value).current():
            _last = <PermitStack>value
            return _last
    if not create:
        return None
    cdef PermitStack s = PermitStack.__new__(PermitStack)
    PyContextVar_Set(_stacks, s)  # makes the thread's context if it had none
    ref = <object>PyWeakref_NewRef(PyThreadState_Get().context, NULL)
    Py_DECREF(ref)  # `ref` holds the new reference now
    s.context_ref = ref
    _last = s
    return s


cdef class GuardBase:
    """Base of ``Guard`` and ``Pipeline`` when the compiled twin is active: ``with`` and
    ``async with`` as C methods, with the object's compiled plan in a C field (no Python
    attribute lookup, no Python frame per block). Subclasses provide ``_guards``."""

    cdef object _plan  # None: not built yet; False: a guard runs on the pure twin; a Chain

    @cython.binding(False)  # a method descriptor: CPython calls it directly
    def __enter__(self):
        """Enter every guard (waiting where a guard waits), or raise the refusing guard's
        rejection with every permit given back."""
        cdef Chain c = _chain(self)
        cdef double t0
        cdef int i
        if c is None:
            return _py.block_enter(self)
        i = _open_block(c, self, True, &t0, False)
        if i < c.n:
            raise refusal(c, i, t0)
        return self

    # __exit__ is _guard_exit below, installed as a METH_FASTCALL method: a `def` with
    # three parameters would parse them as possible keywords on every block.

    @cython.binding(False)  # a method descriptor: CPython calls it directly
    def __aenter__(self):
        """Admitted at once: a finished awaitable. A guard that waits: the Python
        protocol's coroutine."""
        cdef Chain c = _chain(self)
        cdef double t0
        cdef int i
        if c is None:
            return _py.block_aenter(self)
        i = _open_block(c, self, False, &t0, False)
        if i < c.n:
            if c.guards[i]._waits:  # enter_async enters and counts again
                return _aenter_waiting(c, self, t0, False)
            raise refusal(c, i, t0)
        return c.ready

    @cython.binding(False)  # a method descriptor: CPython calls it directly
    def __aexit__(self, exc_type, exc, tb):
        """Released at once: a finished awaitable of False."""
        cdef Chain c = _chain(self)
        if c is None:
            return _py.block_aexit(self, exc_type, exc, tb)
        _close_block(c, self, exc_type, exc, NULL)
        return _DONE_FALSE


cdef object _guard_exit(GuardBase self, PyObject **args, Py_ssize_t nargs):
    """``GuardBase.__exit__(exc_type, exc, tb)``: release this block's permits with the
    block's outcome; never suppresses."""
    if nargs != 3:
        raise TypeError(f"__exit__ takes 3 arguments ({nargs} given)")
    exc_type, exc = <object>args[0], <object>args[1]
    cdef Chain c = _chain(self)
    if c is None:
        return _py.block_exit(self, exc_type, exc, <object>args[2])
    _close_block(c, self, exc_type, exc, NULL)
    return False


cdef int install_method(type cls, PyMethodDef *method) except -1:
    """Put ``method`` (static, e.g. a METH_FASTCALL ``__exit__``) in ``cls``'s dict."""
    (<dict>(<DictSlots *>cls).tp_dict)[method.ml_name.decode()] = PyDescr_NewMethod(cls, method)
    PyType_Modified(cls)
    return 0


cdef PyMethodDef _GUARD_EXIT
_GUARD_EXIT.ml_name = "__exit__"
_GUARD_EXIT.ml_meth = <void *>_guard_exit
_GUARD_EXIT.ml_flags = METH_FASTCALL
_GUARD_EXIT.ml_doc = ("__exit__(exc_type, exc, tb)\n--\n\nRelease this block's permits with "
                      "the block's outcome; never suppresses.")
install_method(GuardBase, &_GUARD_EXIT)


cdef inline Chain _chain(GuardBase owner):
    """``owner``'s compiled plan, or None when a guard in it runs on the pure twin (then
    the Python protocol serves it)."""
    if type(owner._plan) is Chain:
        return <Chain>owner._plan
    return _new_plan(owner)


cdef Chain _new_plan(GuardBase owner):
    if owner._plan is None:
        c = False
        guards = tuple(owner._guards)
        if all([isinstance(g._kernel, GuardKernel) for g in guards]):
            c = Chain.__new__(Chain)
            (<Chain>c).setup(guards, guards[0]._clock)
            (<Chain>c).ready = ready(owner)
        owner._plan = c
    return None if owner._plan is False else <Chain>owner._plan


cdef object block_plan(entry):
    """The compiled plan a block of ``entry`` runs, for another owner to enter in its
    place (rules.guard): a GuardBase with the stock block methods and compiled guards;
    else None (the entry's own methods serve it)."""
    cls = type(entry)
    if not isinstance(entry, GuardBase) or any([
            getattr(cls, name) is not getattr(GuardBase, name)
            for name in ("__enter__", "__exit__", "__aenter__", "__aexit__")]):
        return None
    return _chain(<GuardBase>entry)


cdef inline int _open_block(Chain c, owner, bint wait, double *t0, bint record) except -1:
    """Enter ``c``'s guards for a block of ``owner`` at ``t0[0]`` (set here). Admitted
    (returns ``n``): the permits go on this context's stack, with ``c`` when ``record``
    (an owner that enters another object's plan). Else the refusing guard's index,
    nothing held."""
    cdef long long tokens[MAX_GUARDS]
    t0[0] = c.now()
    cdef PermitStack s = _stack(True)
    s.reserve()  # before entering: pushing afterwards cannot fail
    cdef int i = c.admit(t0[0], tokens, wait)
    if i < c.n:
        c.give_back(tokens, i, t0[0], not wait and c.guards[i]._waits)
    else:
        s.push(owner, tokens, c.n, t0[0], <PyObject *>c if record else NULL)
    return i


cdef object refusal(Chain c, int i, double t0):
    """``guards[i]`` refused a block for good: counted; its rejection, for the caller to
    raise (from its own frame: each frame an exception passes through adds a traceback
    entry)."""
    c.refused(i, False)
    return c.guards[i]._rejection(t0)


cdef bint enter_plan(plan, owner) except -1:
    """A block of ``owner`` enters ``plan`` when it is a compiled plan (a Chain, recorded
    with the permits: :func:`close_block` exits it whatever a reload swaps meanwhile), or
    raises its rejection. False, nothing entered, for anything else."""
    cdef double t0
    cdef int i
    if type(plan) is not Chain:
        return False
    i = _open_block(<Chain>plan, owner, True, &t0, True)
    if i < (<Chain>plan).n:
        raise refusal(<Chain>plan, i, t0)
    return True


cdef object aenter_plan(plan, owner, done):
    """:func:`enter_plan` for ``async with``: the awaitable (``done`` when admitted at once,
    the waiting coroutine when a guard that waits refused), or None when ``plan`` is not
    a compiled plan."""
    cdef double t0
    cdef int i
    if type(plan) is not Chain:
        return None
    i = _open_block(<Chain>plan, owner, False, &t0, True)
    if i < (<Chain>plan).n:
        if (<Chain>plan).guards[i]._waits:
            return _aenter_waiting(<Chain>plan, owner, t0, True)
        raise refusal(<Chain>plan, i, t0)
    return done


cdef int push_entry(owner, entry) except -1:
    """Record a block of ``owner`` that entered ``entry`` through its own methods (None:
    nothing), for :func:`close_block` to hand back."""
    cdef PermitStack s = _stack(True)
    s.reserve()
    s.push(owner, NULL, 0, 0.0, <PyObject *>entry)
    return 0


cdef inline int _close_block(Chain c, owner, exc_type, exc, PyObject **entry) except -1:
    """Remove ``owner``'s newest block and release what it entered: its recorded Chain (or
    ``c``, the owner's own plan) is exited here; another recorded entry is handed to the
    caller through ``entry`` (a new reference; NULL ``entry``: the caller records none),
    for it to exit. A C int, not an object: the guard's own ``with`` pays no None."""
    cdef long long tokens[MAX_GUARDS]
    cdef double t0
    cdef PyObject *plan = NULL
    cdef PermitStack s = _stack(False)
    if s is None:
        raise RuntimeError(f"{owner!r}: __exit__ without a matching __enter__")
    s.pop(owner, tokens, &t0, &plan)
    if plan != NULL:
        if type(<object>plan) is not Chain:
            if entry == NULL:  # cannot happen: only route blocks record other entries
                Py_DECREF(<object>plan)
                raise RuntimeError(f"{owner!r}: a block entered elsewhere")
            entry[0] = plan  # the block's reference passes to the caller
            return 0
        c = <Chain>plan
        Py_DECREF(c)  # `c` holds it now
    if exc is None and exc_type is None:
        return c.exit_ok(tokens, t0)
    exc = _py.exception_of(exc_type, exc)
    return _surface(c.finish(tokens, t0, exc), exc)


cdef object close_block(owner, exc_type, exc):
    """:func:`_close_block` of a block whose plan was recorded (route.pyx): None, or the
    entry the block entered through its own methods, for the caller to exit."""
    cdef PyObject *entry = NULL
    _close_block(None, owner, exc_type, exc, &entry)
    if entry == NULL:
        return None
    recorded = <object>entry
    Py_DECREF(recorded)  # `recorded` holds the reference now
    return recorded


async def _aenter_waiting(Chain c, owner, double t0, bint record):
    cdef long long tokens[MAX_GUARDS]
    cdef int j
    taken = []
    i = await _py.enter_async(c.guards, t0, taken)
    if i < c.n:
        raise c.guards[i]._rejection(t0)
    for j in range(c.n):
        tokens[j] = taken[j]
    cdef PermitStack s = _stack(True)
    s.reserve()
    s.push(owner, tokens, c.n, t0, <PyObject *>c if record else NULL)
    return owner


cdef Ready _DONE_FALSE = ready(False)


# -- wiring ------------------------------------------------------------------------------------
cdef _install_slots():
    cdef AwaitTypeSlots *tp = <AwaitTypeSlots *>GuardedAwaitable
    tp.tp_as_async.am_send = <sendfunc>_awaitable_am_send
    cdef _Wrapper probe = GuardedCall.__new__(GuardedCall)
    cdef Py_ssize_t offset = <char *>&probe.vectorcall - <char *><PyObject *>probe
    enable_vectorcall(GuardedCall, offset)
    enable_vectorcall(GuardedAsync, offset)

_install_slots()


def wrap_sync(func, guards, clock, fallback):
    """The compiled guarded call for ``func`` under ``guards`` (outermost first)."""
    cdef GuardedCall wrapper = GuardedCall(func, tuple(guards), clock, fallback)
    functools.update_wrapper(wrapper, func)
    return wrapper


def wrap_async(func, guards, clock, fallback):
    """The compiled guarded coroutine function for ``func`` under ``guards``."""
    cdef GuardedAsync wrapper = GuardedAsync(func, tuple(guards), clock, fallback)
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
