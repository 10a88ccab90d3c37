"""AdaptiveLimiter: the bound and its rejection, every call form, how outcomes feed the
algorithms, each algorithm's formula step by step against hand-computed values (on both
kernels), windowing, validation; and the kernel twins in lockstep under hypothesis."""
from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gameguard as gg
from conftest import both_twins
from gameguard import BulkheadFullError, ConfigurationError, ManualClock, RejectedError
from gameguard._registry import registry
from gameguard.adaptive import AdaptiveLimiter
from gameguard.guard import FAILURE, IGNORED, SUCCESS


class Boom(Exception):
    pass


def per_call(algorithm: str = "gradient2", **kw):
    """A limiter whose algorithm sees every call (no window), on a manual clock."""
    clock = ManualClock()
    return AdaptiveLimiter(algorithm, window=0.0, clock=clock, **kw), clock


# -- the bound, the rejection, every call form ------------------------------------------------
def test_bound_rejection_and_release(twin):
    lim = AdaptiveLimiter(initial=2, name="lobby")
    assert (lim.limit, lim.in_flight) == (2, 0)
    with lim:
        with lim:
            with pytest.raises(BulkheadFullError) as info:
                with lim:
                    raise AssertionError("must not run")
            assert (info.value.name, info.value.retry_after) == ("lobby", None)
            assert lim.in_flight == 2
    assert lim.in_flight == 0
    snap = lim.snapshot()
    assert (snap["name"], snap["limit"], snap["rejected"], snap["algorithm"]) == \
        ("lobby", 2, 1, "gradient2")
    assert lim in registry()


def test_decorator_fallback_and_pipeline(twin):
    clock = ManualClock()
    lim = AdaptiveLimiter(initial=1, clock=clock)
    inner = AdaptiveLimiter(initial=1, clock=clock)
    both = gg.pipeline(lim, inner)

    @lim(fallback=lambda: "shed")
    def nested():
        return "ran"

    @both
    def handler():
        return "ran"

    assert handler() == "ran"
    with lim:
        assert nested() == "shed"  # lim is full: its fallback answers
        with pytest.raises(BulkheadFullError):
            handler()
    assert (lim.in_flight, inner.in_flight) == (0, 0)


@pytest.mark.asyncio
async def test_async_forms_and_cancellation(twin):
    lim = AdaptiveLimiter(initial=1)
    started = asyncio.Event()

    @lim
    async def slow():
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(slow())
    await asyncio.wait_for(started.wait(), 20)
    with pytest.raises(BulkheadFullError):
        async with lim:
            pass
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lim.in_flight == 0
    async with lim:
        assert lim.in_flight == 1


# -- how a call's end feeds the algorithm ----------------------------------------------------
def test_outcomes_sample_drop_or_nothing(twin):
    lim, clock = per_call("aimd", initial=10, min_limit=1)

    @lim
    def call(exc=None):
        clock.advance(0.01)
        if exc is not None:
            raise exc

    with pytest.raises(Boom):
        call(Boom())         # the service answered: a sample
    with pytest.raises(gg.CircuitOpenError):
        call(gg.CircuitOpenError("inner"))  # an inner guard refused: nothing
    with pytest.raises(asyncio.CancelledError):
        call(asyncio.CancelledError())      # nothing
    with pytest.raises(TimeoutError):
        call(TimeoutError())                # a drop: 10 * 0.9 -> 9
    snap = lim.snapshot()
    assert (snap["samples"], snap["drops"], lim.limit) == (2, 1, 9)


def test_rejected_error_counts_as_a_drop_when_listed(twin):
    lim, clock = per_call("aimd", initial=10, drop=(TimeoutError, RejectedError),
                          ignore=KeyError)

    @lim
    def call(exc):
        clock.advance(0.01)
        raise exc

    with pytest.raises(KeyError):
        call(KeyError("ignored wins"))
    assert lim.limit == 10
    with pytest.raises(gg.BulkheadFullError):
        call(gg.BulkheadFullError("downstream full"))
    assert (lim.limit, lim.snapshot()["drops"]) == (9, 1)


