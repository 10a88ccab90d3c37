"""Cluster-wide :class:`~gameguard.KeyedLimiter` budgets in Redis: :class:`RedisBackend`.

``KeyedLimiter(rate, capacity, kind=..., backend=RedisBackend(client))`` keeps each key's
bucket in Redis, so every server process sharing the Redis spends one budget. A decision is
one ``EVALSHA`` of ``limit.lua``, the in-process kernel's arithmetic in Lua. Needs the
``redis`` extra (``pip install gameguard[redis]``); see docs/scale-out.md.
"""
from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Dict, Optional

try:
    import redis
    import redis.asyncio
    import redis.asyncio.retry
    from redis.backoff import NoBackoff
    from redis.exceptions import (AuthenticationError, NoPermissionError,
                                  RedisError, ResponseError)
    from redis.exceptions import TimeoutError as RedisTimeout
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - the extra is installed wherever tests run
    raise ImportError("gameguard.redis needs redis-py: pip install gameguard[redis]") from exc

from ._calls import AsyncCalls, ClientCalls, OwnAsyncConnections, OwnConnections
from .._checks import check_int, check_name, check_positive
from .._log import logger
from .._registry import register
from ..breaker import CircuitBreaker
from ..errors import BackendUnavailable, ConfigurationError

if TYPE_CHECKING:
    from ..ratelimit.keyed import KeyedLimiter
    from ._remote import Remote

__all__ = ["RedisBackend", "key_text"]

FALLBACKS = ("local", "allow", "deny", "raise")
_SYNC = (redis.Redis, redis.RedisCluster)
_ASYNC = (redis.asyncio.Redis, redis.asyncio.RedisCluster)
#: how long a key outlives its refill, in ms: client clocks (server_time=False) may disagree
#: with Redis's by this much before an expiry could hand a key a full bucket early
_KEEP_SERVER_MS, _KEEP_CLIENT_MS = 1_000, 60_000
_ERRORS = (RedisError, OSError)


def key_text(key: Any) -> str:
    """The text naming ``key`` in Redis: a ``str`` as itself, every other key tagged with
    ``#`` so it never meets a string. Equal keys share one text (``1``, ``1.0``, ``True``);
    tuples and other hashables go by the cache's process-independent fingerprint."""
    if isinstance(key, str):
        text = str.__add__(key, "")  # a str subclass (StrEnum) by its characters
        return "#" + text if text.startswith("#") else text
    if isinstance(key, int):
        return f"#{int(key)}"
    if isinstance(key, float):
        return f"#{int(key)}" if key.is_integer() else f"#f{key!r}"
    if isinstance(key, bytes):
        return "#b" + key.hex()
    from .._pure.sketch import key_hash

    return f"#h{key_hash(key, 0):016x}"


