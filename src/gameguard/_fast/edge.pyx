# cython: language_level=3
"""An ASGI request through its route's guards in C (compiled twin of
``gameguard._pure.edge``, which says what happens; this is the same, faster).

Calling a :class:`Middleware` finds the route through the path cache and, on a route with a
plan (keyed limiters, then at most one block), decides the keyed limiters at once and
returns an :class:`Exchange`: the awaitable that enters the block when first awaited, runs
the app's coroutine inside it and releases it exactly once with the outcome; it is also the
``send`` the app gets when the response status matters, read in C. A path no pattern names
gets the app's own coroutine back: no frame of ours at all. Everything else (a guard that
waits, a rejection, a route without a plan, a middleware built on the pure twin) goes to
the pure twin's coroutines.
"""
cimport cython

from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from cpython.dict cimport PyDict_GetItem
from cpython.exc cimport PyErr_SetObject

from gameguard._fast.awaitable cimport (Ready, PySendResult, PYGEN_RETURN, PYGEN_ERROR,
                                        PYGEN_NEXT, sendfunc, AwaitTypeSlots, PyIter_Send)
from gameguard._fast.vector cimport (gg_propagate, vectorcallfunc, PyVectorcall_Call,
                                     PyVectorcall_NARGS, vectorcall_raw, enable_vectorcall,
                                     pack_args)
from gameguard._pure import edge as _py
from gameguard import _http
from gameguard._http import ServerErrorResponse
from gameguard.errors import RejectedError

cdef extern from "Python.h":
    ctypedef struct CallSlots "PyTypeObject":
        void *tp_call
    void PyErr_Fetch(PyObject **, PyObject **, PyObject **)
    void PyErr_Restore(PyObject *, PyObject *, PyObject *)
    void PyErr_NormalizeException(PyObject **, PyObject **, PyObject **)
    PyObject *PyErr_Occurred()

__all__ = ["Middleware", "adopt_call"]

cdef object _HTTP = "http"
cdef object _WEBSOCKET = "websocket"
cdef str _START = "http.response.start"

cdef class Exchange


cdef enum:
    NEW = 0        # not awaited yet: nothing entered
    RUNNING = 1    # the app runs under the block, which this object releases
    HANDED = 2     # a pure-twin coroutine does the rest (it releases what it takes)
    DONE = 3


cdef class Middleware:
    """Serves ASGI calls for ``app`` by the route ``routes`` gives each path; see the
    pure twin."""

    cdef public object app
    cdef readonly object routes
    cdef readonly bint pure
    cdef dict seen                   # routes.seen: the path cache, tried first
    cdef object lookup               # routes.lookup: a path not seen yet
    cdef vectorcallfunc vectorcall   # found by CPython through tp_vectorcall_offset
    cdef dict __dict__
    cdef object __weakref__

    def __cinit__(self):
        self.vectorcall = <vectorcallfunc>_middleware_vectorcall

    def __init__(self, app, routes, pure=False):
        self.app = app
        self.routes = routes
        self.pure = pure
        self.seen = routes.seen
        self.lookup = routes.lookup

    def __call__(self, *args, **kwargs):  # the tuple-calling path (PyObject_Call)
        return PyVectorcall_Call(self, args, kwargs)


cdef object _middleware_vectorcall(Middleware self, PyObject **args, size_t nargsf,
                                   PyObject *kwnames):
    if kwnames != NULL or PyVectorcall_NARGS(nargsf) != 3:
        positional, kwargs = pack_args(args, nargsf, kwnames)
        return _py.serve(self, *positional, **kwargs)
    return _serve(self, <object>args[0], <object>args[1], <object>args[2])


cdef object _serve(Middleware self, scope, receive, send):
    """What calling the middleware returns: the app's coroutine (no route), an
    :class:`Exchange`, or a pure-twin coroutine."""
    cdef PyObject *found
    cdef tuple plan
    if self.pure or type(scope) is not dict:
        return _py.serve(self, scope, receive, send)
    found = PyDict_GetItem(scope, "path")
    if found == NULL:  # lifespan and the like: no path, nothing to guard
        return self.app(scope, receive, send)
    path = <object>found
    found = PyDict_GetItem(self.seen, path)
    route = self.lookup(path) if found == NULL else <object>found
    if route is None:
        return self.app(scope, receive, send)
    found = PyDict_GetItem(scope, "type")
    kind = None if found == NULL else <object>found
    if found != <PyObject *>_HTTP and found != <PyObject *>_WEBSOCKET:  # interned: usual
        if kind != _HTTP and kind != _WEBSOCKET:
            return self.app(scope, receive, send)
    planned = route.plan
    if planned is None:
        return _py.serve(self, scope, receive, send)
    plan = <tuple>planned
    keyed = <tuple>plan[0]
    block = plan[2]
    cdef tuple pair
    cdef PyObject *argv[1]
    cdef PyObject *res
    if len(keyed):
        argv[0] = <PyObject *>scope
        res = vectorcall_raw(<PyObject *>plan[1], argv, 1, NULL)  # key(scope)
        if res == NULL:
            return gg_propagate()
        k = <object>res
        Py_DECREF(k)
        for p in keyed:
            pair = <tuple>p
            if not pair[1](k):  # limiter.try_acquire(k), bound once
                return _py.reject(kind, receive, send, route.refusal(pair[0], k))
        if block is None:  # keyed limiters hold nothing: no outcome to report
            return self.app(scope, receive, send)
    cdef Exchange ex = Exchange.__new__(Exchange)
    ex.app = self.app
    ex.scope = scope
    ex.receive = receive
    ex.reply = send
    ex.enter = plan[4]
    ex.leave = plan[5]
    ex.judges = plan[3]
    ex.http = found == <PyObject *>_HTTP or kind == _HTTP
    ex.status = 500  # until a response starts: the server answers 500 for an app that didn't
    return ex


