# cython: language_level=3
"""The decorated-call wrapper for sync functions (compiled twin of ``gameguard._pure.call``).

A ``cdef class`` with ``__call__``: on the common path (default clock, admitted, returns)
it reads CLOCK_MONOTONIC in C, calls the kernel's ``enter``/``exit`` through the vtable and
makes no Python-level call besides the user's function.
"""
import functools
import types

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from gameguard._fast.kernel cimport GuardKernel, SUCCESS_

__all__ = ["wrap_sync", "monotonic"]

cdef enum:
    MAX_GUARDS = 16


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


def monotonic():
    """CLOCK_MONOTONIC in seconds, as the compiled wrappers read it."""
    return _monotonic()


cdef class _Nothing(BaseException):
    pass

cdef object _NOTHING = _Nothing()


cdef class GuardedCall:
    """A guarded sync function. Keeps ``__wrapped__``, ``__name__``, ``__doc__`` and the
    signature (through ``__wrapped__``), and binds like a function when used as a method."""

    cdef readonly object func
    cdef object guards           # tuple of public guards
    cdef object fallback
    cdef object clock            # None: C monotonic clock
    cdef GuardKernel k0
    cdef object g0
    cdef int n
    cdef tuple kernels
    cdef dict __dict__

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
        self.g0 = guards[0]

    cdef inline double _now(self) except? -1.0:
        if self.clock is None:
            return _monotonic()
        return self.clock()

    def __call__(self, *args, **kwargs):
        if self.n == 1:
            return self._call1(args, kwargs)
        return self._calln(args, kwargs)

    cdef object _call1(self, tuple args, dict kwargs):
        cdef GuardKernel k = self.k0
        cdef double t0 = self._now()
        cdef double t1
        cdef long long token = k.enter(t0)
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


def wrap_sync(func, guards, clock, fallback):
    """The compiled guarded call for ``func`` under ``guards`` (outermost first)."""
    cdef GuardedCall wrapper = GuardedCall(func, tuple(guards), clock, fallback)
    functools.update_wrapper(wrapper, func)
    return wrapper