def describe(exc: BaseException, timeout: float) -> str:
    """What failed, in words an operator can act on."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc) \
            or "WRONGPASS" in str(exc):
        return f"authentication failed (wrong or missing password?): {text}"
    if isinstance(exc, NoPermissionError):
        return f"permission denied (the user needs EVALSHA/EVAL, ACL @scripting): {text}"
    if isinstance(exc, RedisTimeout):
        return f"no answer within timeout={timeout!r} s: {text}"
    if isinstance(exc, ResponseError) and "unknown command" in str(exc).lower():
        return f"scripting unavailable (EVALSHA/EVAL refused): {text}"
    if isinstance(exc, (ConnectionError, redis.ConnectionError, OSError)):
        return f"cannot reach Redis: {text}"
    return text


class RedisBackend:
    """Redis as the shared store of :class:`~gameguard.KeyedLimiter` buckets.

    ``client`` is a ``redis.Redis`` / ``redis.RedisCluster`` (use ``try_acquire``) or a
    ``redis.asyncio`` one (use ``await try_acquire_async``). A plain client's connection
    settings are copied onto connections of the backend's own, whose calls time out after
    ``timeout`` seconds and are never replayed (an asyncio backend opens at most 64); a
    cluster client is used as given (set its ``socket_timeout``; asyncio calls are also
    bounded by ``timeout``). Nothing touches the network before the first decision.

    Keys live under ``{prefix}{limiter name}:{{key}}`` (one hash tag per key: one Cluster
    slot) and expire once idle and full. ``server_time=True`` reads Redis's ``TIME``;
    ``False`` sends the limiter's ``clock=`` reading (it must be one clock for the whole
    fleet, e.g. ``time.time``); a reading older than the stored one never refills.

    While Redis fails, is slow or its breaker is open (one failure opens it; a probe goes
    every ``probe_interval`` seconds), ``fallback`` decides: ``"local"`` an in-process limiter
    at ``fallback_share`` × rate and × capacity (``1/N`` for N processes keeps the fleet
    bound), ``"allow"``, ``"deny"``, or ``"raise"`` (:class:`~gameguard.BackendUnavailable`).
    Each episode is logged once, at its start and end.

    ``lease=n`` takes up to ``n`` units of a key per round trip and spends them in-process;
    unspent ones lapse after ``lease_ttl`` seconds. The fleet then admits at most
    ``capacity + rate*T + n*P`` over any ``T`` seconds (``P`` processes).
    """

    def __init__(self, client: Any, *, prefix: str = "gg:", timeout: float = 0.05,
                 fallback: str = "local", fallback_share: float = 1.0, lease: int = 0,
                 lease_ttl: float = 1.0, server_time: bool = True, probe_interval: float = 0.5,
                 name: Optional[str] = None) -> None:
        if not isinstance(client, _SYNC + _ASYNC):
            raise ConfigurationError(
                "client must be a redis.Redis, redis.RedisCluster or their redis.asyncio "
                f"counterparts, got {client!r}")
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"prefix must be a str without braces (they would replace each key's own "
                f"hash tag and put every key on one Cluster slot), got {prefix!r}")
        if fallback not in FALLBACKS:
            raise ConfigurationError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        share = check_positive("fallback_share", fallback_share)
        if share > 1.0:
            raise ConfigurationError(f"fallback_share must be in (0, 1], got {fallback_share!r}")
        if not isinstance(server_time, bool):
            raise ConfigurationError(f"server_time must be a bool, got {server_time!r}")
        self.name = check_name(name, "redis_backend")
        self.timeout = check_positive("timeout", timeout)
        self.prefix, self.fallback, self.fallback_share = prefix, fallback, share
        self.lease = check_int("lease", lease, 0)
        self.lease_ttl = check_positive("lease_ttl", lease_ttl)
        self.server_time = server_time
        self.is_async = isinstance(client, _ASYNC)
        self.is_cluster = isinstance(client, (redis.RedisCluster, redis.asyncio.RedisCluster))
        self.calls: Any = self._calls(client)
        self.breaker = CircuitBreaker(f"{self.name}:redis", consecutive_failures=1,
                                      open_duration=check_positive("probe_interval",
                                                                   probe_interval))
        self._lock = threading.Lock()
        self._available = True
        self.last_error: Optional[str] = None
        self._counts = {"decisions": 0, "fallback_decisions": 0, "errors": 0, "leases": 0,
                        "round_trips": 0}
        self._remotes: "weakref.WeakSet[Remote]" = weakref.WeakSet()
        register(self)

    @property
    def available(self) -> bool:
        """False from a failed call until Redis answers again."""
        return self._available

    def stats(self) -> Dict[str, int]:
        """``decisions`` (every decision of its limiters), ``fallback_decisions`` (made
        without Redis), ``errors`` (failed Redis calls), ``leases`` (round trips that took
        more than the call's cost), ``round_trips``."""
        with self._lock:
            counts = dict(self._counts)
        counts["decisions"] += sum(r.leased_decisions for r in list(self._remotes))
        return counts

    def snapshot(self) -> Dict[str, Any]:
        return {"name": self.name, "available": self._available, "fallback": self.fallback,
                "lease": self.lease, "breaker": self.breaker.state,
                "last_error": self.last_error, **self.stats()}

    def bind(self, limiter: "KeyedLimiter") -> "Remote":
        """The decisions of ``limiter`` through this backend (KeyedLimiter calls it)."""
        from ._remote import Remote

        remote = Remote(self, limiter)
        self._remotes.add(remote)
        return remote

    def _calls(self, client: Any) -> Any:
        """How commands go: the backend's own connections for a plain client (its settings,
        bounded by ``timeout``, never retried), the caller's client for a cluster."""
        if self.is_cluster:
            retry = getattr(client, "retry", None)
            if retry is not None and retry.get_retries() > 0:
                logger().warning(
                    "gameguard: Redis backend %r: this cluster client retries failed calls "
                    "(%d times): a timed-out decision may be applied twice; build it with "
                    "retry=Retry(NoBackoff(), 0)", self.name, retry.get_retries())
        if not self.is_async:
            if self.is_cluster:
                return ClientCalls(client)
            return OwnConnections(client, self.timeout, Retry(NoBackoff(), 0))
        if self.is_cluster:
            return AsyncCalls(client, self.timeout)
        return OwnAsyncConnections(client, self.timeout, redis.asyncio.retry.Retry(NoBackoff(), 0))

    def close(self) -> None:
        """Release the backend's own connections (a cluster client stays the caller's)."""
        if not self.is_async:
            self.calls.close()

    async def aclose(self) -> None:
        """``close()`` for an asyncio client."""
        if self.is_async:
            await self.calls.aclose()

    # -- what the bound limiters report ----------------------------------------------------
    def _count(self, field: str, n: int = 1) -> None:
        with self._lock:
            self._counts[field] += n

    def _round_trip(self, decisions: int, leases: int, error: Optional[BaseException]) -> None:
        """Account one round trip: ``decisions`` answered by Redis (``leases`` of them took
        a lease) and its first error, if any. While Redis answers, the breaker is left alone
        (one failure opens it: successes before that change nothing); a failure opens it
        and starts an episode, a probe's success ends it."""
        healthy, why = True, None
        if error is not None:
            self.breaker.record_failure()
            healthy, why = False, describe(error, self.timeout)
        elif not self._available:
            self.breaker.record_success()
            healthy = self.breaker.state == "closed"  # a probe, not a late straggler
        with self._lock:
            counts = self._counts
            counts["decisions"] += decisions
            counts["leases"] += leases
            counts["round_trips"] += 1
            was, self._available = self._available, healthy
            if why is not None:
                counts["errors"] += 1
                self.last_error = why
        if healthy and not was:
            logger().warning("gameguard: Redis backend %r answers again; deciding in Redis",
                             self.name)
        elif why is not None and was:
            logger().warning("gameguard: Redis backend %r unavailable (%s); fallback=%r "
                             "decides until it answers", self.name, why, self.fallback)

    def _unavailable(self) -> BackendUnavailable:
        return BackendUnavailable(f"Redis backend {self.name!r} unavailable: "
                                  f"{self.last_error or 'circuit open'}")

    def __repr__(self) -> str:
        return (f"RedisBackend({type(self.calls).__name__}, prefix={self.prefix!r}, "
                f"fallback={self.fallback!r}, lease={self.lease!r}, name={self.name!r})")
