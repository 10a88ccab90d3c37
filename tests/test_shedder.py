"""LoadShedder: go-zero's drop rule (hot CPU or cool-off, and in-flight over max-pass x
min-RT), on both twins with an injected CPU and a ManualClock; the kernel twins in lockstep;
the CPU sampler's arithmetic, its one lazy daemon thread, and the real counters it reads."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gameguard as gg
from conftest import both_twins
from gameguard import ConfigurationError, ManualClock, OverloadedError
from gameguard._registry import registry
from gameguard.guard import FAILURE, IGNORED, SUCCESS
from gameguard.shedder import CpuSampler, LoadShedder, cpu_reader

SAFETY = 20.0  # seconds: a bound for a broken build, never reached when correct


class Cpu:
    """An injectable reading the test sets."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def warmed(cpu: Cpu, clock: ManualClock, passes: int = 4, rt: float = 0.05) -> LoadShedder:
    """A shedder (1 s window, 10 buckets of 0.1 s) whose history says: ``passes`` calls of
    ``rt`` seconds per bucket, so max_flight = passes * rt / 0.1."""
    s = LoadShedder(cpu=cpu, window=1.0, buckets=10, clock=clock, name="match")
    k = s._kernel
    for _ in range(10):
        tokens = [k.enter(clock()) for _ in range(passes)]
        clock.advance(rt)
        for t in tokens:
            k.exit(t, clock(), rt, SUCCESS)
        clock.advance(0.1 - rt)
    return s


def hold(s: LoadShedder, n: int) -> list:
    """Enter ``n`` calls and keep them in flight (kernel tokens)."""
    return [s._kernel.enter(s._now()) for _ in range(n)]


def test_admits_everything_while_the_cpu_is_cool(twin):
    clock, cpu = ManualClock(), Cpu(0.5)
    s = warmed(cpu, clock)
    assert s._kernel.max_flight(clock()) == pytest.approx(2.0)  # 4 * 0.05 / 0.1
    tokens = hold(s, 50)
    assert all(t >= 0 for t in tokens) and s.in_flight == 50
    assert s in registry()


def test_drops_when_hot_and_over_max_flight_then_cools_off(twin):
    clock, cpu = ManualClock(), Cpu(0.5)
    s = warmed(cpu, clock)
    held = hold(s, 40)
    for t in held[:10]:  # the moving average of in-flight moves as calls end
        s._kernel.exit(t, clock(), 0.0, IGNORED)
    assert s.in_flight == 30 and s._kernel.avg_flying > 2
    cpu.value = 0.95  # hot: overload factor (1 - 0.95) / (1 - 0.9) = 0.5 -> limit 1
    with pytest.raises(OverloadedError) as info:
        with s:
            raise AssertionError("must not run")
    assert info.value.name == "match" and info.value.retry_after is None
    cpu.value = 0.5  # cool now, but a call was dropped within cool_off of the hot reading
    clock.advance(0.5)
    with pytest.raises(OverloadedError):
        with s:
            pass
    clock.advance(0.6)  # past cool_off (1 s) after the CPU was last hot: admitted again
    with s:
        pass
    assert s.snapshot()["dropped"] == 2


def test_hot_but_under_max_flight_admits(twin):
    clock, cpu = ManualClock(), Cpu(0.99)
    s = warmed(cpu, clock, passes=40)  # max_flight = 40 * 0.05 / 0.1 = 20, x 0.1 = 2
    with s:
        with s:  # one in flight: not over 2
            pass


def test_outcomes_pass_or_leave(twin):
    clock, cpu = ManualClock(), Cpu(0.0)
    s = LoadShedder(cpu=cpu, clock=clock)

    @s
    def call(exc=None):
        clock.advance(0.01)
        if exc is not None:
            raise exc

    call()
    with pytest.raises(ValueError):
        call(ValueError())       # the service answered: a pass
    with pytest.raises(TimeoutError):
        call(TimeoutError())     # go-zero's Fail(): only leaves in-flight
    with pytest.raises(gg.CircuitOpenError):
        call(gg.CircuitOpenError("inner"))
    snap = s.snapshot()
    assert (snap["passed"], snap["dropped"], snap["in_flight"]) == (2, 0, 0)


