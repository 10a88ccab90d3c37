"""The guard-kernel protocol shared by every primitive (pure twin of ``_fast/kernel.pyx``).

A kernel is bookkeeping only: ``enter(now)`` admits (a token >= 0) or rejects (``REJECT``);
``exit(token, now, duration, outcome)`` records how an admitted call ended. Kernels never
read a clock, sleep, raise for a rejection or call user code. ``pending`` tells the public
layer there is something for it to do after a call (state-change events, waiters to wake).
"""
from __future__ import annotations

import threading

SUCCESS = 0  #: the dependency answered (including with an exception not in ``record``)
FAILURE = 1  #: an exception matching ``record``
IGNORED = 2  #: counts as nothing: ignored exception, cancellation, a rejection from inside
REJECT = -1  #: ``enter`` result for a refused call

PENDING_EVENTS = 1  #: state transitions wait to be reported to listeners
PENDING_WAKE = 2    #: a slot was freed while callers wait for one

REJECTED = 3  #: counter index after the outcomes: calls refused
FALLBACK = 4  #: counter index: refused calls a fallback answered

__all__ = ["SUCCESS", "FAILURE", "IGNORED", "REJECT", "PENDING_EVENTS", "PENDING_WAKE",
           "REJECTED", "FALLBACK", "GuardKernel", "SplitMix64"]

_MASK = (1 << 64) - 1


class GuardKernel:
    """Base of every kernel. Subclasses keep ``self._lock`` around multi-step updates: unlike
    the compiled twin, pure Python may switch threads between bytecodes."""

    # the counters in a slot, not the instance dict: CPython shares a class's dict keys
    # (and specialises attribute reads on them) only up to 30 keys, which the breaker
    # kernel's own attributes nearly reach
    __slots__ = ("_counts", "__dict__", "__weakref__")

    def __init__(self) -> None:
        self.pending = 0
        # needs the exact clock (the default); False: the compiled wrappers may read the
        # coarse view (one tick behind) because the kernel tolerates that lag
        self.precise = True
        self._lock = threading.Lock()
        #: cumulative calls by outcome (indexed SUCCESS, FAILURE, IGNORED), then REJECTED
        #: and FALLBACK: bumped by the call protocol, read by exporters. A view (one key of
        #: a keyed table) shares its owner's list.
        self._counts = [0, 0, 0, 0, 0]

    def bump(self, what: int) -> None:
        """Add one to counter ``what`` (an outcome, ``REJECTED`` or ``FALLBACK``). The
        update makes no Python call, so CPython does not switch threads half way through."""
        if not 0 <= what < 5:
            raise ValueError(f"no counter {what}")
        self._counts[what] += 1

    def share_counts(self, owner: "GuardKernel") -> None:
        """Count into ``owner``'s counters from now on (views of one limiter)."""
        self._counts = owner._counts

    def _tally(self, admitted: bool) -> bool:
        """Count a ``try_acquire`` decision: admitted as successful, else rejected."""
        self._counts[0 if admitted else 3] += 1
        return admitted

    def counters(self) -> tuple[int, int, int, int, int]:
        """``(successful, failed, ignored, rejected, fallbacks)`` since creation."""
        c = self._counts
        return (c[0], c[1], c[2], c[3], c[4])

    def enter(self, now: float) -> int:
        raise NotImplementedError

    def exit(self, token: int, now: float, duration: float, outcome: int) -> None:
        """Default: nothing to record (limiters)."""

    def retry_after(self, now: float) -> float:
        """Seconds until a call could be admitted; negative when unknown."""
        return -1.0


class SplitMix64:
    """splitmix64 (Steele, Lea, Flood 2014): a tiny PRNG both twins compute bit for bit."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def next_float(self) -> float:
        """Uniform in [0, 1) with 53 random bits."""
        self.state = z = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        return (z >> 11) * (1.0 / 9007199254740992.0)
