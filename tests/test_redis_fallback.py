"""When Redis is unreachable, slow, locked or stopped: the fallback decides, says why, once,
and Redis decides again as soon as it answers. Real servers, each with its own settings."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import struct
import threading
import time
from typing import Any, Callable, Dict, List

import pytest
import redis
import redis.asyncio

import gameguard as gg
from gameguard.errors import BackendUnavailable
from gameguard.redis import RedisBackend
from redis_servers import RedisServer, free_port

Factory = Callable[..., RedisServer]



def level(r: redis.Redis, key: bytes) -> float:
    """A key's tokens (token kind) as Redis holds them: two little-endian doubles, a and t."""
    raw = r.get(key)
    assert isinstance(raw, bytes) and len(raw) == 16
    return float(struct.unpack("<dd", raw)[0])

def limiter(client: Any, rate: float = 10, capacity: float = 4, *, clock: Any = None,
            **backend: Any) -> gg.KeyedLimiter:
    backend.setdefault("prefix", f"f{time.monotonic_ns()}:")
    return gg.KeyedLimiter(rate, capacity, clock=clock, name="casts",
                           backend=RedisBackend(client, **backend))


def unreachable() -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=free_port())  # nothing listens there


def episodes(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]


def test_unreachable_falls_back_locally_at_the_share(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gameguard")
    clock = gg.ManualClock(0.0)
    lim = limiter(unreachable(), 10, 4, clock=clock, fallback_share=0.5)  # no network yet
    assert lim.backend.available
    assert [lim.try_acquire("p") for _ in range(3)] == [True, True, False]  # 0.5 × 4
    assert lim._remote.last_wait() == 0.2  # the local limiter refills at 0.5 × 10/s
    clock.advance(0.1)  # 0.5 × 10/s: half a token
    assert not lim.try_acquire("p")
    clock.advance(0.1)
    assert lim.try_acquire("p") and lim.try_acquire_many(["q", "q", "q"]) == [True, True, False]
    b = lim.backend
    assert not b.available and b.stats()["fallback_decisions"] == 8 == b.stats()["decisions"]
    assert b.stats()["errors"] >= 1 and "cannot reach Redis" in str(b.last_error)
    assert len(episodes(caplog)) == 1, "an episode is logged once, however many calls"


@pytest.mark.parametrize("mode,admitted", [("allow", True), ("deny", False)])
def test_allow_and_deny(mode: str, admitted: bool) -> None:
    lim = limiter(unreachable(), fallback=mode)
    assert [lim.try_acquire("p") for _ in range(6)] == [admitted] * 6


def test_raise_names_what_failed() -> None:
    lim = limiter(unreachable(), fallback="raise")
    with pytest.raises(BackendUnavailable, match="cannot reach Redis"):
        lim.try_acquire("p")
    with pytest.raises(BackendUnavailable, match="cannot reach Redis"):  # breaker open now
        lim.try_acquire_many(["p"])


@pytest.mark.parametrize("password,match", [("wrong", "authentication failed"),
                                            (None, "authentication failed")])
def test_wrong_or_missing_password(redis_factory: Factory, password: Any, match: str) -> None:
    server = redis_factory("requirepass s3cret")
    lim = limiter(redis.Redis(port=server.port, password=password), fallback="raise")
    with pytest.raises(BackendUnavailable, match=match):
        lim.try_acquire("p")
    ok = limiter(redis.Redis(port=server.port, password="s3cret"), fallback="raise")
    assert ok.try_acquire("p")


def test_redis_without_scripting(redis_factory: Factory) -> None:
    server = redis_factory('rename-command EVALSHA ""', 'rename-command EVAL ""')
    lim = limiter(redis.Redis(port=server.port), fallback="raise")
    with pytest.raises(BackendUnavailable, match="scripting unavailable"):
        lim.try_acquire("p")


def test_acl_user_without_scripting(redis_factory: Factory) -> None:
    server = redis_factory("user game on >pw ~* +@all -@scripting")
    lim = limiter(redis.Redis(port=server.port, username="game", password="pw"),
                  fallback="raise")
    with pytest.raises(BackendUnavailable, match="permission denied"):
        lim.try_acquire("p")


def test_slow_redis_times_out_and_is_never_replayed(redis_factory: Factory,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A paused server: the call gives up after ``timeout``; once it resumes, the timed-out
    EVALSHA (already sent) is applied once, and never sent a second time."""
    caplog.set_level(logging.WARNING, "gameguard")
    server = redis_factory()
    assert server.proc is not None
    lim = limiter(redis.Redis(port=server.port), 1, 5, clock=lambda: 1000.0,
                  timeout=0.1, probe_interval=0.2, fallback="deny", server_time=False)
    assert lim.try_acquire("p", 2)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert not lim.try_acquire("p")  # denied by the fallback, not stuck
        assert time.monotonic() - started < 0.1 + 0.5  # the timeout, plus a loaded machine
        assert "no answer within timeout=0.1" in str(lim.backend.last_error)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    r = redis.Redis(port=server.port)
    (key,) = r.keys(f"{lim.backend.prefix}*")
    assert level(r, key) == 5 - 2 - 1, "applied once, never replayed"
    deadline = time.monotonic() + 3
    while not lim.try_acquire("p"):  # back to Redis within a probe interval of answering
        assert time.monotonic() < deadline, "Redis never decided again"
        time.sleep(0.05)
    assert lim.backend.available and level(r, key) == 1
    assert [m for m in caplog.messages if "answers again" in m]


def test_stopped_then_restarted_keeps_the_fleet_bound(redis_factory: Factory) -> None:
    """Two 'processes' (backends, each with its own local fallback at 1/2 the rate) share a
    key while Redis is stopped and restarted. No exception reaches the caller, no call
    waits past the timeout, and the fleet stays within its bound over the whole run: each
    switch may hand out one capacity (the fallback buckets start full; the restarted
    Redis, which kept no state, starts the key full)."""
    server = redis_factory()
    rate, capacity, P = 100.0, 20.0, 2
    lims = [limiter(redis.Redis(port=server.port), rate, capacity, prefix="shared:",
                    fallback_share=1 / P, timeout=0.05, probe_interval=0.1) for _ in range(P)]
    admitted = [0] * P
    worst = [0.0] * P
    errors: List[BaseException] = []
    stop_at = time.monotonic() + 2.4

    def player(i: int) -> None:
        try:
            while time.monotonic() < stop_at:
                t = time.monotonic()
                admitted[i] += lims[i].try_acquire("hot")
                worst[i] = max(worst[i], time.monotonic() - t)
        except BaseException as exc:  # noqa: B902 - any escape is the failure under test
            errors.append(exc)

    threads = [threading.Thread(target=player, args=(i,)) for i in range(P)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.7)
    server.stop()
    time.sleep(0.8)
    down_stats: List[Dict[str, int]] = [lim.backend.stats() for lim in lims]
    server.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - started
    assert not errors
    assert max(worst) < 0.05 + 0.5, "a call waited past the breaker timeout (+ scheduling)"
    assert all(s["fallback_decisions"] > 0 for s in down_stats)
    assert all(lim.backend.available for lim in lims), "back on Redis after the restart"
    after = [lim.backend.stats()["round_trips"] - s["round_trips"]
             for lim, s in zip(lims, down_stats)]
    assert all(n > 10 for n in after)
    assert sum(admitted) <= 3 * capacity + rate * elapsed
    assert sum(admitted) >= rate * elapsed * 0.5  # and the budget was used, not refused


def test_async_cancellation_mid_call(redis_factory: Factory) -> None:
    """A caller cancelled while its EVALSHA is in flight gets CancelledError; it is not a
    Redis failure, and the next decisions read their own replies, not the stale one."""
    server = redis_factory()
    assert server.proc is not None
    pid = server.proc.pid

    async def main() -> None:
        backend = RedisBackend(redis.asyncio.Redis(port=server.port), prefix="cancel:",
                               timeout=2.0, server_time=False, fallback="raise")
        lim = gg.KeyedLimiter(1e-6, 3, clock=lambda: 5.0, name="casts", backend=backend)
        assert await lim.try_acquire_async("p")
        os.kill(pid, signal.SIGSTOP)
        try:
            task = asyncio.ensure_future(lim.try_acquire_async("p"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            os.kill(pid, signal.SIGCONT)
        assert backend.available and backend.stats()["errors"] == 0
        # the cancelled call reached Redis and was applied once: one unit is left
        assert [await lim.try_acquire_async("p") for _ in range(2)] == [True, False]
        await backend.aclose()

    asyncio.run(main())