def test_the_compiled_kernel_times_calls_itself_on_the_default_clock(twin):
    """On the default clock the compiled kernel times calls with the CPU's counter where
    Linux trusts it (the caller's duration, 0 here as a coarse clock might say, is then
    not used); with a ManualClock the caller's durations stand, exactly."""
    from test_adaptive import counter_trusted, spin

    s = LoadShedder(cpu=Cpu(0.0), window=0.02, buckets=2)
    manual = LoadShedder(cpu=Cpu(0.0), window=0.02, buckets=2, clock=ManualClock())
    k = s._kernel
    assert k.self_timed == (twin == "fast" and counter_trusted()) and k.precise != k.self_timed
    assert manual._kernel.self_timed is False and manual._kernel.precise
    now = s._now()
    for _ in range(20):  # 20 passes of 1 ms in one 10 ms bucket: max_flight 2.0
        token = k.enter(now)
        spin(0.001)
        k.exit(token, now, 0.0 if k.self_timed else 0.001, SUCCESS)
    flight = k.max_flight(now + 0.01)
    assert 1.9 < flight < 100.0  # 2.0 when nothing preempts the spins; more when it does
    mk = manual._kernel
    for _ in range(20):
        mk.exit(mk.enter(0.0), 0.0, 0.001, SUCCESS)
    assert mk.max_flight(0.01) == pytest.approx(2.0)


def test_cpu_readings_are_clipped(twin):
    clock, cpu = ManualClock(), Cpu(7.0)
    s = LoadShedder(cpu=cpu, clock=clock)
    with s:
        assert s.cpu == 1.0
    cpu.value = float("nan")
    with s:
        assert s.cpu == 0.0
    cpu.value = -1
    with s:
        assert s.cpu == 0.0


def test_a_cpu_source_that_raises_keeps_the_last_good_reading(twin, caplog):
    reading = [0.95]

    def flaky():
        if reading[0] is None:
            raise OSError("no counter")
        return reading[0]

    s = LoadShedder(cpu=flaky, clock=ManualClock())
    with s:
        assert s.cpu == 0.95
    reading[0] = None
    ran = []
    s(lambda: ran.append(1))()
    s(lambda: ran.append(2))()
    assert (ran, s.cpu, s.in_flight) == ([1, 2], 0.95, 0)
    assert [r.message for r in caplog.records].count(
        f"gameguard: cpu reading {flaky!r} raised; the last good reading (0.95) stands") == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(cpu_threshold=1.0), "cpu_threshold"), (dict(cpu_threshold=0), "cpu_threshold"),
    (dict(window=0), "window"), (dict(buckets=0), "buckets"),
    (dict(window=0.01, buckets=50), "at least 1 ms"), (dict(cool_off=-1), "cool_off"),
    (dict(cpu=0.5), "cpu must be callable"),
])
def test_bad_configuration(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        LoadShedder(**kwargs)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["enter", "exit", "cpu", "tick"]),
                              st.integers(0, 40), st.floats(0.0, 0.3),
                              st.sampled_from([SUCCESS, FAILURE, IGNORED])), max_size=200),
       readings=st.none() | st.lists(st.floats(-1.0, 2.0) | st.just(float("nan")),
                                     min_size=1, max_size=20))
def test_kernel_twins_decide_alike(ops, readings):
    fast_mod, pure_mod = both_twins("shedder")

    def source():  # each twin reads the same sequence of readings, round and round
        it = iter(readings * 1000)
        return lambda: next(it)

    fast = fast_mod.ShedderKernel(0.8, 1.0, 10, 0.5, source() if readings else None)
    pure = pure_mod.ShedderKernel(0.8, 1.0, 10, 0.5, source() if readings else None)
    now = 0.0
    tokens = []
    for op, which, x, outcome in ops:
        if op == "enter":
            tf, tp = fast.enter(now), pure.enter(now)
            assert tf == tp
            if tf >= 0:
                tokens.append(now)
        elif op == "exit" and tokens:
            start = tokens.pop(which % len(tokens))
            fast.exit(0, now, now - start, outcome)
            pure.exit(0, now, now - start, outcome)
        elif op == "cpu":
            fast.set_cpu(x / 0.3)
            pure.set_cpu(x / 0.3)
        else:
            now += x
        assert fast.max_flight(now) == pure.max_flight(now)
        assert 0.0 <= fast.cpu <= 1.0
        for name in ("cpu", "flying", "avg_flying", "overload_time", "dropped_recently",
                     "passed", "dropped"):
            assert getattr(fast, name) == getattr(pure, name), name