@cython.no_gc_clear  # __dealloc__ releases the block: keep it alive
@cython.freelist(8)
cdef class Exchange:
    """One admitted request: a coroutine-like awaitable (``send``, ``throw``, ``close``,
    ``__await__``) over the app's coroutine, and the ``send`` the app gets where the
    status matters. The block is entered when first awaited (in the awaiting task's
    context, whose permit stack holds it) and released exactly once: on return (a 5xx
    status as :class:`ServerErrorResponse`), exception, cancellation, ``close()``, or when
    dropped unfinished."""

    cdef object app, scope, receive, reply, enter, leave, coro  # reply: the server's send
    cdef int status, state
    cdef bint judges, http
    cdef vectorcallfunc vectorcall   # __call__: the watched send

    def __cinit__(self):
        self.vectorcall = <vectorcallfunc>_send_vectorcall

    def __call__(self, *args, **kwargs):  # the tuple-calling path (PyObject_Call)
        return PyVectorcall_Call(self, args, kwargs)

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
        cdef PySendResult r = self.step(<PyObject *>value, &res)
        if r == PYGEN_ERROR:
            return gg_propagate()
        out = <object>res
        Py_DECREF(out)
        if r == PYGEN_RETURN:
            raise StopIteration(out)
        return out

    cdef PySendResult step(self, PyObject *value, PyObject **result) noexcept:
        """One resumption (what ``am_send`` does): start on the first, then the
        coroutine's own step; its end releases the block."""
        cdef PySendResult r
        if self.state == NEW:
            try:
                self.start()
            except BaseException as error:
                return _raise_in_send(error, result)
        elif self.state == DONE:
            return _raise_in_send(RuntimeError("cannot reuse already awaited coroutine"),
                                  result)
        r = PyIter_Send(<PyObject *>self.coro, value, result)
        if r == PYGEN_NEXT:
            return r
        if self.state == HANDED:
            self.ended()
        elif r == PYGEN_RETURN:
            try:
                self.leave_ok()
            except BaseException as error:  # a machinery error after the release
                Py_DECREF(<object>result[0])
                return _raise_in_send(error, result)
        else:
            self.leave_raised()
        return r

    cdef int start(self) except -1:
        """Enter the block; admitted at once: the app's coroutine, under it. A guard that
        waits, or a rejection: a pure-twin coroutine takes over."""
        cdef PyObject *argv[3]
        try:
            entering = self.enter()
        except RejectedError as refused:
            self.hand(_py.reject(_HTTP if self.http else _WEBSOCKET, self.receive,
                                 self.reply, refused))
            return 0
        if type(entering) is not Ready:  # waiting for a slot
            self.hand(_py.admitted(self.enter, self.leave, self.app, self.scope,
                                   self.receive, self.reply, self.judges, entering))
            return 0
        self.state = RUNNING
        argv[0] = <PyObject *>self.scope
        argv[1] = <PyObject *>self.receive
        argv[2] = <PyObject *>(self if self.judges else self.reply)
        cdef PyObject *coro = vectorcall_raw(<PyObject *>self.app, argv, 3, NULL)
        self.scope = self.receive = None
        if coro == NULL:  # the app raised before making its coroutine
            self.leave_raised()
            return -1
        self.coro = <object>coro
        Py_DECREF(self.coro)
        return 0

    cdef void hand(self, coro) noexcept:
        self.coro = coro
        self.state = HANDED
        self.scope = self.receive = self.enter = self.leave = None

    cdef void ended(self) noexcept:
        self.state = DONE
        self.coro = self.app = self.reply = self.enter = self.leave = None

    cdef int leave_ok(self) except -1:
        """The app returned: release the block as a success, or as a failure for a 5xx."""
        leave = self.leave
        self.ended()
        if self.judges and self.status >= 500:
            leave(ServerErrorResponse, ServerErrorResponse(self.status), None)
        else:
            leave(None, None, None)
        return 0

    cdef void leave_with(self, exc) noexcept:
        """Release the block with ``exc`` (on its way out) as the outcome; an error
        releasing is logged, never raised over ``exc``."""
        leave = self.leave
        self.ended()
        try:
            _http.leave_quietly(leave, exc)
        except BaseException:
            pass  # leave_quietly logs; only a failing logger gets here

    cdef void leave_raised(self) noexcept:
        """The app raised (the exception is set): release the block with it as the outcome
        and leave that same exception set. A machinery error is logged: the app's own
        exception wins."""
        cdef PyObject *etype
        cdef PyObject *evalue
        cdef PyObject *etb
        PyErr_Fetch(&etype, &evalue, &etb)
        PyErr_NormalizeException(&etype, &evalue, &etb)
        self.leave_with(<object>evalue)
        PyErr_Restore(etype, evalue, etb)

    def throw(self, typ, val=None, tb=None):
        if self.state == NEW or self.state == DONE:  # nothing entered: straight back
            self.ended()
            exc = typ if val is None else val
            if isinstance(exc, type):
                exc = exc()
            raise exc
        try:
            if val is None and tb is None:
                out = self.coro.throw(typ)
            else:
                out = self.coro.throw(typ, val, tb)
        except StopIteration:
            if self.state == RUNNING:
                self.leave_ok()
            self.ended()
            raise
        except BaseException as exc:
            if self.state == RUNNING:
                self.leave_with(exc)
            self.ended()
            raise
        return out

    def close(self):
        if self.state == NEW or self.state == DONE:
            self.ended()
            return
        try:
            self.coro.close()
        except BaseException as exc:
            if self.state == RUNNING:
                self.leave_with(exc)
            self.ended()
            raise
        if self.state == RUNNING:
            self.leave_with(GeneratorExit())
        self.ended()

    @property
    def cr_await(self):
        return getattr(self.coro, "cr_await", None)

    def __repr__(self):
        return f"<guarded request {self.coro!r}>"

    def __dealloc__(self):
        if self.state == RUNNING and self.leave is not None:  # dropped unfinished
            self.leave_with(GeneratorExit())


