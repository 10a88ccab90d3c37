"""HybridLimiter on both twins: defaults, exact mode switching, pinning, the budget bound."""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gameguard import ConfigurationError, ManualClock, RateLimitExceeded, _impl
from gameguard.ratelimit import HybridLimiter


def test_defaults_from_the_seed(twin: str) -> None:
    clock = ManualClock()
    h = HybridLimiter(clock=clock)
    assert (h.token_rate, h.leak_rate, h.capacity, h.leak_capacity) == (50.0, 30.0, 100.0, 5.0)
    assert h.modes == {"laning": 0.30, "teamfight": 0.85}
    assert h.mode == "laning" and h.auto
    assert h.rates() == pytest.approx({"burst": 24.0, "steady": 56.0})
    h.set_mode("teamfight")
    assert h.rates() == pytest.approx({"burst": 68.0, "steady": 12.0})
    assert h.budget(2.0) == 100 + 5 + 160


def test_burst_and_steady_draw_from_their_own_buckets(twin: str) -> None:
    clock = ManualClock()
    h = HybridLimiter(clock=clock, capacity=10, leak_capacity=2)
    assert sum(h.try_acquire("burst") for _ in range(20)) == 10
    assert sum(h.try_acquire("steady") for _ in range(5)) == 2
    clock.advance(0.05)  # laning: burst +1.2, steady drains 2.8
    assert h.try_acquire("burst") and not h.try_acquire("burst")
    assert h.try_acquire("steady") and h.try_acquire("steady") and not h.try_acquire("steady")
    assert h.retry_after("steady") == pytest.approx(1 / 56)


def test_switches_to_teamfight_at_end_of_third_dense_frame(twin: str) -> None:
    clock = ManualClock()
    h = HybridLimiter(clock=clock)  # frame 0.1 s, dense: > 1.2 attempts per frame
    for frame in range(3):
        clock.advance(0.01 if frame == 0 else 0.1)
        h.try_acquire("burst")
        h.try_acquire("burst")  # 2 attempts > 1.2: dense
        assert h.mode == "laning"
    # still inside the third dense frame: no switch yet
    clock.advance(0.08)
    assert h.mode == "laning" and clock() < 0.3
    clock.advance(0.01 + 1e-9)  # the third frame has ended
    assert h.mode == "teamfight"
    snap = h.snapshot()
    assert snap["switches"] == 1 and snap["switched_at"] == pytest.approx(0.3)


def test_two_dense_frames_then_a_quiet_one_do_not_switch(twin: str) -> None:
    clock = ManualClock(0.05)
    h = HybridLimiter(clock=clock)
    for attempts in (2, 2, 1, 2, 2):
        for _ in range(attempts):
            h.try_acquire("burst")
        clock.advance(0.1)
    assert h.mode == "laning"


def test_calms_back_after_calm_frames(twin: str) -> None:
    clock = ManualClock(0.05)
    h = HybridLimiter(clock=clock, calm_frames=5)
    for _ in range(3):
        h.try_acquire("burst")
        h.try_acquire("burst")
        clock.advance(0.1)
    assert h.mode == "teamfight"
    clock.advance(0.39)  # 4 calm frames ended (frames 3..6)
    assert h.mode == "teamfight"
    clock.advance(0.1)  # the 5th calm frame (frame 7) ended at t = 0.8
    assert h.mode == "laning"
    assert h.snapshot()["switched_at"] == pytest.approx(0.8)


def test_switch_settles_at_old_rates_without_minting(twin: str) -> None:
    clock = ManualClock()
    h = HybridLimiter(clock=clock, capacity=10, leak_capacity=5)
    for _ in range(10):
        assert h.try_acquire("burst")
    clock.advance(0.1)  # laning: 2.4 tokens back
    h.set_mode("teamfight")
    assert h.snapshot()["burst_tokens"] == pytest.approx(2.4)
    for _ in range(50):  # flipping modes at one instant adds nothing
        h.set_mode("laning")
        h.set_mode("teamfight")
    assert h.snapshot()["burst_tokens"] == pytest.approx(2.4)
    clock.advance(0.1)  # team fight: +6.8
    assert h.snapshot()["burst_tokens"] == pytest.approx(9.2)


def test_set_mode_pins_and_auto_resumes(twin: str) -> None:
    clock = ManualClock(0.05)
    h = HybridLimiter(clock=clock)
    h.set_mode("laning")
    assert not h.auto
    for _ in range(5):
        for _ in range(3):
            h.try_acquire("burst")
        clock.advance(0.1)
    assert h.mode == "laning"  # pinned: density ignored
    h.set_mode("auto")
    assert h.auto
    for _ in range(3):
        h.try_acquire("burst")
    clock.advance(0.1)  # the streak went on while pinned: switches at this frame's end
    assert h.mode == "teamfight"
    with pytest.raises(ConfigurationError, match="name"):
        h.set_mode("siege")


