"""The pattern table the gRPC and HTTP integrations route by, and retry-after rounding."""
from __future__ import annotations

import pytest

from gameguard import ConfigurationError, RateLimitExceeded
from gameguard._edge import PatternTable, retry_after_ms, retry_after_seconds


def test_most_specific_pattern_wins() -> None:
    t = PatternTable({"*": "any", "/game.Match/*": "svc", "/game.Match/Find": "find",
                      "/game.Match/Deep/*": "deep"})
    assert t.lookup("/game.Match/Find") == "find"
    assert t.lookup("/game.Match/Cancel") == "svc"
    assert t.lookup("/game.Match/Deep/x") == "deep"
    assert t.lookup("/game.Chat/Send") == "any"
    assert t.lookup("/game.Match/Find") == "find"  # cached answer is the same


def test_prefix_keeps_its_slash_and_no_match_is_none() -> None:
    t = PatternTable({"/match/*": 1})
    assert t.lookup("/match/x") == 1
    assert t.lookup("/matchmaking") is None
    assert t.lookup("/other") is None


@pytest.mark.parametrize("bad", [{"": 1}, {"/a*b": 1}, {3: 1}])
def test_bad_patterns_are_named(bad: dict) -> None:
    with pytest.raises(ConfigurationError, match="pattern|patterns"):
        PatternTable(bad)


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigurationError, match="guards must map"):
        PatternTable([("*", 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize("ra,secs,ms", [(None, None, None), (0.0, 1, 0), (0.0001, 1, 1),
                                        (1.0, 1, 1000), (1.2, 2, 1200),
                                        (float("inf"), None, None), (float("nan"), None, None)])
def test_retry_after_rounding(ra: object, secs: object, ms: object) -> None:
    exc = RateLimitExceeded(retry_after=ra)  # type: ignore[arg-type]
    assert retry_after_seconds(exc) == secs
    assert retry_after_ms(exc) == ms
