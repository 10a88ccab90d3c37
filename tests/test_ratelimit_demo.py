"""The rate-limit demo runs on both twins, prints readable lines and returns its numbers."""
from __future__ import annotations

from gameguard.demos import ratelimit as demo


def test_demo(twin: str) -> None:
    lines: list = []
    result = demo.run(seed=7, out=lines.append)
    assert lines and all(isinstance(line, str) for line in lines)
    hybrid, keyed = result["hybrid"], result["keyed"]
    assert hybrid["switches"] >= 2 and hybrid["admitted"] <= hybrid["budget"]
    assert hybrid["heartbeats_refused"] == 0 and hybrid["macro_casts_refused"] > 0
    assert keyed["keys_max"] <= keyed["max_keys"] and keyed["nbytes"] <= keyed["max_bytes"]
    assert keyed["honest_unaffected"] and keyed["spray_calls"] > 100_000
    assert demo.run(seed=7, out=lambda s: None) == result  # seeded: same numbers again
