"""Live changes are real or refused (both twins): read-only settings, configure(), what
queued waiters get, idle_ttl that never mints, decoration-time checks."""
from __future__ import annotations

import math
import threading

import pytest

from gameguard import (ConfigurationError, HybridLimiter, KeyedLimiter, LeakyBucket, ManualClock,
                       RateLimitExceeded, TokenBucket)


@pytest.mark.parametrize("make", [lambda c: TokenBucket(5, clock=c),
                                  lambda c: LeakyBucket(5, 2, clock=c),
                                  lambda c: KeyedLimiter(5, clock=c)])
@pytest.mark.parametrize("field", ["rate", "capacity"])
def test_assigning_a_setting_is_refused_and_points_at_configure(twin, make, field):
    """`tb.rate = 1000` used to report 1000 and keep refilling at 5/s."""
    lim = make(ManualClock())
    before = getattr(lim, field)
    with pytest.raises(AttributeError, match=rf"configure\({field}="):
        setattr(lim, field, 1000)
    assert getattr(lim, field) == before


@pytest.mark.parametrize("field", ["token_rate", "leak_rate", "capacity", "leak_capacity",
                                   "frame", "dense_rate", "modes", "calm_mode", "dense_frames"])
def test_hybrid_settings_are_read_only(twin, field):
    h = HybridLimiter(clock=ManualClock())
    with pytest.raises(AttributeError):
        setattr(h, field, 1)


def test_token_bucket_configure_settles_at_the_old_rate_then_refills_at_the_new(twin):
    clock = ManualClock()
    b = TokenBucket(5, 10, initial=0, clock=clock)
    clock.advance(1.0)  # 5 tokens at the old rate
    b.configure(rate=1000)
    assert b.rate == 1000.0 and b.snapshot()["rate"] == 1000.0
    assert b.tokens == pytest.approx(5.0)  # not re-priced at 1000/s
    clock.advance(0.002)
    assert b.tokens == pytest.approx(7.0)  # refilling at 1000/s now
    b.configure(capacity=3)
    assert b.capacity == 3.0 and b.tokens == pytest.approx(3.0)  # clipped, never raised
    b.configure(capacity=100)
    assert b.tokens == pytest.approx(3.0)


def test_leaky_configure_keeps_the_level(twin):
    clock = ManualClock()
    m = LeakyBucket(1, 10, clock=clock)
    assert m.try_acquire(8)
    m.configure(capacity=4, rate=2)
    assert m.level == pytest.approx(8.0) and not m.try_acquire()  # no room freed
    clock.advance(2.5)  # drains at 2/s: 3 left
    assert m.level == pytest.approx(3.0) and m.try_acquire() and not m.try_acquire()


def test_configure_is_all_or_nothing_with_the_constructors_checks(twin):
    b = TokenBucket(5, 10, clock=ManualClock())
    for bad, match in (({"rate": 0}, "rate"), ({"capacity": -1}, "capacity"),
                       ({"rate": 7, "capacity": "x"}, "capacity"), ({"burst": 3}, "burst"),
                       ({"rate": 7, "initial": 1}, "initial")):
        with pytest.raises(ConfigurationError, match=match):
            b.configure(**bad)
    assert (b.rate, b.capacity) == (5.0, 10.0)
    b.configure()  # nothing to change
    assert b.snapshot()["capacity"] == 10.0


def test_queued_waiters_are_rescaled_never_minted(twin):
    """Waiters reserved at 1/s; the rate doubles: what each still waits for halves."""
    clock = ManualClock()
    b = TokenBucket(1, 1, initial=0, clock=clock)
    deadlines = []
    for _ in range(3):
        w = b._reserve(1, None)
        deadlines.append(w.deadline)
    assert deadlines == pytest.approx([1.0, 2.0, 3.0])
    clock.advance(0.5)
    b.configure(rate=2)
    assert [w.deadline for w in b._waiters] == pytest.approx([0.75, 1.25, 1.75])
    b.configure(rate=0.5)  # a cut makes them wait longer
    assert [w.deadline for w in b._waiters] == pytest.approx([1.5, 3.5, 5.5])
    for w in list(b._waiters):
        clock.advance(max(0.0, w.deadline - clock()))
        b._finish(w, True)
    assert b.tokens == pytest.approx(0.0)  # each reservation paid exactly, none minted