# -- the formulas, one sample at a time (kernel level, both twins) ------------------------------
def kernel(kernels, algorithm, **kw):
    mod = kernels("adaptive")
    args = dict(initial=20.0, min_limit=1.0, max_limit=1000.0, window=0.0, window_samples=10,
                min_rtt=0.0, smoothing=0.2, queue_size=4.0, long_window=600, tolerance=1.5,
                probe_multiplier=30.0, backoff=0.9, timeout=5.0, seed=1)
    args.update(kw)
    return mod.AdaptiveKernel(getattr(mod, algorithm), *args.values())


def sample(k, rtt, outcome=SUCCESS, in_flight=None):
    """One call ending after ``rtt`` with ``in_flight`` calls in (default: the limit)."""
    held = [k.enter(0.0) for _ in range((in_flight or k.limit) - 1)]
    token = k.enter(0.0)
    k.exit(token, rtt, rtt, outcome)
    for t in held:
        k.exit(t, 0.0, 0.0, IGNORED)


def test_gradient2_steps(kernels):
    k = kernel(kernels, "GRADIENT2")
    sample(k, 0.010)  # long = 0.010; gradient = clamp(1.5) = 1: 20*0.8 + (20+4)*0.2
    assert k.estimate == pytest.approx(20.8) and k.limit == 20
    sample(k, 0.030)  # long = mean(0.01, 0.03) = 0.02; gradient = 1.5*0.02/0.03 = 1
    assert k.long_rtt == pytest.approx(0.02) and k.estimate == pytest.approx(21.6)
    sample(k, 0.100)  # long = mean of three; gradient = 1.5 * long / 0.1 = 0.7
    assert k.estimate == pytest.approx(21.6 * 0.8 + (21.6 * 0.7 + 4) * 0.2)
    before = k.estimate
    sample(k, 0.5, in_flight=1)  # app-limited (1 < limit/2): the estimate holds
    assert k.estimate == before
    for _ in range(7):  # warm-up over: the long RTT turns exponential, factor 2/601
        sample(k, 0.010)
    long_before = k.long_rtt
    sample(k, 0.010)
    expected = long_before * (1 - 2 / 601) + 0.010 * 2 / 601
    if expected / 0.010 > 2:  # the fast recovery step
        expected *= 0.95
    assert k.long_rtt == pytest.approx(expected)


def test_vegas_steps(kernels):
    k = kernel(kernels, "VEGAS", smoothing=1.0, probe_multiplier=1000.0)
    sample(k, 0.010)  # first sample: the no-load RTT, the limit holds
    assert (k.rtt_noload, k.estimate) == (0.010, 20.0)
    sample(k, 0.010)  # queue = ceil(20 * 0) = 0 <= threshold 1: + beta (6)
    assert k.estimate == 26.0
    sample(k, 0.0105)  # queue = ceil(26 * (1 - 1/1.05)) = 2 < alpha 3: + log10 (1)
    assert k.estimate == 27.0
    sample(k, 0.020)  # queue = ceil(27 * 0.5) = 14 > beta 6: - 1
    assert k.estimate == 26.0
    sample(k, 0.0125)  # queue = ceil(26 * 0.2) = 6: between alpha and beta, hold
    assert k.estimate == 26.0
    sample(k, 0.010, outcome=FAILURE)  # a drop: - 1
    assert k.estimate == 25.0
    sample(k, 0.010, in_flight=5)  # app-limited (5 * 2 < 25): hold
    assert k.estimate == 25.0
    assert [kernels("adaptive").log10_step(x) for x in (0, 1, 9, 10, 99, 100, 1000, 12345)] \
        == [1, 1, 1, 1, 1, 2, 3, 4]


def test_vegas_reprobes_the_no_load_rtt(kernels):
    k = kernel(kernels, "VEGAS", smoothing=1.0, probe_multiplier=1.0, initial=4.0)
    sample(k, 0.010)
    jitter = k.probe_jitter
    assert 0.5 <= jitter < 1.0
    for _ in range(10):
        if k.probe_count == 0 and k.rtt_noload == 0.05:
            break
        sample(k, 0.05)
    assert k.rtt_noload == 0.05  # a probe took the loaded RTT as the new no-load one


def test_aimd_steps(kernels):
    k = kernel(kernels, "AIMD", initial=10.0, min_limit=2.0, max_limit=12.0, timeout=1.0)
    sample(k, 0.1)
    assert k.limit == 11
    sample(k, 0.1, in_flight=5)  # 5 * 2 < 11: hold
    assert k.limit == 11
    sample(k, 2.0)  # over timeout: 11 * 0.9 -> 9
    assert k.limit == 9
    for _ in range(5):
        sample(k, 0.1)
    assert k.limit == 12  # max_limit
    for _ in range(30):
        sample(k, 0.1, outcome=FAILURE)
    assert k.limit == 2   # min_limit


