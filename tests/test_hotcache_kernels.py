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


def test_table_needs_room_for_one_entry(kernels):
    ct = kernels("cachetable")
    with pytest.raises(ValueError, match="maxsize"):
        ct.CacheTable(0, 1, 1, lambda: 0.0)
    t = ct.CacheTable(1, 1, 1, lambda: 0.0)
    for k in range(5):
        t.put(k, k, 9.0, 9.0, 0.0)
        assert t.peek(k, 0.0) == k and len(t) == 1
    t.check()


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
    hits, misses, evictions, rejected, expirations, stale = t.counters()
    assert evictions >= 9_900 and rejected >= 8_000


def test_table_keeps_a_stale_entry_after_a_failed_load(kernels):
    ct = kernels("cachetable")
    t = ct.CacheTable(10, 1, 1, lambda: 0.0)
    t.put("k", "v", 10.0, 8.0, 0.0)
    assert t.keep_stale("k", 9.0, 5.0, 1.0) is ct.MISS      # still fresh: nothing to keep
    assert t.probe("k", 10.0) is ct.MISS and t.stale_value("k", 10.0) is ct.MISS
    assert t.keep_stale("k", 10.0, 5.0, 1.0) == "v"         # expired 0 s ago: kept 1 s
    assert t.stale_value("k", 10.5) == "v" and t.probe("k", 10.5) == "v"
    assert t.probe("k", 11.0) is ct.MISS                      # the retry is due
    assert t.keep_stale("k", 14.5, 5.0, 1.0) == "v"         # kept to the window's end only
    assert t.probe("k", 14.99) == "v" and t.probe("k", 15.0) is ct.MISS
    assert t.keep_stale("k", 15.0, 5.0, 1.0) is ct.MISS     # 5 s past expiry: gone
    assert t.get_at("k", "d", 14.9) == "d" and not t.contains("k", 14.9)
    # misses: probes at 10, 11, 15 and the get; stale: probes at 10.5 and 14.99
    assert t.counters() == (0, 4, 0, 0, 0, 2)
    t.put("k", "new", 30.0, 24.0, 15.0)                      # a store makes it fresh
    assert t.probe("k", 16.0) == "new" and t.counters() == (1, 4, 0, 0, 0, 2)


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
    st.sampled_from(["probe", "get", "put", "delete", "end_refresh", "expire", "contains",
                     "keep_stale", "stale_value"]),
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
        elif op == "keep_stale":  # a failed load: window ttl, retry dt (stale_if_error)
            assert norm(tf.keep_stale(key, now, ttl, dt), fast) == \
                norm(tp.keep_stale(key, now, ttl, dt), pure)
        elif op == "stale_value":
            assert norm(tf.stale_value(key, now), fast) == norm(tp.stale_value(key, now), pure)
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


# -- user code that raises or re-enters (issue 10) ------------------------------------------
class Boom(Exception):
    pass


class Trap:
    """Counts every __hash__/__eq__ call of the keys sharing it; raises on call ``at``."""

    def __init__(self) -> None:
        self.calls = 0
        self.at: int | None = None

    def tick(self) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise Boom(self.calls)


class TrapKey:
    """A key whose hash (three values, so dicts compare keys) and equality go through a
    trap."""

    def __init__(self, n: int, trap: Trap) -> None:
        self.n, self.trap = n, trap

    def __hash__(self) -> int:
        self.trap.tick()
        return self.n % 3

    def __eq__(self, other: object) -> bool:
        self.trap.tick()
        return isinstance(other, TrapKey) and other.n == self.n

    def __repr__(self) -> str:
        return f"K{self.n}"


