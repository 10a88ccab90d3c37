"""KeyedLimiter(backend=RedisBackend(...)) against a real redis-server: the same decisions as
in-process, key identity, the time rule, expiry, sync/async, pipelining, the Cluster."""
from __future__ import annotations

import asyncio
import struct
import itertools
from typing import Any, List

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry
from hypothesis import given, settings, strategies as st

import gameguard as gg
from gameguard import _impl
from gameguard.errors import ConfigurationError, RateLimitExceeded
from gameguard.redis import RedisBackend, key_text
from redis_servers import RedisServer

_run = itertools.count()



def level(r: redis.Redis, key: bytes) -> float:
    """A key's tokens (token kind) as Redis holds them: two little-endian doubles, a and t."""
    raw = r.get(key)
    assert isinstance(raw, bytes) and len(raw) == 16
    return float(struct.unpack("<dd", raw)[0])

def prefix() -> str:
    """A fresh key prefix per use: tests share one server and never see each other's keys."""
    return f"t{next(_run)}:"


def remote(server: RedisServer, rate: float, capacity: Any = None, *, kind: str = "token",
           clock: Any = None, **backend: Any) -> gg.KeyedLimiter:
    client = redis.Redis(host="127.0.0.1", port=server.port)
    b = RedisBackend(client, prefix=backend.pop("prefix", prefix()), **backend)
    return gg.KeyedLimiter(rate, capacity, kind=kind, clock=clock, backend=b, name="lim")


ops = st.lists(st.tuples(st.floats(0, 2.0), st.integers(0, 3), st.sampled_from([1, 1, 2, 0.5])),
               min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["token", "leaky"]), rate=st.floats(0.1, 200),
       cap=st.one_of(st.none(), st.floats(2.0, 20.0)), start=st.floats(0, 1e6), steps=ops)
def test_same_decisions_as_in_process(impl: str, redis_server: RedisServer, kind: str,
                                      rate: float, cap: Any, start: float,
                                      steps: List[Any]) -> None:
    """The in-process limiter on each twin, and Redis given the same ManualClock readings."""
    clock = gg.ManualClock(start)
    with _impl.use(impl):
        local = gg.KeyedLimiter(rate, cap, kind=kind, clock=clock)
    shared = remote(redis_server, rate, cap, kind=kind, clock=clock, server_time=False)
    for dt, k, cost in steps:
        cost = min(cost, local.capacity)
        clock.advance(dt)
        key = f"p{k}"
        assert shared.try_acquire(key, cost) == local.try_acquire(key, cost), (dt, key, cost)
    assert shared.backend.stats()["fallback_decisions"] == 0


def test_capacity_default_and_key_identity(redis_server: RedisServer) -> None:
    lim = remote(redis_server, 3)  # capacity None: one second of budget, max(rate, 1)
    assert [lim.try_acquire(1) for _ in range(4)] == [True, True, True, False]
    assert not lim.try_acquire(1.0) and not lim.try_acquire(True)  # equal keys: one key
    assert lim.try_acquire("1")  # a str is another key
    assert lim.try_acquire((1, "a")) and lim.try_acquire(b"1") and lim.try_acquire("#1")
    assert {key_text(k) for k in (1, 1.0, True)} == {"#1"}
    assert len({key_text(k) for k in ("1", "#1", b"1", 1, 0.5, (1, "a"))}) == 6


def test_state_lives_in_one_hash_tagged_key_that_expires_when_full(
        redis_server: RedisServer) -> None:
    p = prefix()
    lim = remote(redis_server, 10, 5, prefix=p)
    assert lim.try_acquire("alice", 5)
    r = redis.Redis(port=redis_server.port)
    (key,) = r.keys(f"{p}*")
    assert key == f"{p}lim:{{alice}}".encode()
    assert level(r, key) == 0.0
    # empty: full again in 0.5 s, so it lives 0.5 s plus the 1 s margin, and no longer
    assert 1000 < r.pttl(key) <= 1500


def test_an_older_clock_reading_never_refills(redis_server: RedisServer) -> None:
    now = [100.0]
    lim = remote(redis_server, 1, 2, clock=lambda: now[0], server_time=False)
    assert lim.try_acquire("k", 2)
    now[0] = 50.0  # a delayed or skewed client: its reading is older than the stored one
    assert not lim.try_acquire("k")
    now[0] = 100.5  # half a second after the stored time: half a token, still none
    assert not lim.try_acquire("k")
    now[0] = 101.0
    assert lim.try_acquire("k")


def test_server_time_refills_by_redis_clock(redis_server: RedisServer) -> None:
    clock = gg.ManualClock(0.0)  # frozen: only Redis's TIME can refill the bucket
    lim = remote(redis_server, 50, 1, clock=clock)
    assert lim.try_acquire("k") and not lim.try_acquire("k")
    for _ in range(200):  # bounded: 50/s refills one token in 20 ms of Redis time
        if lim.try_acquire("k"):
            break
        asyncio.run(asyncio.sleep(0.005))
    else:
        pytest.fail("Redis's TIME never refilled the bucket")