def test_window_pools_samples(kernels):
    k = kernel(kernels, "AIMD", initial=10.0, window=1.0, window_samples=3, min_rtt=0.001)
    k.exit(k.enter(0.0), 0.5, 0.5, SUCCESS)  # opens the first window (ends at 1.5)
    for t in (0.6, 0.7, 1.0):
        k.exit(k.enter(t), t, 0.0005, SUCCESS)  # under min_rtt: skipped
        k.exit(k.enter(t), t, 0.1, FAILURE if t == 0.7 else SUCCESS)
    assert k.samples == 0
    k.exit(k.enter(1.6), 1.6, 0.1, SUCCESS)  # the window ends: one update, with its drop
    assert (k.samples, k.limit) == (1, 9)
    k.exit(k.enter(2.0), 2.0, 0.1, SUCCESS)
    k.exit(k.enter(2.7), 2.7, 0.1, SUCCESS)  # ends a window of 2 samples: too few, dropped
    assert k.samples == 1


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(algorithm="bbr"), "algorithm must be one of"),
    (dict(initial=0), "initial"),
    (dict(min_limit=10, initial=5), "initial"),
    (dict(max_limit=5, min_limit=10), "max_limit"),
    (dict(window=-1.0), "window"),
    (dict(window_samples=0), "window_samples"),
    (dict(smoothing=1.5), "smoothing"),
    (dict(rtt_tolerance=0.9), "rtt_tolerance"),
    (dict(long_window=0), "long_window"),
    (dict(timeout=1.0), "timeout=1.0 is a knob of aimd"),
    (dict(algorithm="aimd", backoff_ratio=0.3), "backoff_ratio"),
    (dict(algorithm="vegas", queue_size=3), "queue_size=3 is a knob of gradient2"),
    (dict(drop="TimeoutError"), "drop"),
    (dict(seed=-1), "seed"),
])
def test_bad_configuration(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        AdaptiveLimiter(**kwargs)


@pytest.mark.parametrize("attribute", ["limit", "algorithm", "in_flight"])
def test_read_only_settings(attribute):
    lim = AdaptiveLimiter()
    with pytest.raises(AttributeError):
        setattr(lim, attribute, 5)


# -- the twins in lockstep ------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(algorithm=st.sampled_from(["GRADIENT2", "VEGAS", "AIMD"]),
       window=st.sampled_from([0.0, 0.05]), min_rtt=st.sampled_from([0.0, 0.001]),
       seed=st.integers(0, 2**64 - 1),
       ops=st.lists(st.tuples(st.sampled_from(["enter", "exit"]), st.integers(0, 50),
                              st.floats(0.0, 0.2), st.sampled_from([SUCCESS, FAILURE, IGNORED])),
                    max_size=150))
def test_kernel_twins_decide_alike(algorithm, window, min_rtt, seed, ops):
    fast_mod, pure_mod = both_twins("adaptive")
    # initial 8 in [1, 60]; a 2-sample window; short windows and probes so every path runs
    args = (8.0, 1.0, 60.0, window, 2, min_rtt, 0.3, 4.0, 20, 1.5, 2.0, 0.9, 0.1, seed)
    fast = fast_mod.AdaptiveKernel(getattr(fast_mod, algorithm), *args)
    pure = pure_mod.AdaptiveKernel(getattr(pure_mod, algorithm), *args)
    now = 0.0
    tokens = []
    for op, which, rtt, outcome in ops:
        now += rtt / 4
        if op == "enter":
            tf, tp = fast.enter(now), pure.enter(now)
            assert tf == tp
            if tf >= 0:
                tokens.append(tf)
        elif tokens:
            tok = tokens.pop(which % len(tokens))
            fast.exit(tok, now, rtt, outcome)
            pure.exit(tok, now, rtt, outcome)
        for name in ("limit", "estimate", "in_flight", "samples", "drops", "rejected",
                     "long_rtt", "rtt_noload", "probe_count", "probe_jitter", "window_end"):
            f, p = getattr(fast, name), getattr(pure, name)
            assert f == p or (math.isinf(f) and f == p), name