def _invariants(t, ct, keys) -> None:
    """Whatever happened, the table is consistent: its structures agree, every held key
    can be deleted, and it evicts and stays bounded afterwards."""
    t.check()
    held = [k for k in keys if t.expires_at(k) is not None]
    assert len(t) == len(held)
    for k in keys:
        t.delete(k)
    assert len(t) == 0
    for i in range(3 * t.maxsize):
        if t.probe(i, 1.0) is ct.MISS:
            t.put(i, i, 100.0, 100.0, 1.0)
        assert len(t) <= t.maxsize
    t.check()


def _drive(t, ct, keys, now: float = 1.0) -> int:
    """Reads, writes, overwrites, deletes and expiry over ``keys``; returns how many calls
    raised."""
    raised = 0
    for i in range(60):
        k = keys[(i * 7) % len(keys)]
        try:
            if i % 9 == 8:
                t.delete(keys[i % len(keys)])
            elif i % 13 == 12:
                t.expire(now + 1.5)
            elif t.probe(k, now) is ct.MISS or i % 5 == 0:
                t.put(k, i, now + (1.0 if i % 4 == 0 else 50.0), now + 40.0, now)
        except Boom:
            raised += 1
    return raised


def test_a_raising_key_never_orphans_an_entry(kernels):
    """A key's __hash__ or __eq__ raising on its Nth call, for every N, anywhere in reads,
    puts (promotion and eviction included), deletes and expiry."""
    ct = kernels("cachetable")
    trap = Trap()
    keys = [TrapKey(n, trap) for n in range(20)]
    _drive(ct.CacheTable(6, 1, 5, lambda: 0.0), ct, keys)
    total = trap.calls
    assert total > 300
    boom = 0
    for at in range(1, total + 1):
        trap.calls, trap.at = 0, at
        t = ct.CacheTable(6, 1, 5, lambda: 0.0)
        boom += _drive(t, ct, keys)
        trap.at = None
        _invariants(t, ct, keys)
    assert boom >= total * 0.9  # the trap fired in (almost) every run


def test_a_key_that_cannot_be_deleted_does_not_block_its_shard(kernels):
    ct = kernels("cachetable")
    trap = Trap()
    t = ct.CacheTable(8, 1, 2, lambda: 0.0, adaptive=False)
    for k in [TrapKey(n, trap) for n in range(3)] + list(range(5)):
        t.put(k, 0, 100.0, 100.0, 0.0)
    stored = 0
    for i in range(40):  # evicting a TrapKey fails (its __hash__ raises): the put raises,
        trap.calls, trap.at = 0, 1  # the key goes to the back, the next put evicts another
        try:
            t.put(100 + i, i, 100.0, 100.0, 0.0)
            stored += 1
        except Boom:
            pass
        t.check()
        assert len(t) <= 8
    assert stored >= 30


def test_value_finalisers_may_call_back_into_the_table(kernels):
    """Values released by eviction, overwrite, delete, expiry or clear() put new keys from
    their __del__: the table is consistent at that point, so nothing is orphaned (before,
    clear() dropped the values before emptying the queues: the key a finaliser stored
    stayed in the dict, counted by len(), while delete() failed)."""
    ct = kernels("cachetable")
    t = ct.CacheTable(5, 1, 9, lambda: 0.0)
    finalised = []

    class Value:
        def __init__(self, n: int) -> None:
            self.n = n

        def __del__(self) -> None:
            finalised.append(self.n)
            if self.n < 1000:
                t.put(1000 + self.n, 1000 + self.n, 100.0, 100.0, 0.0)

    def run() -> None:
        for i in range(30):
            t.put(i % 12, Value(i), 100.0 if i % 3 else 0.5, 100.0, 0.0)
            t.check()
        t.delete(3)
        t.expire(1.0)
        t.check()
        t.clear()
        t.check()

    _without_deadlock(run)
    assert len(finalised) >= 25
    _invariants(t, ct, list(range(12)) + list(range(1000, 1030)))