def test_acquire_after_a_rate_raise_waits_the_new_time(twin):
    clock = ManualClock()
    b = TokenBucket(1, 1, initial=0, clock=clock)
    b.configure(rate=4)
    b.acquire()
    assert clock() == pytest.approx(0.25)


def test_a_real_sleeper_is_woken_by_configure(twin):
    b = TokenBucket(0.001, 1, initial=0)  # 1000 s to wait at this rate
    done = threading.Event()
    t = threading.Thread(target=lambda: (b.acquire(), done.set()))
    t.start()
    while b.waiting == 0:
        done.wait(0.001)
    b.configure(rate=1e6)
    assert done.wait(10.0), "the waiter kept sleeping on the old deadline"
    t.join()


# -- idle_ttl ---------------------------------------------------------------------------
def test_idle_ttl_below_refill_time_is_refused(twin):
    """rate=1, capacity=10, idle_ttl=2: a key dropped after 2.5 s came back with 10."""
    with pytest.raises(ConfigurationError, match=r"idle_ttl must be at least capacity/rate=10"):
        KeyedLimiter(1, 10, idle_ttl=2)
    k = KeyedLimiter(1, 10, idle_ttl=10, clock=ManualClock())
    with pytest.raises(ConfigurationError, match="idle_ttl"):
        k.configure(capacity=20)  # 20 s to refill now
    with pytest.raises(ConfigurationError, match="idle_ttl"):
        k.configure(rate=0.5)
    assert (k.rate, k.capacity, k.idle_ttl) == (1.0, 10.0, 10.0)
    k.configure(rate=0.5, idle_ttl=None)
    assert k.idle_ttl is None and k.snapshot()["idle_ttl"] is None


@pytest.mark.parametrize("kind", ["token", "leaky"])
def test_an_idle_key_never_comes_back_with_budget_it_did_not_earn(twin, kind):
    clock = ManualClock()
    k = KeyedLimiter(1, 10, kind=kind, idle_ttl=10, clock=clock, max_keys=10_000)
    assert sum(k.try_acquire("p") for _ in range(20)) == 10
    clock.advance(2.5)
    sweeps = k.snapshot()["sweeps"]
    for i in range(500):  # churn: the table grows and sweeps idle keys on the way
        k.try_acquire(i)
    assert k.snapshot()["sweeps"] > sweeps and "p" in k
    assert sum(k.try_acquire("p") for _ in range(20)) == 2


def test_keyed_configure_settles_every_key(twin):
    clock = ManualClock()
    k = KeyedLimiter(1, 10, clock=clock)
    for key in ("a", "b"):
        assert sum(k.try_acquire(key) for _ in range(10)) == 10
    clock.advance(2.0)
    k.configure(rate=100)
    assert k.tokens("a") == pytest.approx(2.0) and k.tokens("b") == pytest.approx(2.0)
    clock.advance(0.01)
    assert k.tokens("a") == pytest.approx(3.0)
    k.configure(capacity=2.5)
    assert k.tokens("b") == pytest.approx(2.5)


# -- decoration-time checks --------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: TokenBucket(5, 0.5), lambda: LeakyBucket(5, 0.5),
                                  lambda: HybridLimiter(capacity=0.5),
                                  lambda: HybridLimiter(leak_capacity=0.5).steady])
def test_capacity_below_one_is_refused_when_decorating(twin, make):
    g = make()
    with pytest.raises(ConfigurationError, match="capacity=0.5"):
        g(lambda: 1)
    with pytest.raises(ConfigurationError, match="capacity=0.5"):
        g(fallback=None)(lambda: 1)
    with pytest.raises(ConfigurationError, match="capacity=0.5"):
        with g:
            pass


def test_keyed_capacity_below_one_is_refused_at_bind_and_decoration(twin):
    k = KeyedLimiter(5, 0.5)
    with pytest.raises(ConfigurationError, match="capacity=0.5"):
        k.bind("p")
    with pytest.raises(ConfigurationError, match="cost"):
        k.limit(key=lambda p: p)
    assert k.limit(key=lambda p: p, cost=0.25)(lambda p: p)("x") == "x"


