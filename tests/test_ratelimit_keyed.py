"""KeyedLimiter on both twins: per-key exactness, key identity, seeded hashing, eviction,
bounded memory under a stream of distinct keys, threads, decorators, bad input."""
from __future__ import annotations

import asyncio
import enum
import importlib
import struct
import sys
import threading

import pytest
import xxhash

from gameguard import ConfigurationError, ManualClock, RateLimitExceeded, _impl
from gameguard.ratelimit import PROCESS_SEED, KeyedLimiter, TokenBucket


def test_per_key_buckets(twin: str) -> None:
    clock = ManualClock()
    k = KeyedLimiter(2, clock=clock)  # capacity max(2, 1) = 2
    assert k.capacity == 2.0
    assert [k.try_acquire("alice") for _ in range(3)] == [True, True, False]
    assert [k.try_acquire("bob") for _ in range(3)] == [True, True, False]
    assert len(k) == 2 and "alice" in k and "carol" not in k
    assert k.retry_after("alice") == pytest.approx(0.5)
    assert k.retry_after("carol") == 0.0
    clock.advance(0.5)
    assert k.tokens("alice") == pytest.approx(1.0)
    assert k.try_acquire("alice") and not k.try_acquire("alice")


def test_leaky_kind(twin: str) -> None:
    clock = ManualClock()
    k = KeyedLimiter(10, 1, kind="leaky", clock=clock)
    assert k.try_acquire(7) and not k.try_acquire(7)
    assert k.retry_after(7) == pytest.approx(0.1)
    clock.advance(0.1)
    assert k.try_acquire(7)
    assert k.tokens(8) == 1.0 and k.tokens(7) == pytest.approx(0.0)


def test_matches_a_token_bucket_per_key(twin: str) -> None:
    clock = ManualClock()
    k = KeyedLimiter(3, 5, clock=clock, max_keys=8)
    refs = {p: TokenBucket(3, 5, clock=clock) for p in range(6)}
    for step in range(300):
        clock.advance((step % 7) * 0.03)
        p = (step * 5) % 6
        assert k.try_acquire(p, 0.5 + (step % 3)) == refs[p].try_acquire(0.5 + (step % 3))


class Color(enum.IntEnum):
    RED = 1


def test_key_identity(twin: str) -> None:
    k = KeyedLimiter(1, 1, clock=ManualClock())
    assert k.try_acquire(1)
    assert not k.try_acquire(True) and not k.try_acquire(Color.RED)  # == 1: same key
    assert not k.try_acquire(1.0)  # == 1: the same key, as in a dict and in HotKeyCache
    assert k.try_acquire("1") and k.try_acquire(b"1") and k.try_acquire(1.5)  # other keys
    assert k.try_acquire((1, "a")) and not k.try_acquire((True, "a"))  # a tuple by value
    assert k.try_acquire(2 ** 80) and not k.try_acquire(2 ** 80)
    assert k.try_acquire("\ud800") and not k.try_acquire("\ud800")  # lone surrogate
    assert k.try_acquire(None) and not k.try_acquire(None)
    for bad in ([1], {"a": 1}, bytearray(b"x"), {1}):
        with pytest.raises(TypeError):
            k.try_acquire(bad)


def test_fingerprints_are_seeded_xxh64(impl: str) -> None:
    mod = importlib.import_module(f"gameguard._{impl}.keyed")
    seed = 0x1234_5678_9ABC_DEF0
    t = mod.KeyedTable(mod.TOKEN, 1.0, 1.0, 10, float("inf"), seed)
    x = xxhash.xxh64_intdigest
    assert t.fingerprint(-5) == x(struct.pack("<q", -5), seed)
    assert t.fingerprint("héllo") == x("héllo".encode(), seed ^ 0x9E3779B97F4A7C15)
    assert t.fingerprint(b"abc" * 20) == x(b"abc" * 20, seed ^ 0xC2B2AE3D27D4EB4F)
    sketch = importlib.import_module(f"gameguard._{impl}.sketch")
    assert t.fingerprint((1, 2)) == sketch.key_hash((1, 2), seed)  # the cache's rule
    other = mod.KeyedTable(mod.TOKEN, 1.0, 1.0, 10, float("inf"), seed + 1)
    assert other.fingerprint(-5) != t.fingerprint(-5)
    assert 0 <= PROCESS_SEED < 2 ** 64


