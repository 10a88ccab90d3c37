"""One :class:`~gameguard.KeyedLimiter`'s decisions through a :class:`RedisBackend`.

Every decision follows the same three steps, written once for the sync and the async
client: decide without Redis when that is allowed (a leased unit in hand, or the breaker
open), else one ``EVALSHA`` (pipelined for many keys), then read the reply or fall back.
"""
from __future__ import annotations

import asyncio
import math
import threading
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Sequence, Tuple

from redis.exceptions import NoScriptError

from .. import _impl
from ..errors import ConfigurationError
from ..ratelimit._common import check_cost
from ..ratelimit.keyed import PROCESS_SEED
from . import _ERRORS, _KEEP_CLIENT_MS, _KEEP_SERVER_MS, key_text

if TYPE_CHECKING:
    from ..ratelimit.keyed import KeyedLimiter
    from . import RedisBackend

#: errors of an asyncio call: redis-py's, the socket's, and asyncio's own timeout
_ASYNC_ERRORS = _ERRORS + (asyncio.TimeoutError,)
#: past this many held leases, lapsed ones are swept (bounded memory whatever keys come)
_SWEEP_AT = 4096


class Remote:
    """The backend side of one limiter: its script arguments, leases and local fallback."""

    def __init__(self, backend: "RedisBackend", limiter: "KeyedLimiter") -> None:
        if "{" in limiter.name or "}" in limiter.name:
            raise ConfigurationError(
                f"a limiter deciding in Redis needs a name without braces (they would replace "
                f"each key's hash tag), got {limiter.name!r}")
        self._b = backend
        self._kind = 0 if limiter.kind == "token" else 1
        self._prefix = f"{backend.prefix}{limiter.name}:{{"
        self._clock = limiter.clock
        self._lease = float(backend.lease)
        self._max_keys = limiter.max_keys
        self._leases: dict[str, List[float]] = {}  # redis key -> [units left, lapses at]
        self._lock = threading.Lock()
        self._keep = str(_KEEP_SERVER_MS if backend.server_time else _KEEP_CLIENT_MS)
        self.leased_decisions = 0
        self._refused = threading.local()  # .wait: the retry_after of this thread's last refusal
        self._local: Any = None
        self._bump = limiter._table.bump  # the limiter's counters: the exporters read them
        self.configure(limiter.rate, limiter.capacity)

    def configure(self, rate: float, capacity: float) -> None:
        """New rate and capacity from the next call (the local fallback settled first)."""
        share = self._b.fallback_share
        if self._local is None:
            self._local = _impl.kernel("keyed").KeyedTable(
                self._kind, rate * share, capacity * share, self._max_keys, math.inf,
                PROCESS_SEED, self._clock)
        else:
            self._local.configure(self._clock(), rate * share, capacity * share, math.inf)
        self._capacity, self._local_capacity = capacity, capacity * share
        self._head = (str(self._kind), repr(float(rate)), repr(float(capacity)))
        self._tail1 = self._tail(1.0, 0.0)  # the common call, cost 1 on Redis's clock

    # -- the steps of a decision --------------------------------------------------------------
    def _tail(self, cost: float, now: float) -> Tuple[str, ...]:
        """The script's arguments after the key: settings, cost, lease wanted, time, keep."""
        want = cost if cost >= self._lease else self._lease
        clock = "" if self._b.server_time else repr(float(now))
        return (*self._head, repr(cost), repr(want), clock, self._keep)

    def _start(self, asynchronous: bool, cost: Any) -> Tuple[float, float, Tuple[str, ...]]:
        """Checks, then (cost, now, script tail)."""
        b = self._b
        if b.is_async != asynchronous:
            use = "await try_acquire_async" if b.is_async else "try_acquire"
            raise TypeError(f"{b!r} has a{'n asyncio' if b.is_async else ' sync'} Redis "
                            f"client: use {use}(...) (and the _many form alike)")
        now = self._clock()
        if cost.__class__ is int and cost == 1 and b.server_time:
            return 1.0, now, self._tail1
        c = check_cost(cost, self._capacity)
        return c, now, self._tail(c, now)

    def _without_redis(self, rkey: str, cost: float, now: float) -> Optional[bool]:
        """A decision taken here: a leased unit in hand, or the fallback while the breaker
        is open; None when Redis must decide."""
        if self._lease and self._spend(rkey, cost, now):
            return True
        if not self._b._available and not self._b.breaker.allow():
            return self._fallback(rkey, cost, now)
        return None

    def _spend(self, rkey: str, cost: float, now: float) -> bool:
        with self._lock:
            held = self._leases.get(rkey)
            if held is None:
                return False
            if held[1] <= now or held[0] < cost:  # lapsed, or too little: back to Redis
                del self._leases[rkey]
                return False
            held[0] -= cost
            self.leased_decisions += 1
            return True

    def _take(self, rkey: str, cost: float, now: float, raw: Any) -> bool:
        """Read one script reply (units granted, or minus the wait); a lease keeps what the
        call did not spend. Returns whether the call was admitted."""
        granted = float(raw)
        if granted > cost:
            with self._lock:
                if len(self._leases) >= _SWEEP_AT:
                    self._sweep(now)
                self._leases[rkey] = [granted - cost, now + self._b.lease_ttl]
        elif granted <= 0.0:
            self._refused.wait = -granted
        return granted > 0.0

    def last_wait(self) -> Optional[float]:
        """Seconds until this thread's last refused call could have gone (None: unknown,
        e.g. refused by ``fallback="deny"``): the ``retry_after`` of its rejection."""
        return getattr(self._refused, "wait", None)

    def _sweep(self, now: float) -> None:
        leases = self._leases
        for k in [k for k, held in leases.items() if held[1] <= now]:
            del leases[k]
        if len(leases) >= self._max_keys:  # unspent leases lapse: nothing is minted
            leases.clear()

    def _fallback(self, rkey: str, cost: float, now: float) -> bool:
        b = self._b
        b._count("fallback_decisions")
        b._count("decisions")
        self._refused.wait = None
        if b.fallback == "local":
            if cost <= self._local_capacity and self._local.acquire_at(now, rkey, cost):
                return True
            if cost <= self._local_capacity:
                self._refused.wait = float(self._local.delay_at(now, rkey, cost))
            return False
        if b.fallback == "raise":
            raise b._unavailable()
        return b.fallback == "allow"

    def _answer(self, rkey: str, cost: float, now: float, raw: Any) -> bool:
        if isinstance(raw, BaseException):
            self._b._round_trip(0, 0, raw)
            return self._fallback(rkey, cost, now)
        admitted = self._take(rkey, cost, now, raw)
        self._b._round_trip(1, int(float(raw) > cost), None)
        return admitted

    def _answers(self, rkeys: Sequence[str], cost: float, now: float,
                 raws: Sequence[Any]) -> List[bool]:
        """Read one pipelined round trip's replies; entries that failed go to the fallback."""
        failed = [r for r in raws if isinstance(r, BaseException)]
        ok = [r for r in raws if not isinstance(r, BaseException)]
        self._b._round_trip(len(ok), sum(1 for r in ok if float(r) > cost),
                            failed[0] if failed else None)
        return [self._fallback(k, cost, now) if isinstance(r, BaseException)
                else self._take(k, cost, now, r) for k, r in zip(rkeys, raws)]

    def _one_start(self, asynchronous: bool, key: Any, cost: Any
                   ) -> Tuple[str, float, float, Tuple[str, ...], Optional[bool]]:
        """Checks, then ``(redis key, cost, now, tail, decision)``: the decision taken
        without Redis, or None."""
        c, now, tail = self._start(asynchronous, cost)
        rkey = self._prefix + key_text(key) + "}"
        return rkey, c, now, tail, self._without_redis(rkey, c, now)

    def _many_start(self, asynchronous: bool, keys: Iterable[Any], cost: Any) -> Any:
        """Checks, then the keys decided without Redis: ``(cost, tail, now, out, todo,
        sent)``, ``out[i]`` None for the keys ``todo``, whose Redis keys are ``sent``."""
        c, now, tail = self._start(asynchronous, cost)
        rkeys = [self._prefix + key_text(k) + "}" for k in keys]
        out = [self._without_redis(k, c, now) for k in rkeys]
        todo = [i for i, v in enumerate(out) if v is None]
        return c, tail, now, out, todo, [rkeys[i] for i in todo]

    def _many_end(self, cost: float, now: float, out: List[Optional[bool]], todo: List[int],
                  sent: List[str], raws: Sequence[Any]) -> List[bool]:
        for i, v in zip(todo, self._answers(sent, cost, now, raws)):
            out[i] = v
        return self._tally_all([bool(v) for v in out])

    def _tally(self, admitted: bool) -> bool:
        """Count a decision in the limiter's counters: admitted as successful, else
        rejected (as its in-process table counts its own)."""
        self._bump(0 if admitted else 3)
        return admitted

    def _tally_all(self, decisions: List[bool]) -> List[bool]:
        for admitted in decisions:
            self._bump(0 if admitted else 3)
        return decisions

    # -- sync ---------------------------------------------------------------------------------
    def try_acquire(self, key: Any, cost: float = 1) -> bool:
        """Admit ``cost`` for ``key`` in the shared budget now."""
        rkey, c, now, tail, early = self._one_start(False, key, cost)
        if early is not None:
            return self._tally(early)
        calls = self._b.calls
        try:
            try:
                raw: Any = calls.decide(rkey, tail)
            except NoScriptError:  # flushed, failed over: load it (EVAL) and run it, once
                raw = calls.decide(rkey, tail, False)
        except _ERRORS as exc:
            raw = exc
        return self._tally(self._answer(rkey, c, now, raw))

    def try_acquire_many(self, keys: Iterable[Any], cost: float = 1) -> List[bool]:
        """``try_acquire`` for each key, the ones Redis decides in one pipelined round trip."""
        c, tail, now, out, todo, sent = self._many_start(False, keys, cost)
        if not sent:
            return self._tally_all([bool(v) for v in out])
        calls = self._b.calls
        try:
            raws = calls.decide_many(sent, tail)
            again = _noscript(raws)
            if again:
                for j, r in zip(again, calls.decide_many([sent[j] for j in again], tail, False)):
                    raws[j] = r
        except _ERRORS as exc:
            raws = [exc] * len(sent)
        return self._many_end(c, now, out, todo, sent, raws)

    # -- asyncio ------------------------------------------------------------------------------
    async def try_acquire_async(self, key: Any, cost: float = 1) -> bool:
        """``try_acquire`` for an asyncio client."""
        rkey, c, now, tail, early = self._one_start(True, key, cost)
        if early is not None:
            return self._tally(early)
        calls = self._b.calls
        try:
            try:
                raw: Any = await calls.decide(rkey, tail)
            except NoScriptError:
                raw = await calls.decide(rkey, tail, False)
        except _ASYNC_ERRORS as exc:
            raw = exc
        return self._tally(self._answer(rkey, c, now, raw))

    async def try_acquire_many_async(self, keys: Iterable[Any], cost: float = 1) -> List[bool]:
        """``try_acquire_many`` for an asyncio client."""
        c, tail, now, out, todo, sent = self._many_start(True, keys, cost)
        if not sent:
            return self._tally_all([bool(v) for v in out])
        calls = self._b.calls
        try:
            raws = await calls.decide_many(sent, tail)
            again = _noscript(raws)
            if again:
                redo = await calls.decide_many([sent[j] for j in again], tail, False)
                for j, r in zip(again, redo):
                    raws[j] = r
        except _ASYNC_ERRORS as exc:
            raws = [exc] * len(sent)
        return self._many_end(c, now, out, todo, sent, raws)


def _noscript(raws: Sequence[Any]) -> List[int]:
    """Entries Redis refused for want of the script: they did nothing, so they may rerun."""
    return [j for j, r in enumerate(raws) if isinstance(r, NoScriptError)]
