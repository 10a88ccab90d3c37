"""The weak registry: order of creation, and objects leave it when collected."""
from __future__ import annotations

import gc

from gameguard._registry import hold, register, registry


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


def test_hold_keeps_what_registers_while_holding_and_only_then() -> None:
    kept: list[object] = []
    before = Thing()
    register(before)
    hold(kept)
    try:
        register(Thing())
        register(Thing())
    finally:
        hold(kept, False)
    register(Thing())          # after: not held, so it leaves with its last reference
    gc.collect()
    assert len(kept) == 2 and before not in kept
    alive = [o for o in registry() if isinstance(o, Thing)]
    assert alive == [before, *kept]
    del alive
    kept.clear()
    gc.collect()
    assert [o for o in registry() if isinstance(o, Thing)] == [before]