def test_hash_flood_does_not_pile_into_one_chain(impl: str) -> None:
    """Keys built to collide under Python's hash() spread out under the seeded fingerprint."""
    mod = importlib.import_module(f"gameguard._{impl}.keyed")
    modulus = sys.hash_info.modulus  # hash(n) == hash(n + j * modulus)
    keys = [7 + j * modulus for j in range(1, 3001)]
    assert len({hash(key) for key in keys}) == 1
    t = mod.KeyedTable(mod.TOKEN, 1.0, 1.0, 4000, float("inf"), 99)
    for key in keys:
        t.acquire_at(0.0, key, 1.0)
    assert len(t) == 3000
    slots = sorted(s for s, *_ in t.dump())
    longest = run = 1
    for a, b in zip(slots, slots[1:]):
        run = run + 1 if b == a + 1 else 1
        longest = max(longest, run)
    assert longest < 100  # a chain keyed on hash() would be 3000 long


def test_idle_keys_leave_and_memory_is_bounded(twin: str) -> None:
    clock = ManualClock()
    k = KeyedLimiter(1, 1, clock=clock, max_keys=100, idle_ttl=5.0)
    for i in range(100):
        k.try_acquire(i)
    clock.advance(5.0)
    for i in range(1000, 1300):  # each new key cleans two slots: idle keys go
        k.try_acquire(i)
        clock.advance(0.001)
    assert len(k) <= 100
    assert not any(i in k for i in range(100))
    snap = k.snapshot()
    assert snap["evicted"]["idle"] + snap["evicted"]["full"] >= 100
    assert k.nbytes <= k.max_bytes == 24 * 125


def test_full_table_drops_refilled_keys_first_then_stalest(twin: str) -> None:
    clock = ManualClock()
    k = KeyedLimiter(1, 2, clock=clock, max_keys=16)
    for i in range(16):  # keys 0..7 take one token, 8..15 take two
        k.try_acquire(i, 1 if i < 8 else 2)
        clock.advance(0.01)
    clock.advance(1.0)  # keys 0..7 refilled (lossless to drop); 8..15 hold ~1 token
    k.try_acquire("new")
    assert len(k) <= 16 and "new" in k
    assert all(i in k for i in range(8, 16))  # not full: kept
    assert k.snapshot()["evicted"]["stale"] == 0
    # no key refilled now: the stalest go first
    for i in range(100, 116):
        k.try_acquire(i, 2)
        clock.advance(0.01)
    assert len(k) <= 16
    assert k.snapshot()["evicted"]["stale"] > 0
    assert 115 in k and 114 in k  # the freshest stay


