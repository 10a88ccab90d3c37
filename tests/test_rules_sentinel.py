"""Sentinel's rule JSON: flow rules become limits, circuit-breaker (degrade) rules become
breakers, with the behaviour Sentinel gives them; unknown fields and values are refused."""
from __future__ import annotations

import json

import pytest

from gameguard import (CircuitOpenError, ConfigurationError, LeakyBucket, ManualClock,
                       RateLimitExceeded, TokenBucket)
from gameguard.rules import SENTINEL_IGNORED, QueueingLeakyBucket, Rules

SEED_FLOW = {"resource": "user-service:GetProfile", "threshold": 1000, "controlBehavior": 0,
             "statIntervalMs": 1000}


class Boom(Exception):
    pass


def test_seed_flow_rule_is_a_1000_per_second_rejecting_limiter(twin):
    clock = ManualClock()
    rules = Rules.from_sentinel(flow=[SEED_FLOW], clock=clock)
    limit = rules.rule("user-service:GetProfile").limit
    assert type(limit) is TokenBucket
    assert (limit.rate, limit.capacity) == (1000.0, 1000.0)

    @rules.guard("user-service:GetProfile")
    def get_profile():
        return "profile"

    admitted = rejected = 0
    for _ in range(3):  # three seconds of 1,500 calls a second, evenly spread
        for _ in range(1500):
            clock.advance(1 / 1500)
            try:
                get_profile()
                admitted += 1
            except RateLimitExceeded:
                rejected += 1
    # a full first second (1,000 stored) plus 1,000/s refill: never more than cap + rate*T
    assert admitted <= 1000 + 1000 * 3
    assert admitted >= 3000  # and it does not reject what the rate allows
    assert rejected == 4500 - admitted > 0


def test_flow_interval_scales_the_rate(twin):
    rules = Rules.from_sentinel(flow=[{"resource": "a", "threshold": 50,
                                       "statIntervalInMs": 500}])
    limit = rules.rule("a").limit
    assert (limit.rate, limit.capacity) == (100.0, 50.0)


def test_throttling_flow_rule_is_a_uniform_queue(twin):
    clock = ManualClock()
    rules = Rules.from_sentinel(flow=[{"resource": "a", "threshold": 20, "controlBehavior": 1,
                                       "maxQueueingTimeMs": 500}], clock=clock)
    limit = rules.rule("a").limit
    assert isinstance(limit, QueueingLeakyBucket)
    assert (limit.rate, limit.capacity, limit.max_wait) == (20.0, 1.0, 0.5)
    f = rules.guard("a")(clock)
    assert [f() for _ in range(4)] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    no_wait = Rules.from_sentinel(flow=[{"resource": "a", "threshold": 20,
                                         "controlBehavior": 1}])
    assert type(no_wait.rule("a").limit) is LeakyBucket  # no queueing time: a meter


def test_degrade_error_ratio(twin):
    clock = ManualClock()
    rules = Rules.from_sentinel(degrade=[{"resource": "a", "strategy": 1, "threshold": 0.5,
                                          "minRequestAmount": 4, "statIntervalMs": 2000,
                                          "retryTimeoutMs": 3000, "probeNum": 2}], clock=clock)
    b = rules.rule("a").breaker
    assert (b.failure_rate, b.minimum_calls, b.window, b.open_duration, b.half_open_calls) == \
        (0.5, 4, 2.0, 3.0, 2)
    guarded = rules.guard("a")
    for fail in (True, False, True, False):
        try:
            with guarded:
                if fail:
                    raise Boom()
        except Boom:
            pass
    assert b.state == "open"
    with pytest.raises(CircuitOpenError) as info:
        with guarded:
            pass
    assert info.value.retry_after == pytest.approx(3.0)


def test_degrade_slow_ratio_and_error_count(twin):
    clock = ManualClock()
    rules = Rules.from_sentinel(degrade=[
        {"resource": "slow", "strategy": 0, "threshold": 0.5, "maxAllowedRtMs": 200,
         "minRequestAmount": 2, "statIntervalMs": 1000, "retryTimeoutMs": 1000},
        {"resource": "count", "strategy": 2, "threshold": 3, "minRequestAmount": 100,
         "statIntervalMs": 10000}], clock=clock)
    slow = rules.rule("slow").breaker
    assert (slow.slow_call_duration, slow.slow_call_rate, slow.failure_rate) == (0.2, 0.5, 1.0)
    for _ in range(2):
        with rules.guard("slow"):
            clock.advance(0.25)
    assert slow.state == "open"
    count = rules.rule("count").breaker
    assert (count.failure_count, count.failure_rate) == (3, 1.0)
    for _ in range(3):
        with pytest.raises(Boom):
            with rules.guard("count"):
                raise Boom()
    assert count.state == "open"


