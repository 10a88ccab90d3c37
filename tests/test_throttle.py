"""AdaptiveThrottle (Google SRE client-side throttling): the drop formula, the draw, what
counts as a request and an accept; and the throttle kernel's twins in lockstep."""
from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import both_twins
from test_breaker import BAD_NOW, outcome_of
from gameguard import (AdaptiveThrottle, Bulkhead, CircuitOpenError, ManualClock,
                       RejectedError)


class Boom(Exception):
    pass


class Harmless(Exception):
    pass


def formula(requests, accepts, k=1.5, protection=5):
    return max(0.0, (requests - protection - k * accepts) / (requests + 1))


class Draws:
    """An injected rng: returns ``value`` and counts the draws."""

    def __init__(self, value=0.0):
        self.value = value
        self.n = 0

    def __call__(self):
        self.n += 1
        return self.value


@pytest.fixture
def clock():
    return ManualClock(0.0)


def feed(t, successes, failures):
    for _ in range(successes):
        t.record_success()
    for _ in range(failures):
        t.record_failure()


def test_healthy_traffic_is_never_dropped(twin, clock):
    t = AdaptiveThrottle(clock=clock, rng=Draws(0.0))
    feed(t, 1000, 0)
    assert t.drop_probability() == 0.0
    assert all(t.allow() for _ in range(100))


@pytest.mark.parametrize("successes,failures", [(0, 5), (0, 6), (0, 100), (10, 30),
                                                (4, 12), (100, 100), (3, 0)])
def test_drop_probability_is_the_formula(twin, clock, successes, failures):
    t = AdaptiveThrottle(clock=clock, rng=Draws(0.0))
    feed(t, successes, failures)
    requests = successes + failures
    assert t.drop_probability() == formula(requests, successes)
    snap = t.snapshot()
    assert (snap["requests"], snap["accepts"]) == (requests, successes)
    assert snap["drop_probability"] == formula(requests, successes)


@settings(max_examples=100, deadline=None)
@given(successes=st.integers(0, 300), failures=st.integers(0, 300),
       k=st.sampled_from([1.0, 1.5, 2.0, 3.7]), protection=st.sampled_from([0, 1, 5, 12.5]))
def test_drop_probability_formula_any_counts(impl, successes, failures, k, protection):
    from gameguard import _impl
    with _impl.use(impl):
        t = AdaptiveThrottle(k=k, protection=protection, clock=ManualClock(0.0),
                             rng=Draws(0.0))
    feed(t, successes, failures)
    assert t.drop_probability() == formula(successes + failures, successes, k, protection)


def test_draw_below_p_drops_and_counts_as_request(twin, clock):
    rng = Draws()
    t = AdaptiveThrottle("tt", clock=clock, rng=rng)
    feed(t, 0, 20)
    p = formula(20, 0)
    assert p == 15 / 21

    @t
    def handler():
        return "ran"

    rng.value = p                        # not below p: admitted
    assert handler() == "ran"
    snap = t.snapshot()
    assert snap.pop("config") == {"k": t.k, "protection": t.protection, "window": t.window,
                                  "buckets": t.buckets}
    assert snap.pop("counters") == {"successful": 1, "failed": 20, "ignored": 0,
                                    "rejected": 0, "fallbacks": 0}
    assert snap == {"name": "tt", "requests": 21, "accepts": 1,
                    "drop_probability": formula(21, 1)}
    p = formula(21, 1)
    rng.value = p - 1e-12                # below p: dropped
    with pytest.raises(CircuitOpenError) as info:
        handler()
    assert info.value.retry_after is None
    assert info.value.name == "tt"
    assert t.snapshot()["requests"] == 22   # the dropped call counts as a request
    assert t.snapshot()["accepts"] == 1
    assert t.drop_probability() == formula(22, 1)


def test_drop_with_fallback(twin, clock):
    t = AdaptiveThrottle(clock=clock, rng=Draws(0.0), fallback=lambda x: ("fallback", x))
    feed(t, 0, 50)

    @t
    def handler(x):
        raise AssertionError("must not run")

    assert handler(7) == ("fallback", 7)


