"""The weak registry: order of creation, and objects leave it when collected."""
from __future__ import annotations

import gc

from gameguard._registry import register, registry


class Thing:
    pass


def test_registry_keeps_creation_order_and_drops_the_dead() -> None:
    a, b, c = Thing(), Thing(), Thing()
    for t in (a, b, c):
        register(t)
    live = [o for o in registry() if isinstance(o, Thing)]
    assert live == [a, b, c]
    del b, live
    gc.collect()
    assert [o for o in registry() if isinstance(o, Thing)] == [a, c]
