"""Kernel twins of the hot-key cache: the sketches (``sketch``) and the entry store with
TinyLFU admission (``cachetable``). Each test runs on both twins; hypothesis drives the same
operations through both and demands identical answers and state."""
from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import both_twins


def zipf_stream(n_keys: int, s: float, length: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    weights = [1.0 / (i + 1) ** s for i in range(n_keys)]
    return rnd.choices(range(n_keys), weights=weights, k=length)


# -- FrequencySketch ------------------------------------------------------------------------
def test_frequency_counts_and_saturates(kernels):
    sk = kernels("sketch")
    fs = sk.FrequencySketch(64)
    h = sk.key_hash("a", 1)
    assert fs.frequency(h) == 0
    for i in range(1, 15):
        fs.increment(h)
        assert fs.frequency(h) >= i  # Count-Min never undercounts
    for _ in range(30):
        fs.increment(h)
    assert fs.frequency(h) == 15  # 4-bit counters


def test_frequency_halves_after_sample_size(kernels):
    sk = kernels("sketch")
    fs = sk.FrequencySketch(8)  # sample_size 80
    assert fs.sample_size == 80
    hot = sk.key_hash("hot", 3)
    for _ in range(12):
        fs.increment(hot)
    before = fs.frequency(hot)
    for i in range(200):
        fs.increment(sk.key_hash(i, 3))
        if fs.size < 10:
            break
    assert fs.size < fs.sample_size
    assert fs.frequency(hot) <= before // 2 + 1


def test_key_hash_is_seeded_and_needs_hashable_keys(kernels):
    sk = kernels("sketch")
    assert sk.key_hash(42, 1) != sk.key_hash(42, 2)
    assert sk.key_hash("x", 9) == sk.key_hash("x", 9)
    with pytest.raises(TypeError):
        sk.key_hash(["unhashable"], 1)


# -- HeavyHitters ---------------------------------------------------------------------------
def test_heavy_hitters_find_the_zipf_top_10(kernels):
    sk = kernels("sketch")
    hh = sk.HeavyHitters(64, 1024, 2.0, 5)
    stream = zipf_stream(20_000, 1.0, 100_000, seed=11)
    now = 0.0
    for k in stream:
        now += 1e-4
        hh.add(sk.key_hash(k, 77), k, now)
    true_top = [k for k, _ in Counter(stream).most_common(10)]
    reported = [k for k, _ in hh.top(20, now)]
    assert set(true_top) <= set(reported)


def test_heavy_hitter_rate_estimate(kernels):
    sk = kernels("sketch")
    hh = sk.HeavyHitters(16, 256, 1.0, 5)
    h = sk.key_hash("boss", 1)
    now = 0.0
    for _ in range(10_000):  # 500 reads/s for 20 s
        now += 0.002
        hh.add(h, "boss", now)
    rate = hh.rate(h, now)
    assert 0.7 * 500 <= rate <= 1.3 * 500
    assert hh.is_hot(h, now, 100.0) and not hh.is_hot(h, now, 5000.0)
    assert hh.top(1, now)[0][0] == "boss"
    # silence decays it: counts halve every half-life
    assert hh.rate(h, now + 10.0) < 1.0
    assert hh.rate(sk.key_hash("nobody", 1), now) == 0.0


_hh_ops = st.lists(st.tuples(st.integers(0, 40), st.floats(0.0, 0.7)), max_size=400)


@settings(max_examples=60, deadline=None)
@given(ops=_hh_ops, k=st.integers(1, 8), width=st.integers(2, 64), seed=st.integers(0, 2**64 - 1))
def test_sketch_twins_agree(ops, k, width, seed):
    fast, pure = both_twins("sketch")
    hf, hp = fast.HeavyHitters(k, width, 0.5, seed), pure.HeavyHitters(k, width, 0.5, seed)
    ff, fp = fast.FrequencySketch(16), pure.FrequencySketch(16)
    now = 0.0
    for key, dt in ops:
        now += dt
        h = pure.key_hash(key, seed)
        assert fast.key_hash(key, seed) == h
        ff.increment(h)
        fp.increment(h)
        assert ff.frequency(h) == fp.frequency(h)
        assert hf.add(h, key, now) == hp.add(h, key, now)
        assert hf.estimate(h) == hp.estimate(h)
        if key % 7 == 0:
            assert hf.top(5, now) == hp.top(5, now)
            assert hf.rate(h, now) == hp.rate(h, now)
            assert hf.is_hot(h, now, 3.0) == hp.is_hot(h, now, 3.0)
    assert ff.state() == fp.state()
    assert hf.state() == hp.state()


# -- CacheTable -----------------------------------------------------------------------------
def test_table_expiry_is_now_ge_expires_at(kernels):
    ct = kernels("cachetable")
    t = ct.CacheTable(10, 2, 1, lambda: 0.0)
    t.put("k", "v", 5.0, 4.0, 0.0)
    assert t.get_at("k", None, 4.999) == "v"
    assert t.get_at("k", "d", 5.0) == "d"
    assert t.peek("k", 5.0) is ct.MISS
    assert t.counters()[:2] == (1, 1)


def test_table_bounded_and_scan_resistant(kernels):
    ct = kernels("cachetable")
    t = ct.CacheTable(100, 4, 7, lambda: 0.0)
    hot = list(range(50))
    for _ in range(20):  # make the hot set frequent and resident
        for k in hot:
            if t.probe(k, 0.0) is ct.MISS:
                t.put(k, k, 1e9, 1e9, 0.0)
    for i, k in enumerate(range(1000, 11_000)):  # a scan of 10 000 new keys amid hot reads
        for key in (k, hot[i % 50]):
            if t.probe(key, 0.0) is ct.MISS:
                t.put(key, key, 1e9, 1e9, 0.0)
        assert len(t) <= 100
    assert sum(t.peek(k, 0.0) is not ct.MISS for k in hot) >= 45
    hits, misses, evictions, rejected, expirations = t.counters()
    assert evictions >= 9_900 and rejected >= 8_000


def test_table_refresh_claimed_once_for_hot_keys_only(kernels):
    ct = kernels("cachetable")
    t = ct.CacheTable(10, 1, 1, lambda: 0.0, hot_rate=10.0)
    t.put("hot", 1, 10.0, 8.0, 0.0)
    t.put("cold", 2, 10.0, 8.0, 0.0)
    now = 0.0
    for _ in range(800):
        now += 0.01
        assert t.probe("hot", now) == 1
    assert t.probe("hot", 8.0) is ct.REFRESH
    assert t.probe("hot", 8.01) == 1          # claimed already: others read the value
    assert t.probe("cold", 8.5) == 2          # cold: no refresh, expires normally
    assert t.probe("cold", 10.0) is ct.MISS
    t.end_refresh("hot", 8.0)                 # failed refresh: retry halfway to expiry
    assert t.probe("hot", 8.5) == 1
    assert t.probe("hot", 9.0) is ct.REFRESH


_table_ops = st.lists(st.tuples(
    st.sampled_from(["probe", "get", "put", "delete", "end_refresh", "expire", "contains"]),
    st.integers(0, 200), st.floats(0.0, 0.5), st.floats(0.1, 3.0)), max_size=400)


@settings(max_examples=80, deadline=None)
@given(ops=_table_ops, maxsize=st.one_of(st.integers(1, 12), st.integers(60, 140)),
       shards=st.integers(1, 4),
       seed=st.integers(0, 2**64 - 1))
def test_cachetable_twins_agree(ops, maxsize, shards, seed):
    fast, pure = both_twins("cachetable")
    kw = dict(hot_capacity=4, hot_width=8, hot_half_life=1.0, hot_rate=2.0, absent="ABSENT")
    tf = fast.CacheTable(maxsize, shards, seed, lambda: 0.0, **kw)
    tp = pure.CacheTable(maxsize, shards, seed, lambda: 0.0, **kw)
    now = 0.0

    def norm(v, mod):
        return repr(v) if v is mod.MISS or v is mod.REFRESH else v

    for op, key, dt, ttl in ops:
        now += dt
        if op == "probe":
            assert norm(tf.probe(key, now), fast) == norm(tp.probe(key, now), pure)
        elif op == "get":
            assert tf.get_at(key, "d", now) == tp.get_at(key, "d", now)
        elif op == "put":
            value = "ABSENT" if key % 5 == 0 else key
            assert tf.put(key, value, now + ttl, now + 0.8 * ttl, now) == \
                tp.put(key, value, now + ttl, now + 0.8 * ttl, now)
        elif op == "delete":
            assert tf.delete(key) == tp.delete(key)
        elif op == "end_refresh":
            tf.end_refresh(key, now)
            tp.end_refresh(key, now)
        elif op == "expire":
            assert tf.expire(now) == tp.expire(now)
        else:
            assert tf.contains(key, now) == tp.contains(key, now)
        assert len(tf) == len(tp) <= maxsize
    assert tf.state() == tp.state()
    assert tf.hot_keys(3, now) == tp.hot_keys(3, now)


def test_default_clock_hit_path_is_exact_near_expiry(kernels):
    """The compiled twin reads a coarse clock far from expiry and the fine one near it."""
    import time
    ct = kernels("cachetable")
    t = ct.CacheTable(100, 1, 3)  # clock=None: the monotonic clock
    now = time.monotonic()
    t.put("past", 1, now - 1e-6, now - 1e-6, now)
    t.put("near", 2, now + 0.002, now + 0.002, now)  # within the coarse margin
    t.put("far", 3, now + 1000.0, now + 800.0, now)
    assert t.get("past", "gone") == "gone" and t.lookup("past") is ct.MISS
    assert t.get("far") == 3 and t.lookup("far") == 3
    while True:  # spin, no sleep: fresh until expires_at, read after the get proves it
        v = t.get("near", "gone")
        if time.monotonic() >= now + 0.002:
            break
        assert v == 2
    assert t.get("near", "gone") == "gone"  # at or past expires_at: gone, never served