cdef object _send_vectorcall(Exchange self, PyObject **args, size_t nargsf,
                             PyObject *kwnames):
    """The app's ``send``: note the status a message carries, then hand back the real
    send's awaitable (the caller's argument vector passed on: no frame, no tuple)."""
    cdef PyObject *found
    if kwnames == NULL and PyVectorcall_NARGS(nargsf) == 1:
        message = <object>args[0]
        if self.http and type(message) is dict:
            found = PyDict_GetItem(message, "type")
            if found != NULL and type(<object>found) is str and _is_start(<str>found):
                self.status = message["status"]
        else:
            self.status = _py.status_after(self.status, message)
    cdef PyObject *res = vectorcall_raw(<PyObject *>self.reply, args, nargsf, kwnames)
    if res == NULL:
        return gg_propagate()
    out = <object>res
    Py_DECREF(out)
    return out


cdef inline bint _is_start(str t):
    """``t == "http.response.start"``: a length check first (the body message, the usual
    other one, differs in length), then the characters."""
    return <PyObject *>t == <PyObject *>_START or (len(t) == 19 and t == _START)


cdef PySendResult _raise_in_send(exc, PyObject **result) noexcept:
    PyErr_SetObject(type(exc), exc)
    result[0] = NULL
    return PYGEN_ERROR


cdef PySendResult _exchange_am_send(PyObject *obj, PyObject *value,
                                    PyObject **result) noexcept:
    return (<Exchange>obj).step(value, result)


def adopt_call(type cls):
    """Calls of ``cls`` (a Python subclass of :class:`Middleware` that defines a Python
    ``__call__``, for servers that inspect it) go straight to the request path in C, as
    calls of a :class:`Middleware` do."""
    if not issubclass(cls, Middleware):
        raise TypeError(f"{cls!r} is not a subclass of Middleware")
    (<CallSlots *><PyObject *>cls).tp_call = (<CallSlots *><PyObject *>Middleware).tp_call
    enable_vectorcall(cls, _VECTORCALL_OFFSET)


cdef Py_ssize_t _VECTORCALL_OFFSET


cdef _install_slots():
    global _VECTORCALL_OFFSET
    cdef AwaitTypeSlots *tp = <AwaitTypeSlots *>Exchange
    tp.tp_as_async.am_send = <sendfunc>_exchange_am_send
    cdef Middleware probe = Middleware.__new__(Middleware)
    _VECTORCALL_OFFSET = <char *>&probe.vectorcall - <char *><PyObject *>probe
    enable_vectorcall(Middleware, _VECTORCALL_OFFSET)
    cdef Exchange ex = Exchange.__new__(Exchange)
    enable_vectorcall(Exchange, <char *>&ex.vectorcall - <char *><PyObject *>ex)

_install_slots()