def test_allow_counts_a_drop_as_request(twin, clock):
    rng = Draws(0.0)
    t = AdaptiveThrottle(clock=clock, rng=rng)
    feed(t, 0, 10)
    assert not t.allow()
    assert t.snapshot()["requests"] == 11
    rng.value = 0.999999
    assert t.allow()
    assert t.snapshot()["requests"] == 11   # admitted: counts once its outcome is recorded
    t.record_success()
    assert t.snapshot()["requests"] == 12


def test_outcomes(twin, clock):
    t = AdaptiveThrottle(clock=clock, rng=Draws(0.999999), record=Boom, ignore=Harmless)

    @t
    def handler(exc):
        if exc is not None:
            raise exc

    handler(None)
    with pytest.raises(Boom):
        handler(Boom())                  # recorded: a request, not accepted
    with pytest.raises(ValueError):
        handler(ValueError())            # the dependency answered: accepted
    with pytest.raises(Harmless):
        handler(Harmless())              # ignored: nothing
    with pytest.raises(KeyboardInterrupt):
        handler(KeyboardInterrupt())     # not an Exception: nothing
    with pytest.raises(asyncio.CancelledError):
        handler(asyncio.CancelledError())
    assert t.snapshot()["requests"] == 3
    assert t.snapshot()["accepts"] == 2


def test_inner_rejection_counts_nothing(twin, clock):
    t = AdaptiveThrottle(clock=clock, rng=Draws(0.0))
    inner = Bulkhead(1, clock=clock)

    @t
    @inner
    def handler():
        return 1

    with inner:
        with pytest.raises(RejectedError):
            handler()
    assert t.snapshot()["requests"] == 0


def test_window_expiry_restores_traffic(twin, clock):
    t = AdaptiveThrottle(window=10.0, buckets=10, clock=clock, rng=Draws(0.0))
    feed(t, 0, 100)
    assert t.drop_probability() > 0.9
    clock.advance(9.999)
    assert t.drop_probability() > 0.9
    clock.advance(0.001)
    assert t.drop_probability() == 0.0
    assert t.allow()


def test_default_stream_is_seeded_and_reproducible(twin):
    def decisions(seed):
        t = AdaptiveThrottle(clock=ManualClock(0.0), seed=seed)
        feed(t, 0, 30)
        return [t.allow() for _ in range(200)]

    a = decisions(42)
    assert a == decisions(42)
    assert a != decisions(43)
    assert 0 < a.count(False) < 200


def test_drop_rate_follows_p(twin):
    """Starting at p ≈ 0.5, the seeded stream drops a share of calls near p (p drifts as
    drops and accepts are counted): a sanity check that the draw is uniform-ish."""
    t = AdaptiveThrottle(k=1.0, protection=0, clock=ManualClock(0.0), seed=7)
    feed(t, 1000, 1000)                  # p = (2000 - 1000) / 2001 ≈ 0.5
    drops = 0
    for _ in range(2000):
        p = t.drop_probability()
        if t.allow():
            t.record_success()           # keeps accepts/requests near 1/2 ... roughly
        else:
            drops += 1
        assert 0.0 <= p < 1.0
    assert 500 < drops < 1500


def test_threads_counts_add_up(twin):
    """8 threads through one decorated throttle, some calls failing and some dropped, while
    another thread moves the clock and reads drop_probability()/snapshot(): every call is
    one request, every success one accept."""
    import threading
    clock = ManualClock(0.0)
    t = AdaptiveThrottle(clock=clock, window=1000.0, buckets=40, seed=3)
    results = [[0, 0, 0] for _ in range(8)]   # successes, failures, drops per thread

    @t
    def handler(fail):
        if fail:
            raise Boom()

    def worker(i):
        r = results[i]
        for n in range(2000):
            try:
                handler(n % 3 != 0)
                r[0] += 1
            except Boom:
                r[1] += 1
            except CircuitOpenError:
                r[2] += 1

    stop = threading.Event()

    def observer():
        while not stop.is_set():
            clock.advance(0.01)          # buckets rotate; nothing leaves the 1000 s window
            assert 0.0 <= t.drop_probability() < 1.0
            t.snapshot()

    obs = threading.Thread(target=observer)
    obs.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    obs.join()
    assert clock() < 1000.0
    successes, failures, drops = (sum(r[j] for r in results) for j in range(3))
    assert successes + failures + drops == 16_000
    assert drops > 1000 and successes > 100
    snap = t.snapshot()
    assert snap["requests"] == 16_000
    assert snap["accepts"] == successes