def test_guards(twin: str) -> None:
    clock = ManualClock()
    h = HybridLimiter(clock=clock, capacity=2, leak_capacity=1, name="moba")

    @h
    def cast() -> str:
        return "cast"

    @h.steady
    def move() -> str:
        return "move"

    assert cast() == "cast" and cast() == "cast"
    with pytest.raises(RateLimitExceeded) as ei:
        cast()
    assert ei.value.name == "moba" and ei.value.retry_after == pytest.approx(1 / 24)
    assert move() == "move"
    with pytest.raises(RateLimitExceeded):
        move()
    assert h.steady.try_acquire(0.5) is False

    async def main() -> None:
        clock.advance(1.0)
        async with h.steady:
            pass
        with pytest.raises(RateLimitExceeded):
            async with h.steady:
                pass
    asyncio.run(main())


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.tuples(
    st.sampled_from(["burst", "steady", "laning", "teamfight", "auto"]),
    st.floats(0, 0.2), st.floats(0.1, 3.0)), max_size=120),
    frame=st.sampled_from([0.05, 0.1, 0.25]))
def test_budget_bound_across_mode_switches(impl: str, ops: list, frame: float) -> None:
    """Over any interval T: admitted <= capacity + leak_capacity + R*T."""
    with _impl.use(impl):
        clock = ManualClock()
        h = HybridLimiter(clock=clock, capacity=10, leak_capacity=3, frame=frame,
                          dense_frames=2, calm_frames=3)
        log = []
        for what, dt, cost in ops:
            clock.advance(dt)
            if what in ("burst", "steady"):
                cap = 10 if what == "burst" else 3
                c = min(cost, cap)
                if h.try_acquire(what, c):
                    log.append((clock(), c))
            else:
                h.set_mode(what)
        bound = h.capacity + h.leak_capacity
        for i in range(len(log)):
            total = 0.0
            for j in range(i, len(log)):
                total += log[j][1]
                assert total <= bound + h.total_rate * (log[j][0] - log[i][0]) + 1e-9 * total


@pytest.mark.parametrize("kwargs, param", [
    ({"token_rate": 0}, "token_rate"), ({"leak_rate": float("nan")}, "leak_rate"),
    ({"capacity": -1}, "capacity"), ({"leak_capacity": 0}, "leak_capacity"),
    ({"modes": {"a": 1.5}, "calm_mode": "a", "dense_mode": "a"}, "modes"),
    ({"modes": {}}, "modes"), ({"calm_mode": "siege"}, "calm_mode"),
    ({"dense_mode": 3}, "dense_mode"), ({"dense_rate": 0}, "dense_rate"),
    ({"dense_frames": 0}, "dense_frames"), ({"calm_frames": 1.5}, "calm_frames"),
    ({"frame": -0.1}, "frame"),
])
def test_bad_config(twin: str, kwargs: dict, param: str) -> None:
    with pytest.raises(ConfigurationError, match=param):
        HybridLimiter(**kwargs)


def test_bad_kind_and_cost(twin: str) -> None:
    h = HybridLimiter(clock=ManualClock())
    for bad in ("cast", None, ["burst"], 0):
        with pytest.raises(ConfigurationError, match="kind"):
            h.try_acquire(bad)  # type: ignore[arg-type]
    for bad_cost in (0, -1, float("nan"), 101):
        with pytest.raises(ConfigurationError, match="cost"):
            h.try_acquire("burst", bad_cost)
    with pytest.raises(ConfigurationError, match="cost"):
        h.try_acquire("steady", 6)
    with pytest.raises(ConfigurationError, match="cost"):
        h.retry_after("steady", 6)


def test_documented_timeline(twin: str) -> None:
    """The timeline table of docs/ratelimit.md, call for call."""
    clock = ManualClock()
    h = HybridLimiter(clock=clock)

    def frame_with(k: int, attempts: int) -> None:
        for i in range(attempts):
            clock.advance(k * 0.1 + 0.05 + i * 0.001 - clock())
            h.try_acquire("burst")

    for k, n in enumerate([1, 2, 5, 4]):
        frame_with(k, n)
        assert h.mode == "laning"
    clock.advance(0.4 + 1e-9 - clock())
    assert h.mode == "teamfight" and h.snapshot()["switched_at"] == pytest.approx(0.4)
    for k in range(4, 34):
        frame_with(k, 2)
    for k in range(34, 64):
        frame_with(k, 1)
        assert h.mode == "teamfight"
    clock.advance(6.4 + 1e-9 - clock())
    assert h.mode == "laning" and h.snapshot()["switched_at"] == pytest.approx(6.4)
    clock.advance(0.1)
    h.set_mode("teamfight")
    clock.advance(0.5)
    assert h.mode == "teamfight" and not h.auto
    h.set_mode("auto")
    clock.advance(0.15)  # the calm streak went on while pinned: back at the next frame end
    assert h.mode == "laning" and h.snapshot()["switched_at"] == pytest.approx(7.1)
