# cython: language_level=3
"""A finished awaitable for the compiled twins: :class:`Ready`.

``await ready`` gives its value at once through the ``am_send`` slot (PYGEN_RETURN: no
frame, no StopIteration); it also has ``send``/``throw``/``close``, so
``asyncio.create_task`` and ``asyncio.iscoroutine`` take it as a coroutine. The pure twin
of the cache's use is ``gameguard._pure.cachecall.Ready``.
"""
cimport cython
from cpython.ref cimport Py_INCREF

__all__ = ["Ready"]


@cython.freelist(16)
cdef class Ready:
    """A finished awaitable: ``await`` gives ``value`` at once (again on every await, like
    a done Future)."""

    def __init__(self, value):
        self.value = value

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        raise StopIteration(self.value)

    def send(self, value):
        raise StopIteration(self.value)

    def throw(self, typ, val=None, tb=None):
        """Never suspended, so nothing can catch it: the exception comes straight back."""
        exc = typ if val is None else val
        if isinstance(exc, type):
            exc = exc()
        if tb is not None:
            exc = exc.with_traceback(tb)
        raise exc

    def close(self):
        pass

    def __repr__(self):
        return f"<ready {self.value!r}>"


cdef PySendResult _ready_am_send(PyObject *obj, PyObject *value, PyObject **result) noexcept:
    cdef object v = (<Ready>obj).value
    Py_INCREF(v)
    result[0] = <PyObject *>v
    return PYGEN_RETURN


cdef _install_am_send():
    cdef AwaitTypeSlots *tp = <AwaitTypeSlots *>Ready
    tp.tp_as_async.am_send = <sendfunc>_ready_am_send

_install_am_send()