def test_configure_cannot_starve_a_decorator(twin):
    b = TokenBucket(5, 2, clock=ManualClock())
    b(lambda: 1)
    with pytest.raises(ConfigurationError, match="at least 1.0"):
        b.configure(capacity=0.5)
    k = KeyedLimiter(5, 4, clock=ManualClock())
    k.limit(key=lambda p: p, cost=3)
    with pytest.raises(ConfigurationError, match="at least 3.0"):
        k.configure(capacity=2)
    k.configure(capacity=3)


# -- waits are waits ---------------------------------------------------------------------
@pytest.mark.parametrize("timeout", [None, math.inf, 1e10, 1e300])
def test_huge_timeouts_wait_on_the_guards_clock(twin, timeout):
    clock = ManualClock()
    b = TokenBucket(1e-6, 1, initial=0, clock=clock)
    b.acquire(timeout=timeout)  # 1e6 s on a ManualClock: no real wait, no overflow
    assert clock() == pytest.approx(1e6)


@pytest.mark.parametrize("timeout", [None, 1e10, 1e300])
def test_huge_timeouts_async(twin, timeout):
    import asyncio
    clock = ManualClock()
    m = LeakyBucket(1e-6, 1, clock=clock)
    m.try_acquire()

    async def main():
        await m.acquire_async(timeout=timeout)
    asyncio.run(main())
    assert clock() == pytest.approx(1e6)


@pytest.mark.parametrize("bad", [-1, math.nan, "1", -math.inf])
def test_bad_timeouts_are_configuration_errors(twin, bad):
    b = TokenBucket(1, clock=ManualClock())
    with pytest.raises(ConfigurationError, match="timeout"):
        b.acquire(timeout=bad)
    assert b.tokens == 1.0


def test_real_waits_are_sliced_below_timeout_max(twin, monkeypatch):
    """A wait longer than threading.TIMEOUT_MAX would raise OverflowError in
    Condition.wait: it is taken in slices."""
    from gameguard.ratelimit import _waiting
    b = TokenBucket(1e-300, 1, initial=0)
    seen = []

    def fake_wait(self, timeout=None):
        seen.append(timeout)
        for w in b._waiters:  # (the condition's lock is held here) let it go next slice
            w.deadline = 0.0
        return False
    monkeypatch.setattr(threading.Condition, "wait", fake_wait)
    b.acquire()
    assert seen and seen[0] <= threading.TIMEOUT_MAX and seen[0] == _waiting._SLICE


def test_sync_acquire_on_a_loop_thread_warns_and_gives_the_reservation_back(twin):
    import asyncio

    async def main():
        b = TokenBucket(100, 1, initial=0)
        with pytest.warns(RuntimeWarning, match="acquire_async"):
            b.acquire()  # real clock: 10 ms of real blocking, after the warning
        return b
    assert asyncio.run(main()).waiting == 0


def test_the_warning_as_error_refunds(twin):
    import asyncio
    import warnings
    b = TokenBucket(1, 1, initial=0)

    async def main():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(RuntimeWarning):
                b.acquire()
    asyncio.run(main())
    assert b.waiting == 0 and b.tokens == pytest.approx(0.0, abs=0.05)


def test_manual_clock_acquire_on_a_loop_thread_does_not_warn(twin):
    import asyncio
    clock = ManualClock()
    b = TokenBucket(1, 1, initial=0, clock=clock)

    async def main():
        b.acquire()  # filterwarnings=error: a warning would fail this test
    asyncio.run(main())
    assert clock() == pytest.approx(1.0)


def test_refused_wait_still_raises_rate_limit_exceeded(twin):
    b = TokenBucket(1, 1, initial=0, clock=ManualClock())
    with pytest.raises(RateLimitExceeded):
        b.acquire(timeout=0.5)


def test_keyed_limiter_says_it_needs_a_key(twin):
    """pipeline() refuses guards with _needs_key (the protocol's check); a bound key is fine."""
    k = KeyedLimiter(5, clock=ManualClock())
    assert KeyedLimiter._needs_key is True and getattr(k.bind("p"), "_needs_key", False) is False
    assert not getattr(TokenBucket(5), "_needs_key", False)