# -- timing calls with the CPU's counter (compiled twin, default clock) -------------------------
def counter_trusted() -> bool:
    """x86 and Linux's own clock source is the time-stamp counter: the compiled kernel
    times calls with it there, and only there."""
    import platform

    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            source = f.read().strip()
    except OSError:
        return False
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") and source == "tsc"


def spin(seconds: float) -> None:
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_the_compiled_kernel_times_calls_itself_where_the_counter_is_trusted(kernels):
    """Self-timed: the token carries the counter and the in-flight count, the RTT is the
    counter's (whatever duration the caller passes), a call the caller's coarse clock says
    took LONG or more keeps the caller's duration, and ``precise`` turns False so the caller
    may read the coarse clock. The pure twin never self-times."""
    k = kernel(kernels, "GRADIENT2", initial=4.0, tolerance=1.0)
    on = k.time_calls(True)
    assert on == (counter_trusted() and kernels("adaptive").__name__.endswith("_fast.adaptive"))
    assert (k.self_timed, k.precise) == (on, not on)
    if not on:
        token = k.enter(0.0)
        k.exit(token, 0.0, 0.002, SUCCESS)
        assert (token, k.last_rtt) == (1, 0.002)  # the caller's duration, as ever
        return
    token = k.enter(0.0)
    assert token > 1 << 20 and token & ((1 << 20) - 1) == 1
    spin(0.002)
    k.exit(token, 0.0, 0.0, SUCCESS)  # a coarse clock would say 0
    assert 0.0019 < k.last_rtt < 0.5
    # in flight 1 of 4: app-limited, the estimate holds (a wrongly decoded in-flight count
    # would have moved it: 4 * 0.8 + 8 * 0.2)
    assert (k.estimate, k.in_flight, k.samples) == (4.0, 0, 1)
    token = k.enter(0.0)
    k.exit(token, 0.0, 3.0, SUCCESS)  # long by the caller's clock: its duration stands
    assert k.last_rtt == 3.0
    assert k.time_calls(False) is False and k.precise


def test_a_limiter_on_the_default_clock_self_times_and_on_an_injected_one_does_not(twin):
    lim = AdaptiveLimiter(window=0.0, initial=4, min_rtt=0.0)
    manual, clock = per_call(initial=4)
    assert manual._kernel.self_timed is False and manual._kernel.precise
    assert lim._kernel.self_timed == (twin == "fast" and counter_trusted())

    @lim
    def f() -> None:
        spin(0.001)

    @manual
    def g() -> None:
        clock.advance(0.25)

    f()
    g()
    assert 0.0009 < lim._kernel.last_rtt < 0.5  # measured, by whichever timer
    assert manual._kernel.last_rtt == 0.25       # the ManualClock's, exactly


# -- threads: nothing lost, the bound holds -----------------------------------------------
def test_threads_through_a_shedder_and_a_limiter(impl):
    """8 threads through ``pipeline(shedder, limiter)`` with a real clock and a CPU that is
    hot half the time: every call is admitted or refused exactly once, nothing stays in
    flight, and no more calls than ``max_limit`` are ever inside."""
    import threading

    from gameguard.shedder import LoadShedder

    calls, threads = 2_000, 8
    hot = [False]
    with gg._impl.use(impl):
        lim = AdaptiveLimiter("vegas", initial=4, max_limit=6, window=0.0, min_rtt=0.0)
        shed = LoadShedder(cpu=lambda: 0.95 if hot[0] else 0.1, window=0.5, buckets=5)
    inside = [0]
    peak = [0]
    guard = threading.Lock()
    outcomes = {"ran": 0, "refused": 0}

    @gg.pipeline(shed, lim)
    def work(i):
        with guard:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        try:
            if i % 97 == 0:
                raise TimeoutError
        finally:
            with guard:
                inside[0] -= 1

    def run(seed):
        for i in range(calls):
            hot[0] = (i // 100) % 2 == 1
            try:
                work(i + seed)
                kind = "ran"
            except TimeoutError:
                kind = "ran"
            except RejectedError:
                kind = "refused"
            with guard:
                outcomes[kind] += 1

    pool = [threading.Thread(target=run, args=(s,)) for s in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
        assert not t.is_alive()
    assert outcomes["ran"] + outcomes["refused"] == calls * threads
    assert (lim.in_flight, shed.in_flight) == (0, 0)
    assert peak[0] <= 6
    assert 1 <= lim.limit <= 6
