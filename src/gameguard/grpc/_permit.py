"""A call's permits held by hand, for calls whose end no single function call spans (a sync
server's response stream, a client's streaming call): the guard protocol's enter and
release steps (``gameguard._pure.call``, which takes guards of either twin)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Union

import grpc

from .._pure import call as protocol
from .._pure.kernel import IGNORED, SUCCESS
from ..errors import RejectedError

if TYPE_CHECKING:
    from ..guard import GuardHooks

__all__ = ["FailedStatus", "Guards", "NO_OUTCOME", "Permit", "admit", "admit_async"]

Guards = Sequence["GuardHooks"]

#: the "exception" of a call that ended with no outcome (cancelled)
NO_OUTCOME = BaseException("the RPC ended before its handler did")


class FailedStatus(Exception):
    """What guards classify for a call that ended with a failure status without an exception
    of its own (a handler that set ``INTERNAL`` and returned; a stream the server ended so)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(f"the call finished with status {code}")
        self.code = code
        self.result: Any = None  # what a handler returned: still the call's response


class Permit:
    """One call's permits, released exactly once: by the call's end or by grpc's end-of-RPC
    callback, whichever comes first (``list.pop`` is atomic)."""

    __slots__ = ("_guards", "_t0", "_box")

    def __init__(self, guards: Guards, t0: float, tokens: List[int]) -> None:
        self._guards = guards
        self._t0 = t0
        self._box = [tokens]

    def release(self, judged: Optional[BaseException], raised: Optional[BaseException]) -> None:
        """Release with ``judged``'s outcome (``None``: success); a machinery error is raised,
        or logged when the call's own exception ``raised`` is on its way out."""
        try:
            tokens = self._box.pop()
        except IndexError:
            return
        guards, t0 = self._guards, self._t0
        try:
            t1 = protocol.clock_of(guards)()
        except BaseException as error:  # no exit reading: no outcome, at the entry reading
            protocol.release(guards, tokens, t0, 0.0, None, IGNORED, t0)
            protocol.surface(error, raised)
            return
        protocol.surface(protocol.release(guards, tokens, t1, t1 - t0, judged, SUCCESS, t0),
                         raised)

    def cancel(self) -> None:
        """The RPC ended first: the permits come back with no outcome if still held."""
        self.release(NO_OUTCOME, NO_OUTCOME)


def _refusal(guard: GuardHooks, now: float) -> RejectedError:
    exc = guard._rejection(now)
    if not isinstance(exc, RejectedError):
        raise exc  # a guard that cannot run at all (a misconfiguration), not a rejection
    return exc


def admit(guards: Guards) -> Union[Permit, RejectedError]:
    """Enter ``guards`` now (waiting where one waits): the permit, or the rejection."""
    t0 = protocol.clock_of(guards)()
    tokens: List[int] = []
    i = protocol.enter(guards, t0, tokens)
    return Permit(guards, t0, tokens) if i == len(guards) else _refusal(guards[i], t0)


async def admit_async(guards: Guards) -> Union[Permit, RejectedError]:
    """:func:`admit` for asyncio; cancellation while waiting takes nothing."""
    t0 = protocol.clock_of(guards)()
    tokens: List[int] = []
    i = await protocol.enter_async(guards, t0, tokens)
    return Permit(guards, t0, tokens) if i == len(guards) else _refusal(guards[i], t0)
