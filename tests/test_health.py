"""health(): ready unless draining, a critical breaker is open, or a critical backend is
down; checks name every drain and every critical name."""
from __future__ import annotations

import gc

from gameguard import CircuitBreaker, ManualClock
from gameguard.drain import Drain
from gameguard.health import health
from gameguard.rules import Rules


class Backend:
    """The duck-typed surface a shared backend (Redis, PostgreSQL) offers health()."""

    def __init__(self, name, available):
        self.name, self.available = name, available

    def stats(self):
        return {"decisions": 0, "fallback_decisions": 0, "errors": 0, "leases": 0}


def test_drains_from_the_registry():
    gc.collect()  # drains of earlier tests are gone
    drain = Drain(name="health-drain")
    report = health()
    assert report["ready"] is True and report["checks"]["health-drain"] == "serving"
    drain.start()
    report = health()
    assert report == {"ready": False, "checks": {**report["checks"],
                                                 "health-drain": "draining"}}
    del drain
    gc.collect()
    assert "health-drain" not in health()["checks"]


def test_critical_breakers(twin):
    clock = ManualClock()
    db = CircuitBreaker("db", clock=clock, open_duration=5)
    cache = CircuitBreaker("cache", clock=clock)
    objects = [db, cache]
    assert health(["db"], objects=objects) == {"ready": True, "checks": {"db": "closed"}}
    cache.force_open()  # not critical: not in checks, no effect
    assert health(["db"], objects=objects) == {"ready": True, "checks": {"db": "closed"}}
    db.force_open()
    assert health(["db"], objects=objects) == {"ready": False, "checks": {"db": "forced_open"}}
    db.reset()
    db.record_failure()  # minimum_calls not reached: still closed
    assert health("db", objects=objects)["ready"] is True
    for _ in range(30):
        db.record_failure()
    assert health(["db"], objects=objects) == {"ready": False, "checks": {"db": "open"}}
    clock.advance(5)
    assert health(["db"], objects=objects) == {"ready": True, "checks": {"db": "half_open"}}


def test_rule_breakers_by_resource_name(twin):
    rules = Rules({"resource": {"lobby:Join": {"breaker": {"minimum_calls": 1}}}})
    breaker = rules.rule("lobby:Join").breaker
    breaker.force_open()
    report = health(["lobby:Join"], objects=[rules, *rules.rule("lobby:Join").guards])
    assert report == {"ready": False, "checks": {"lobby:Join": "forced_open"}}


def test_backends_and_missing_names():
    up, down = Backend("redis", True), Backend("postgres", False)
    assert health(["redis"], objects=[up, down]) == {"ready": True,
                                                     "checks": {"redis": "available"}}
    assert health(["redis", "postgres"], objects=[up, down]) == {
        "ready": False, "checks": {"redis": "available", "postgres": "unavailable"}}
    assert health(["typo"], objects=[up]) == {"ready": False, "checks": {"typo": "missing"}}


def test_the_least_ready_of_a_shared_name_wins():
    clock = ManualClock()
    old, new = CircuitBreaker("x", clock=clock), CircuitBreaker("x", clock=clock)
    old.force_open()
    for objects in ([old, new], [new, old]):
        assert health(["x"], objects=objects) == {"ready": False,
                                                  "checks": {"x": "forced_open"}}