# -- the CPU sampler ---------------------------------------------------------------------------
def test_sampler_averages_usage_and_pushes_it():
    counter = [0.0, 0.0]

    def reader():
        return counter[0], counter[1]

    sampler = CpuSampler(reader, interval=3600.0, beta=0.5)
    assert sampler.sample() == 0.0  # the first reading only sets the origin
    counter[:] = [1.0, 2.0]         # half busy
    assert sampler.sample() == pytest.approx(0.25)
    counter[:] = [3.0, 4.0]         # fully busy
    assert sampler.sample() == pytest.approx(0.625)
    counter[:] = [10.0, 4.0]        # a counter glitch: no time passed, nothing folded
    assert sampler.sample() == pytest.approx(0.625)
    s = LoadShedder(cpu=sampler)
    try:
        assert s.cpu == pytest.approx(0.625)
        counter[:] = [20.0, 10.0]   # busy beyond 1 (a clock step): clipped to 1
        sampler.sample()
        assert s.cpu == pytest.approx(0.8125)
    finally:
        sampler.stop()


def test_sampler_thread_samples_in_the_background():
    ticks = []

    def reader():
        ticks.append(1)
        return float(len(ticks)), 2.0 * len(ticks)

    sampler = CpuSampler(reader, interval=0.01, beta=0.0)
    try:
        assert sampler() == 0.0
        deadline = time.monotonic() + SAFETY
        while sampler.usage != 0.5:
            assert time.monotonic() < deadline, "the sampler thread never sampled"
            threading.Event().wait(0.01)
        thread = sampler._thread
        assert thread is not None and thread.daemon and thread.name == "gameguard-cpu-sampler"
    finally:
        sampler.stop()
    assert sampler._thread is None


def test_real_counter_reads_and_moves():
    reader = cpu_reader()
    busy0, total0 = reader()
    end = time.monotonic() + 0.05
    while time.monotonic() < end:  # burn a little CPU so the counter moves
        pass
    busy1, total1 = reader()
    assert total1 > total0 and busy1 > busy0
    # a share of the capacity; the two counters are not read at one instant (the sampler
    # clips the share to [0, 1])
    assert 0.0 < (busy1 - busy0) / (total1 - total0) < 1.5


def test_one_lazy_daemon_thread_per_process():
    code = """
import threading, gameguard.shedder as sh
names = lambda: [t.name for t in threading.enumerate()]
assert "gameguard-cpu-sampler" not in names(), names()
a, b = sh.LoadShedder(), sh.LoadShedder()
assert names().count("gameguard-cpu-sampler") == 1, names()
assert sh.default_sampler() is sh.default_sampler()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=SAFETY)  # exits: the daemon thread keeps nothing alive
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_forked_worker_samples_its_own_cpu():
    """A pre-fork server: shedders made before ``fork`` keep getting readings in the child."""
    code = """
import os, threading, time, gameguard.shedder as sh
ticks = []
sampler = sh.CpuSampler(lambda: (ticks.append(1) or float(len(ticks)), 2.0 * len(ticks)),
                        interval=0.01, beta=0.0)
s = sh.LoadShedder(cpu=sampler)
pid = os.fork()
if pid == 0:
    ticks.clear()
    deadline = time.monotonic() + 10
    while len(ticks) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(0 if len(ticks) >= 3 and s.cpu == 0.5 else 1)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child", os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.01)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=SAFETY + 10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child 0", (out.stdout, out.stderr)