# -- the kernel twins in lockstep -----------------------------------------------------------
throttle_ops = st.lists(st.tuples(
    st.sampled_from(["enter", "enter", "exit", "advance", "p", "totals", "configure", "bad"]),
    st.one_of(st.floats(0.0, 2.0), st.integers(0, 20).map(lambda i: i / 4)),
    st.sampled_from([0, 1, 1, 2]), st.floats(0.0, 1.0), st.sampled_from([1.0, 1.5, 3.0]),
    st.sampled_from(BAD_NOW)), max_size=150)


@settings(max_examples=200, deadline=None)
@given(k=st.sampled_from([1.0, 1.5, 2.0]), protection=st.sampled_from([0.0, 2.0, 5.0]),
       window=st.sampled_from([1.0, 2.5, 10.0]), buckets=st.integers(1, 40),
       seed=st.integers(0, 2 ** 64 - 1), start=st.floats(0.0, 1e5), ops=throttle_ops)
def test_kernel_twins_identical(k, protection, window, buckets, seed, start, ops):
    """Live changes (configure) and unusable clock readings included: enter raises the
    same ValueError in both twins, exit records nothing."""
    fast_mod, pure_mod = both_twins("breaker")
    fast = fast_mod.ThrottleKernel(k, protection, window, buckets, seed)
    pure = pure_mod.ThrottleKernel(k, protection, window, buckets, seed)
    now = start
    for op, dt, outcome, duration, new_k, bad in ops:
        if op == "advance":
            now += dt
        elif op == "enter":
            assert fast.enter(now) == pure.enter(now)
        elif op == "exit":
            fast.exit(0, now, duration, outcome)
            pure.exit(0, now, duration, outcome)
        elif op == "p":
            assert fast.drop_probability(now) == pure.drop_probability(now)
        elif op == "configure":
            fast.configure(new_k, dt * 4)
            pure.configure(new_k, dt * 4)
        elif op == "bad":
            assert outcome_of(fast.enter, bad) == outcome_of(pure.enter, bad)
            assert outcome_of(fast.drop_probability, bad) == \
                outcome_of(pure.drop_probability, bad)
            fast.exit(0, bad, duration, outcome)
            pure.exit(0, bad, duration, outcome)
        assert fast.totals(now) == pure.totals(now)
        assert fast.random.state == pure.random.state
        assert (fast.k, fast.protection) == (pure.k, pure.protection)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=50),
       failures=st.integers(0, 40))
def test_kernel_twins_identical_with_injected_rng(values, failures):
    fast_mod, pure_mod = both_twins("breaker")
    fr, pr = itertools.cycle(values), itertools.cycle(values)
    fast = fast_mod.ThrottleKernel(1.5, 5.0, 10.0, 10, 0, lambda: next(fr))
    pure = pure_mod.ThrottleKernel(1.5, 5.0, 10.0, 10, 0, lambda: next(pr))
    for _ in range(failures):
        fast.exit(0, 0.0, 0.0, 1)
        pure.exit(0, 0.0, 0.0, 1)
    for i in range(60):
        assert fast.enter(i / 8) == pure.enter(i / 8)
        assert fast.totals(i / 8) == pure.totals(i / 8)


def test_splitmix64_twins_bit_identical():
    fast_mod, pure_mod = both_twins("kernel")
    for seed in (0, 1, 2 ** 64 - 1, -1, 123456789, 2 ** 70 + 5):
        f, p = fast_mod.SplitMix64(seed), pure_mod.SplitMix64(seed)
        for _ in range(1000):
            x = f.next_float()
            assert x == p.next_float()
            assert 0.0 <= x < 1.0
        assert f.state == p.state


def test_splitmix64_known_values():
    """Reference values of splitmix64 (seed 0) from the published algorithm."""
    fast_mod, pure_mod = both_twins("kernel")
    expected_u64 = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    for mod in (fast_mod, pure_mod):
        g = mod.SplitMix64(0)
        assert [g.next_float() for _ in range(3)] == [(u >> 11) / 2.0 ** 53 for u in expected_u64]
