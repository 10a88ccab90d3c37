"""One key identity for KeyedLimiter and HotKeyCache (both twins): equal keys are one key
(``1``, ``1.0``, ``True``), a tuple is one key by value, and the limiter fingerprints with the
cache's own ``key_hash``."""
from __future__ import annotations

import enum
import importlib
import itertools

import pytest

from gameguard import HotKeyCache, KeyedLimiter, ManualClock
from gameguard.ratelimit import PROCESS_SEED


class Level(enum.IntEnum):
    ONE = 1
    TWO = 2


class Tag(str, enum.Enum):
    A = "a"


class Point:
    """A user key type with value equality."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x

    def __hash__(self) -> int:
        return hash(("Point", self.x))


KEYS = [0, 1, 1.0, True, False, 0.0, -0.0, Level.ONE, Level.TWO, 2, 2.5, 2 ** 63, 2 ** 80,
        float(2 ** 80), -(2 ** 70), "a", Tag.A, "1", "\ud800", b"1", b"a", (1, "a"), (True, "a"),
        (1.0, ("a", 2)), (1, ("a", 2.0)), (), ((),), None, frozenset({1}), Point(1), Point(2)]
# not here: Fraction/Decimal equal to a float or int. key_hash documents them as other keys
# than that number; the pure cache still finds them when both land in one shard.


def test_limiter_and_cache_agree_key_for_key(twin):
    """For every pair: the cache finds one under the other iff the limiter shares their
    bucket. The cache is the reference (a dict-like table: equal keys are one key)."""
    for a, b in itertools.product(KEYS, repeat=2):
        cache = HotKeyCache(maxsize=64, ttl=60.0, clock=ManualClock())
        cache.set(a, "v")
        cache_same = cache.get(b, None) == "v"
        lim = KeyedLimiter(1, 1, clock=ManualClock())
        assert lim.try_acquire(a)
        limiter_same = not lim.try_acquire(b)
        assert cache_same == limiter_same, (a, b)
        assert cache_same == (a == b and hash(a) == hash(b)), (a, b)


def test_the_limiter_fingerprint_is_the_caches_key_hash(kernels):
    keyed, sketch = kernels("keyed"), kernels("sketch")
    for seed in (0, 12345, PROCESS_SEED):
        t = keyed.KeyedTable(keyed.TOKEN, 1.0, 1.0, 10, float("inf"), seed)
        for key in KEYS:
            assert t.fingerprint(key) == (sketch.key_hash(key, seed) or 1), key


def test_twins_fingerprint_alike():
    fast = importlib.import_module("gameguard._fast.keyed")
    pure = importlib.import_module("gameguard._pure.keyed")
    a = fast.KeyedTable(fast.TOKEN, 1.0, 1.0, 10, float("inf"), 99)
    b = pure.KeyedTable(pure.TOKEN, 1.0, 1.0, 10, float("inf"), 99)
    for key in KEYS:
        if isinstance(key, (frozenset, Point)) or key is None:
            continue  # through hash(): alike within one process only, which is all we need
        assert a.fingerprint(key) == b.fingerprint(key), key


@pytest.mark.parametrize("bad", [[1], {"a": 1}, bytearray(b"x"), (1, [2])])
def test_unhashable_keys_are_type_errors(twin, bad):
    lim = KeyedLimiter(1, clock=ManualClock())
    with pytest.raises(TypeError):
        lim.try_acquire(bad)
    assert len(lim) == 0
