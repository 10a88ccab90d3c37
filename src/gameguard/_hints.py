"""``typing`` for the type checker, nothing at run time.

``import typing`` (with the ``re`` and ``enum`` it pulls in) costs about half of
``import gameguard``. Modules on the import path take annotation-only names under
``if TYPE_CHECKING:`` (the names are never evaluated: every module uses
``from __future__ import annotations``) and the few names needed at run time from here:
the real ones for mypy, stand-ins that do what the runtime needs of them otherwise.
Runtime type aliases use builtins and ``collections.abc`` instead.
"""
from __future__ import annotations

TYPE_CHECKING = False  # mypy treats any name TYPE_CHECKING as true

if TYPE_CHECKING:
    from typing import Generic as Generic, Protocol as Protocol, cast as cast
    from typing import overload as overload
else:
    import types

    def overload(func):
        """Overloads exist for the type checker; the implementation that follows wins."""
        return func

    def cast(_type, value):
        return value

    class Protocol:
        """A structural type for the checker; a plain base class at run time."""
        __slots__ = ()

    class Generic:
        """``class C(Generic[V])``: ``C[int]`` still subscripts at run time."""
        __slots__ = ()

        def __class_getitem__(cls, item):
            if cls is Generic:
                return Generic  # the base-class expression itself
            return types.GenericAlias(cls, item)

__all__ = ["TYPE_CHECKING", "Generic", "Protocol", "cast", "overload"]