def test_evicting_a_full_key_loses_nothing(twin: str) -> None:
    clock = ManualClock()
    k = KeyedLimiter(10, 3, clock=clock, max_keys=4)
    assert k.try_acquire("a", 3)
    clock.advance(1.0)  # "a" refilled
    for key in "bcdefgh":
        k.try_acquire(key)
    assert "a" not in k
    assert k.try_acquire("a", 3)  # same answer as if it had been kept


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.slow
def test_stream_of_distinct_keys_keeps_memory_bounded(impl: str) -> None:
    """10**7 distinct keys through max_keys=10**5 (compiled twin; the pure twin streams
    2*10**5 keys through max_keys=10**4, ~100x slower per call). Active keys stay exact."""
    n, max_keys = (10 ** 7, 10 ** 5) if impl == "fast" else (2 * 10 ** 5, 10 ** 4)
    with _impl.use(impl):
        clock = ManualClock()
        k = KeyedLimiter(1, 3, clock=clock, max_keys=max_keys)
        refs = {p: TokenBucket(1, 3, clock=clock) for p in range(-20, 0)}
        acquire = k.try_acquire
        rss0 = _rss() if sys.platform == "linux" else 0
        step = n // 200
        for start in range(0, n, step):
            for key in range(start, start + step):
                acquire(key)
            clock.advance(0.01)
            for p, ref in refs.items():  # the active players: same answers as their own bucket
                assert acquire(p) == ref.try_acquire()
            assert len(k) <= max_keys
        assert k.nbytes == k.max_bytes == 24 * ((max_keys * 5 + 3) // 4)
        assert k.max_bytes / max_keys <= 30.0 + 1e-9  # bytes per key of a full table
        if sys.platform == "linux":
            assert _rss() - rss0 < k.max_bytes + 32 * 2 ** 20
        snap = k.snapshot()
        assert snap["evicted"]["stale"] > 0 and snap["keys"] <= max_keys


def test_threads_never_over_admit(twin: str) -> None:
    clock = ManualClock()
    k = KeyedLimiter(1, 50, clock=clock, max_keys=64)
    got = [0] * 8
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for j in range(300):
            got[i] += k.try_acquire(j % 10)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(got) == 500


def test_limit_decorator(twin: str) -> None:
    clock = ManualClock()
    k = KeyedLimiter(1, 2, clock=clock, name="per-player")

    @k.limit(key=lambda player_id, skill: player_id)
    def cast(player_id: int, skill: str) -> str:
        return f"{player_id}:{skill}"

    assert cast(7, "q") == "7:q" and cast(7, "w") == "7:w"
    with pytest.raises(RateLimitExceeded) as ei:
        cast(7, "e")
    assert ei.value.key == 7 and ei.value.name == "per-player"
    assert ei.value.retry_after == pytest.approx(1.0)
    assert cast(8, "q") == "8:q"
    assert cast.__wrapped__.__name__ == "cast"

    @k(key=lambda pid: pid, fallback=lambda pid: "slow down")
    async def move(pid: int) -> str:
        return "moved"

    async def main() -> None:
        assert await move(1) == "moved" and await move(1) == "moved"
        assert await move(1) == "slow down"
        async with k.bind(2):
            pass
        async with k.bind(2):
            pass
        with pytest.raises(RateLimitExceeded) as e2:
            async with k.bind(2):
                pass
        assert e2.value.key == 2
    asyncio.run(main())
    with k.bind(3):
        pass
    with pytest.raises(TypeError, match="key"):
        @k
        def bare() -> None: ...
    with pytest.raises(TypeError, match="bind"):
        with k:
            pass
    with pytest.raises(TypeError):
        cast([1], "q")


@pytest.mark.parametrize("kwargs, param", [
    ({"rate": 0}, "rate"), ({"rate": float("nan")}, "rate"), ({"rate": 1, "capacity": -1},
                                                              "capacity"),
    ({"rate": 1, "kind": "fixed"}, "kind"), ({"rate": 1, "kind": None}, "kind"),
    ({"rate": 1, "kind": ["token"]}, "kind"), ({"rate": 1, "max_keys": 0}, "max_keys"),
    ({"rate": 1, "max_keys": 1.5}, "max_keys"), ({"rate": 1, "max_keys": True}, "max_keys"),
    ({"rate": 1, "idle_ttl": 0}, "idle_ttl"), ({"rate": 1, "idle_ttl": float("nan")}, "idle_ttl"),
    ({"rate": 1, "seed": -1}, "seed"),
])
def test_bad_config(twin: str, kwargs: dict, param: str) -> None:
    with pytest.raises(ConfigurationError, match=param):
        KeyedLimiter(**kwargs)


def test_bad_cost_and_key_function(twin: str) -> None:
    k = KeyedLimiter(1, 2, clock=ManualClock())
    for bad in (0, -1, float("nan"), 3):
        with pytest.raises(ConfigurationError, match="cost"):
            k.try_acquire("a", bad)
        with pytest.raises(ConfigurationError, match="cost"):
            k.retry_after("a", bad)
        with pytest.raises(ConfigurationError, match="cost"):
            k.limit(key=lambda: 1, cost=bad)
    with pytest.raises(ConfigurationError, match="key"):
        k.limit(key="player_id")  # type: ignore[arg-type]