def _without_deadlock(fn) -> None:
    """Run ``fn`` in a thread: a table that deadlocks on re-entry fails instead of hanging
    the suite (a guard, not a timing assertion)."""
    import threading
    errors = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(60.0)
    assert not th.is_alive(), "the table deadlocked when user code re-entered it"
    if errors:
        raise errors[0]


def test_a_key_whose_eq_reads_the_table_does_not_deadlock(kernels):
    ct = kernels("cachetable")
    t = ct.CacheTable(4, 1, 1, lambda: 0.0)

    class Nosy:
        def __init__(self, n: int) -> None:
            self.n = n

        def __hash__(self) -> int:
            return 7

        def __eq__(self, other: object) -> bool:
            t.get_at("probe", None, 0.0)  # user code calling back into the table
            return isinstance(other, Nosy) and other.n == self.n

    def run() -> None:
        for i in range(12):
            t.put(Nosy(i % 6), i, 10.0, 10.0, 0.0)
            t.get_at(Nosy(i % 6), None, 0.0)
            t.check()
        t.delete(Nosy(1))
        t.check()

    _without_deadlock(run)


# -- fields, clocks (issue 11) --------------------------------------------------------------
def test_sizes_and_indices_are_read_only(kernels):
    """With bounds checks off, a writable size or index (nshards = 0, a sketch width...)
    let Python code crash the process or write out of bounds."""
    ct, sk = kernels("cachetable"), kernels("sketch")
    t = ct.CacheTable(100, 4, 1, lambda: 0.0)
    t.put("k", 1, 10.0, 10.0, 0.0)
    fs, hh = sk.FrequencySketch(64), sk.HeavyHitters(8, 64, 1.0, 1)
    sh = t.shards[0]
    targets = [(t, name) for name in ("nshards", "maxsize", "seed")]
    targets += [(fs, name) for name in ("length", "block_mask", "sample_size")]
    targets += [(hh, name) for name in ("k", "width")]
    targets += [(sh, name) for name in ("cap", "wcap", "pcap")]
    if ct.__name__.startswith("gameguard._fast"):  # everything else, compiled: C fields
        e = sh.d["k"]
        targets += [(t, name) for name in ("sketch", "hh", "rng", "shards", "window", "hits")]
        targets += [(fs, "size"), (hh, "used"), (hh, "half_life"), (hh, "rng"), (sh, "d")]
        targets += [(e, name) for name in ("region", "ref", "key", "value", "expires_at")]
    for obj, name in targets:
        before = getattr(obj, name)
        with pytest.raises(AttributeError):
            setattr(obj, name, 0)
        assert getattr(obj, name) is before or getattr(obj, name) == before
    assert t.get_at("k", None, 1.0) == 1


@pytest.mark.parametrize("reading", [float("inf"), float("nan"), 1e300, -1e300])
def test_heavy_hitters_take_any_clock_reading(kernels, reading):
    """The halving turned ``(now - decay_at) / half_life`` into an integer: undefined in C
    (and an OverflowError in Python) for inf, NaN or a huge reading."""
    sk = kernels("sketch")
    hh = sk.HeavyHitters(8, 64, 1.0, 1)
    h = sk.key_hash("boss", 1)
    for i in range(50):
        hh.add(h, "boss", 0.01 * i)
    hh.add(h, "boss", reading)
    hh.rate(h, reading)
    hh.is_hot(h, reading, 1.0)
    hh.top(3, reading)
    if reading == 1e300:  # a jump by ~1e300 half-lives halves the 50 reads away
        assert hh.estimate(h) <= 1
    else:  # a broken reading changes no count
        assert hh.estimate(h) >= 50
    assert hh.rate(h, 0.6) > 0.0 or reading == 1e300