def test_script_flush_reloads_and_stays_correct(redis_server: RedisServer) -> None:
    clock = gg.ManualClock(0.0)
    lim = remote(redis_server, 1, 3, clock=clock, server_time=False)
    ref = gg.KeyedLimiter(1, 3, clock=clock)
    r = redis.Redis(port=redis_server.port)
    for i in range(12):
        if i % 3 == 0:
            r.script_flush()
        clock.advance(0.4)
        assert lim.try_acquire("k") == ref.try_acquire("k")
        r.script_flush()
        assert lim.try_acquire_many(["k", "j"]) == ref.try_acquire_many(["k", "j"])
    assert lim.backend.stats()["errors"] == 0


def test_many_is_one_round_trip_and_equals_one_by_one(redis_server: RedisServer) -> None:
    clock = gg.ManualClock(5.0)
    lim = remote(redis_server, 2, 2, clock=clock, server_time=False)
    ref = gg.KeyedLimiter(2, 2, clock=clock)
    keys = ["a", "b", "a", "a", "c", "b", "b"]
    assert lim.try_acquire_many(keys) == ref.try_acquire_many(keys)
    assert lim.backend.stats()["round_trips"] == 1
    assert lim.try_acquire_many([]) == []


def test_async_client(redis_server: RedisServer) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis(port=redis_server.port)
        clock = gg.ManualClock(0.0)
        lim = gg.KeyedLimiter(1, 2, clock=clock, name="lim", backend=RedisBackend(
            client, prefix=prefix(), server_time=False))
        assert [await lim.try_acquire_async("k") for _ in range(3)] == [True, True, False]
        assert await lim.try_acquire_many_async(["k", "x", "x", "x"]) == \
            [False, True, True, False]
        with pytest.raises(TypeError, match="try_acquire_async"):
            lim.try_acquire("k")
        with pytest.raises(TypeError, match="try_acquire_async"):
            lim.try_acquire_many(["k"])

        @lim.limit(key=lambda player: player)
        async def cast(player: str) -> str:
            return "cast"

        clock.advance(1.0)
        assert await cast("k") == "cast"
        with pytest.raises(RateLimitExceeded) as info:
            await cast("k")
        assert info.value.key == "k" and info.value.retry_after == 1.0  # Redis's answer
        await lim.backend.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("impl", ["fast", "pure"])
def test_decisions_in_redis_count_in_the_limiters_counters(
        impl: str, redis_server: RedisServer) -> None:
    """What the exporters read (``gameguard_calls_total``) counts the decisions Redis, a
    lease or the fallback made, as the in-process table counts its own."""
    clock = gg.ManualClock(0.0)
    with _impl.use(impl):
        lim = remote(redis_server, 1, 10, clock=clock, server_time=False)
        leased = remote(redis_server, 1, 10, clock=clock, server_time=False, lease=4)
    admitted = [lim.try_acquire("k") for _ in range(15)] + lim.try_acquire_many(["x"] * 12)
    assert admitted.count(True) == 20
    assert lim.snapshot()["counters"]["successful"] == 20
    assert lim.snapshot()["counters"]["rejected"] == 7
    assert sum(leased.try_acquire("k") for _ in range(13)) == 10
    assert (leased.snapshot()["counters"]["successful"],
            leased.snapshot()["counters"]["rejected"]) == (10, 3)

    async def main() -> None:
        client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
        with _impl.use(impl):
            a = gg.KeyedLimiter(1, 10, clock=clock, name="lim", backend=RedisBackend(
                client, prefix=prefix(), server_time=False))
        got = [await a.try_acquire_async("k") for _ in range(20)]
        got += await a.try_acquire_many_async(["k", "y"])
        assert a.snapshot()["counters"]["successful"] == got.count(True) == 11
        assert a.snapshot()["counters"]["rejected"] == got.count(False) == 11
        await a.backend.aclose()

    asyncio.run(main())


def test_sync_client_refuses_the_async_method(redis_server: RedisServer) -> None:
    lim = remote(redis_server, 1)
    with pytest.raises(TypeError, match="sync Redis client: use try_acquire"):
        asyncio.run(lim.try_acquire_async("k"))
    with pytest.raises(TypeError):
        asyncio.run(lim.try_acquire_many_async(["k"]))


def test_decorator_bind_configure_and_bad_cost(redis_server: RedisServer) -> None:
    clock = gg.ManualClock(0.0)
    lim = remote(redis_server, 1, 2, clock=clock, server_time=False)

    @lim.limit(key=lambda player: player)
    def cast(player: str) -> str:
        return "cast"

    assert cast("a") == cast("a") == "cast"
    clock.advance(0.25)
    with pytest.raises(RateLimitExceeded) as info:
        cast("a")
    assert info.value.retry_after == 0.75 and info.value.key == "a"
    with pytest.raises(ConfigurationError, match="bind"):
        lim.bind("a")
    with pytest.raises(ConfigurationError, match="cost"):
        lim.try_acquire("a", 3)
    lim.configure(rate=10, capacity=4)  # from the next call: Redis refills at 10/s up to 4
    clock.advance(1.0)
    assert [lim.try_acquire("a") for _ in range(5)] == [True] * 4 + [False]


