"""The hot-key cache's key fingerprint: seeded XXH64, equal keys together, floods spread."""
from __future__ import annotations

import enum
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

import gameguard as gg
from conftest import both_twins

SEED = 0x1234_5678_9ABC_DEF0
MERSENNE61 = (1 << 61) - 1  # hash(k) == hash(k + MERSENNE61) for every int k

keys = st.one_of(
    st.integers(), st.integers(-(1 << 64), 1 << 64), st.booleans(),
    st.floats(allow_nan=False), st.floats(-1e6, 1e6).map(float.__floor__).map(float),
    st.text(), st.binary(), st.none(),
    st.tuples(st.integers(), st.text(max_size=5)))


@settings(max_examples=500, deadline=None)
@given(key=keys, seed=st.integers(0, (1 << 64) - 1))
def test_twins_fingerprint_alike(key, seed):
    fast, pure = both_twins("sketch")
    assert fast.key_hash(key, seed) == pure.key_hash(key, seed)


class Level(enum.IntEnum):
    GOLD = 3


def test_keys_that_compare_equal_share_a_fingerprint(kernels):
    h = kernels("sketch").key_hash
    assert h(1, SEED) == h(True, SEED) == h(1.0, SEED)
    assert h(0, SEED) == h(-0.0, SEED) == h(False, SEED)
    assert h(3, SEED) == h(Level.GOLD, SEED)
    assert h(2 ** 70, SEED) == h(float(2 ** 70), SEED)  # beyond 64 bits: both through hash()
    assert h("abc", SEED) == h("".join(["a", "bc"]), SEED)


def test_the_seed_changes_every_fingerprint(kernels):
    h = kernels("sketch").key_hash
    for key in (0, 1, -1, "auction:4711", b"\x00", (1, 2)):
        assert h(key, SEED) != h(key, SEED ^ 1)


def test_a_hash_flood_of_integers_spreads_over_shards(twin):
    """Integers sharing one hash() value all went to one shard (and one set of sketch
    counters) when shards came from hash(); XXH64 of the value spreads them."""
    flood = [7 + m * MERSENNE61 for m in range(4000)]
    assert len({hash(k) for k in flood}) == 1
    cache = gg.HotKeyCache(maxsize=100_000, shards=64, seed=SEED)
    per_shard = Counter(cache._core.shard_of(k) for k in flood)
    assert len(per_shard) == cache._core.nshards
    assert max(per_shard.values()) < 3 * len(flood) / cache._core.nshards


def test_equal_keys_are_one_cache_entry(twin):
    cache = gg.HotKeyCache(maxsize=1000, ttl=60.0, clock=gg.ManualClock())
    cache.set(1, "one")
    assert cache.get(1.0) == "one" and cache.get(True) == "one"
    cache.delete(1.0)
    assert 1 not in cache and cache.get(1) is None
    cache.set(Level.GOLD, "gold")
    assert cache.get(3) == "gold"