def test_heavy_hitter_twins_agree_on_broken_clock_readings():
    fast, pure = both_twins("sketch")
    hf, hp = fast.HeavyHitters(4, 16, 0.5, 3), pure.HeavyHitters(4, 16, 0.5, 3)
    times = [0.0, 0.2, float("nan"), 0.9, float("inf"), 1.4, 5e18, 1e300, 1e300, -1.0]
    for i, now in enumerate(times * 3):
        h = pure.key_hash(i % 5, 3)
        assert hf.add(h, i % 5, now) == hp.add(h, i % 5, now)
        assert hf.top(4, now) == hp.top(4, now)
    assert hf.state() == hp.state()


def test_a_nan_time_is_never_fresh(kernels):
    ct = kernels("cachetable")
    t = ct.CacheTable(10, 1, 1, lambda: float("nan"))
    t.put("k", "v", 10.0, 10.0, 0.0)
    nan = float("nan")
    assert t.get_at("k", "d", nan) == "d" and t.get("k", "d") == "d"
    assert t.probe("k", nan) is ct.MISS and t.peek("k", nan) is ct.MISS
    assert not t.contains("k", nan)
    assert t.get_at("k", "d", 1.0) == "v"


# -- the adaptive window --------------------------------------------------------------------
def _replay(ct, trace, size, **kw):
    t = ct.CacheTable(size, 1, 1, lambda: 0.0, **kw)
    hits = 0
    window = 0.0
    for k in trace:
        if t.probe(k, 0.0) is ct.MISS:
            t.put(k, k, 1e18, 1e18, 0.0)
        else:
            hits += 1
        window += t.window
    return hits / len(trace), window / len(trace)


def _trace(n_keys: int, length: int, phase: int, seed: int) -> list[int]:
    """Zipf 0.99 ranks; every ``phase`` requests they move to fresh keys (phase=0: never)."""
    rnd = random.Random(seed)
    ranks = zipf_stream(n_keys, 0.99, length, seed)
    out, offset = [], 0
    for i, r in enumerate(ranks):
        if phase and i % phase == 0:
            offset = rnd.randrange(n_keys)
        out.append((r + offset) % n_keys)
    return out


def test_the_window_grows_for_a_moving_hot_set_and_stays_small_otherwise(kernels):
    """Hill climbing: a hot set that moves every 5x capacity requests wants recency (a big
    window); a stationary Zipf wants frequency (about 1 %)."""
    ct = kernels("cachetable")
    moving = _trace(25_000, 100_000, 500, 3)
    fixed, _ = _replay(ct, moving, 100, adaptive=False)
    adaptive, window = _replay(ct, moving, 100)
    assert adaptive >= fixed + 0.02 and window > 0.2
    still = _trace(25_000, 100_000, 0, 4)
    fixed, _ = _replay(ct, still, 100, adaptive=False)
    adaptive, window = _replay(ct, still, 100)
    assert adaptive >= fixed - 0.01 and window < 0.15  # the climber costs a little here


_climb_ops = st.lists(st.tuples(st.integers(0, 60), st.booleans()), min_size=200,
                      max_size=1500)


@settings(max_examples=40, deadline=None)
@given(ops=_climb_ops, maxsize=st.integers(2, 30), seed=st.integers(0, 2**64 - 1))
def test_climber_twins_decide_alike(ops, maxsize, seed):
    """Long runs on small tables, so the climber samples (every 10 x maxsize reads) and
    moves the window many times: both twins move it alike."""
    fast, pure = both_twins("cachetable")
    tf = fast.CacheTable(maxsize, 1, seed, lambda: 0.0)
    tp = pure.CacheTable(maxsize, 1, seed, lambda: 0.0)
    for key, drift in ops:
        k = key + (len(ops) if drift else 0)
        if tf.probe(k, 0.0) is fast.MISS:
            assert tp.probe(k, 0.0) is pure.MISS
            tf.put(k, k, 1e9, 1e9, 0.0)
            tp.put(k, k, 1e9, 1e9, 0.0)
        else:
            assert tp.probe(k, 0.0) == k
        assert tf.window == tp.window
    tf.check()
    tp.check()
    assert tf.state() == tp.state()
