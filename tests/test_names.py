"""Default names are stable across runs and hosts: a base per class, numbered by creation."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gameguard as gg
objs = [gg.CircuitBreaker(), gg.CircuitBreaker(), gg.Bulkhead(2), gg.TokenBucket(5),
        gg.CircuitBreaker(name="mine"), gg.CircuitBreaker(), gg.HotKeyCache(maxsize=10),
        gg.KeyedLimiter(rate=1), gg.LeakyBucket(5), gg.HybridLimiter(), gg.AdaptiveThrottle()]
print(" ".join(o.name for o in objs))
"""


def test_default_names_are_the_same_on_every_run() -> None:
    runs = {subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)}
    assert runs == {"breaker breaker-2 bulkhead token_bucket mine breaker-3 cache keyed_limiter "
                    "leaky_bucket hybrid_limiter throttle"}