def test_backend_validation(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    bad = [dict(fallback="maybe"), dict(fallback_share=0), dict(fallback_share=1.5),
           dict(timeout=0), dict(lease=-1), dict(lease=2.5), dict(server_time="yes"),
           dict(prefix=3), dict(prefix="{game}:"), dict(lease_ttl=0), dict(probe_interval=-1)]
    for kwargs in bad:
        name = next(iter(kwargs))
        with pytest.raises(ConfigurationError, match=name):
            RedisBackend(client, **kwargs)
    with pytest.raises(ConfigurationError, match="client"):
        RedisBackend("redis://127.0.0.1")
    with pytest.raises(ConfigurationError, match="backend"):
        gg.KeyedLimiter(1, backend=object())
    with pytest.raises(ConfigurationError, match="name without braces"):
        gg.KeyedLimiter(1, name="casts{1}", backend=RedisBackend(client))


def test_registered_and_reports(redis_server: RedisServer) -> None:
    b = RedisBackend(redis.Redis(port=redis_server.port), name="shared-casts")
    assert b in gg.registry() and b.available and b.name == "shared-casts"
    assert set(b.stats()) >= {"decisions", "fallback_decisions", "errors", "leases"}
    assert b.snapshot()["breaker"] == "closed"
    b.close()


def test_cluster_hash_tags_and_redirects(redis_cluster: List[RedisServer],
                                         caplog: pytest.LogCaptureFixture) -> None:
    client = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    RedisBackend(client)  # redis-py's default: retries, which could replay a timed-out call
    assert "may be applied twice" in caplog.text
    caplog.clear()
    client = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0].port,
                                retry=Retry(NoBackoff(), 0))
    clock = gg.ManualClock(0.0)
    lim = gg.KeyedLimiter(1, 2, clock=clock, name="lim", backend=RedisBackend(
        client, prefix="c:", server_time=False))
    ref = gg.KeyedLimiter(1, 2, clock=clock)
    keys = [f"player{i}" for i in range(40)]
    for _ in range(3):
        assert [lim.try_acquire(k) for k in keys] == [ref.try_acquire(k) for k in keys]
        assert lim.try_acquire_many(keys) == ref.try_acquire_many(keys)
        clock.advance(0.7)
    # each key's state sits on the node serving its hash tag's slot, on every node some
    nodes = [redis.Redis(port=n.port) for n in redis_cluster]
    held = [set(n.keys("c:*")) for n in nodes]
    assert all(held) and sum(len(h) for h in held) == len(keys)
    for node, keys_here in zip(nodes, held):
        for k in keys_here:
            tag = k.decode().split("{")[1].rstrip("}")
            assert node.cluster("keyslot", tag) == node.cluster("keyslot", k.decode())
    # a client that only knows one node still reaches every slot (MOVED redirects)
    one = redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode("127.0.0.1",
                                                                    redis_cluster[2].port)])
    lim2 = gg.KeyedLimiter(1, 2, clock=clock, name="lim", backend=RedisBackend(
        one, prefix="c:", server_time=False))
    assert [lim2.try_acquire(k) for k in keys] == [ref.try_acquire(k) for k in keys]
    assert lim.backend.stats()["errors"] == lim2.backend.stats()["errors"] == 0
    assert "may be applied twice" in caplog.text  # `one` kept redis-py's default retries


def test_async_cluster(redis_cluster: List[RedisServer]) -> None:
    async def main() -> None:
        client = redis.asyncio.RedisCluster(host="127.0.0.1", port=redis_cluster[1].port)
        lim = gg.KeyedLimiter(1, 1, name="alim", backend=RedisBackend(client, prefix=prefix()))
        keys = [f"k{i}" for i in range(10)]
        assert await lim.try_acquire_many_async(keys) == [True] * 10
        assert [await lim.try_acquire_async(k) for k in keys] == [False] * 10
        await client.aclose()

    asyncio.run(main())


def test_async_connections_stay_bounded(redis_server: RedisServer) -> None:
    """300 coroutines deciding at once share at most 64 connections, and decide exactly."""
    async def main() -> None:
        client = redis.asyncio.Redis(port=redis_server.port, client_name="crowd")
        backend = RedisBackend(client, prefix=prefix(), timeout=5.0,
                               fallback="raise")  # Redis decides every one
        lim = gg.KeyedLimiter(1e-6, 100, name="crowd", backend=backend)
        results = await asyncio.gather(*(lim.try_acquire_async("hot") for _ in range(300)))
        assert sum(results) == 100
        clients = redis.Redis(port=redis_server.port).client_list()
        assert 1 <= len([c for c in clients if c["name"] == "crowd"]) <= 64  # its settings
        await backend.aclose()

    asyncio.run(main())