def test_degrade_rules_of_one_resource_make_one_breaker(twin):
    rules = Rules.from_sentinel(degrade=[
        {"resource": "a", "strategy": 1, "threshold": 0.4, "statIntervalMs": 1000},
        {"resource": "a", "strategy": 0, "threshold": 0.9, "maxAllowedRtMs": 50,
         "statIntervalMs": 1000}])
    b = rules.rule("a").breaker
    assert (b.failure_rate, b.slow_call_rate, b.slow_call_duration) == (0.4, 0.9, 0.05)
    with pytest.raises(ConfigurationError, match="window"):
        Rules.from_sentinel(degrade=[
            {"resource": "a", "strategy": 1, "threshold": 0.4, "statIntervalMs": 1000},
            {"resource": "a", "strategy": 2, "threshold": 5, "statIntervalMs": 2000}])


def test_flow_and_degrade_on_one_resource(twin):
    rules = Rules.from_sentinel(flow=[SEED_FLOW], degrade=[
        {"resource": SEED_FLOW["resource"], "strategy": 1, "threshold": 0.5}])
    rule = rules.rule(SEED_FLOW["resource"])
    assert rule.breaker is not None and rule.limit is not None
    assert rule.entry.guards == (rule.breaker, rule.limit)


def test_ignored_fields_are_accepted(twin):
    flow = dict(SEED_FLOW, id="r1", warmUpPeriodSec=10, warmUpColdFactor=3)
    Rules.from_sentinel(flow=[flow], degrade=[{"resource": "a", "strategy": 1,
                                               "threshold": 0.5, "id": "d1"}])
    assert SENTINEL_IGNORED == {"id", "warmUpPeriodSec", "warmUpColdFactor"}


@pytest.mark.parametrize("flow, words", [
    (dict(SEED_FLOW, clusterMode=True), ["'user-service:GetProfile'", "'clusterMode'"]),
    (dict(SEED_FLOW, threshold=-5), ["threshold", "-5"]),
    (dict(SEED_FLOW, threshold="many"), ["threshold", "'many'"]),
    ({"resource": "a"}, ["threshold is required"]),
    (dict(SEED_FLOW, controlBehavior=2), ["controlBehavior", "2"]),
    (dict(SEED_FLOW, tokenCalculateStrategy=1), ["tokenCalculateStrategy", "1"]),
    (dict(SEED_FLOW, statIntervalMs=0), ["statIntervalMs", "0"]),
    (dict(SEED_FLOW, maxQueueingTimeMs=100), ["maxQueueingTimeMs", "controlBehavior 1"]),
    (dict(SEED_FLOW, relationStrategy=1), ["relationStrategy"]),
    (dict(SEED_FLOW, refResource="other"), ["refResource", "'other'"]),
    (dict(SEED_FLOW, resource=""), ["resource"]),
])
def test_bad_flow_rules(flow, words):
    with pytest.raises(ConfigurationError) as info:
        Rules.from_sentinel(flow=[flow])
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("rule, words", [
    ({"resource": "a", "strategy": 3, "threshold": 1}, ["strategy", "3"]),
    ({"resource": "a", "threshold": 0.5}, ["strategy", "None"]),
    ({"resource": "a", "strategy": 1, "threshold": 1.5}, ["threshold", "1.5"]),
    ({"resource": "a", "strategy": 2, "threshold": 2.5}, ["threshold", "2.5"]),
    ({"resource": "a", "strategy": 0, "threshold": 0.5}, ["maxAllowedRtMs"]),
    ({"resource": "a", "strategy": 1, "threshold": 0.5, "minRequestAmount": 0},
     ["minRequestAmount", "0"]),
    ({"resource": "a", "strategy": 1, "threshold": 0.5, "retryTimeoutMs": -1},
     ["retryTimeoutMs", "-1"]),
    ({"resource": "a", "strategy": 1, "threshold": 0.5, "grade": 0}, ["'a'", "'grade'"]),
])
def test_bad_degrade_rules(rule, words):
    with pytest.raises(ConfigurationError) as info:
        Rules.from_sentinel(degrade=[rule])
    for word in words:
        assert word in str(info.value)


def test_two_flow_rules_for_one_resource_are_refused():
    with pytest.raises(ConfigurationError, match="second flow rule"):
        Rules.from_sentinel(flow=[SEED_FLOW, SEED_FLOW])


def test_rules_must_be_lists_of_objects():
    with pytest.raises(ConfigurationError, match="list"):
        Rules.from_sentinel(flow=SEED_FLOW)
    with pytest.raises(ConfigurationError, match="#1"):
        Rules.from_sentinel(flow=[SEED_FLOW, 3])


def test_sentinel_files_are_read_again_on_reload(twin, tmp_path):
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps([SEED_FLOW]))
    rules = Rules.from_sentinel(flow=flow)
    old = rules.rule(SEED_FLOW["resource"]).limit
    assert rules.reload() is False and rules.rule(SEED_FLOW["resource"]).limit is old
    flow.write_text(json.dumps([dict(SEED_FLOW, threshold=10)]))
    assert rules.reload() is True
    assert rules.rule(SEED_FLOW["resource"]).limit.rate == 10.0
    flow.write_text(json.dumps([dict(SEED_FLOW, threshold=10)])[:-3])  # half-written
    with pytest.raises(ConfigurationError, match="syntax error"):
        rules.reload()
    assert rules.rule(SEED_FLOW["resource"]).limit.rate == 10.0
    assert (rules.reloads_succeeded, rules.reloads_failed) == (2, 1)
