"""Rate limiting a MOBA server: a team fight on a HybridLimiter, and a key-spraying client
against a KeyedLimiter.

Seeded and simulated (a :class:`ManualClock`, no sleeping):

1. One player's connection for 60 s: movement heartbeats at 10 Hz all along, skill casts
   at ~3/s in lane, a team fight from t=20 s to t=27 s at ~40 casts/s (the seed's measured
   peak is 42/s), and a scripted objective fight at t=45 s where the server pins
   ``teamfight`` and then hands back to ``auto``, then a cast macro firing 150/s for 2 s.
   The limiter switches to ``teamfight`` by itself three dense frames into the fight and
   back once it calms, so casts get 68/s and heartbeats still 12/s (10 Hz clients lose
   nothing); the macro is cut down to the budget; the total stays within the budget the
   configuration allows.
2. 2,000 honest players (about 5 calls/s each, now and then a burst) share a per-player
   ``KeyedLimiter(5, 10, max_keys=20_000)`` with a hostile client spraying 200,000 fresh
   ids. The table stays bounded (the sprayed keys refill after a fraction of a second,
   so dropping them loses nothing), and honest players keep their own budgets.
"""
from __future__ import annotations

import random
import time
from typing import Any, Callable, Dict, List, Tuple

from ..clock import ManualClock
from ..ratelimit import HybridLimiter, KeyedLimiter
from . import header

FRAME = 0.1


def _teamfight(seed: int, out: Callable[[str], Any]) -> Dict[str, Any]:
    rng = random.Random(seed)
    clock = ManualClock()
    limiter = HybridLimiter(clock=clock, name="player-17")
    events: List[Tuple[float, str]] = []
    for i in range(600):  # heartbeats, 10 Hz with jitter
        events.append((i * 0.1 + rng.uniform(0.0, 0.01), "steady"))
    t = 0.0
    while t < 60.0:  # skill casts: Poisson, faster in fights, a macro at 52-54 s
        fight = 20.0 <= t < 27.0 or 45.0 <= t < 48.0
        t += rng.expovariate(150.0 if 52.0 <= t < 54.0 else 40.0 if fight else 3.0)
        events.append((t, "burst"))
    events.sort()
    phases = {"lane": [0, 0, 0, 0], "fight": [0, 0, 0, 0], "macro": [0, 0, 0, 0]}
    # per phase: casts admitted/refused, heartbeats admitted/refused
    timeline: List[str] = []
    mode = limiter.mode
    pinned = False
    for at, kind in events:
        if at >= 60.0:
            break
        clock.advance(at - clock())
        if not pinned and at >= 45.0 and at < 48.0:
            limiter.set_mode("teamfight")  # the server knows the objective fight started
            pinned = True
            timeline.append(f"{at:6.2f} s  set_mode('teamfight')   (server: objective fight)")
        if pinned and at >= 48.0:
            limiter.set_mode("auto")
            pinned = False
            timeline.append(f"{at:6.2f} s  set_mode('auto')")
        ok = limiter.try_acquire(kind)
        phase = ("fight" if 20.0 <= at < 27.0 or 45.0 <= at < 48.0 else
                 "macro" if 52.0 <= at < 54.0 else "lane")
        idx = (0 if kind == "burst" else 2) + (0 if ok else 1)
        phases[phase][idx] += 1
        now_mode = limiter.mode
        if now_mode != mode:
            snap = limiter.snapshot()
            timeline.append(f"{snap['switched_at']:6.2f} s  {mode} → {now_mode}   "
                            f"(casts {snap['burst_rate']:.0f}/s, heartbeats "
                            f"{snap['steady_rate']:.0f}/s)")
            mode = now_mode
    clock.advance(60.0 - clock())
    snap = limiter.snapshot()
    admitted = snap["admitted"]["burst"] + snap["admitted"]["steady"]
    out("  HybridLimiter, one player, 60 s: a budget of 80 calls/s, split 24 casts + 56")
    out("  heartbeats a second in lane, 68 + 12 in a team fight; its mode changes:")
    for line in timeline:
        out("    " + line)
    out(f"  {'phase':>9s} {'casts ok':>9s} {'refused':>8s} {'beats ok':>9s} {'refused':>8s}")
    for name, (c_ok, c_no, b_ok, b_no) in phases.items():
        out(f"  {name:>9s} {c_ok:>9d} {c_no:>8d} {b_ok:>9d} {b_no:>8d}")
    out(f"  admitted {admitted:.0f} calls <= budget {limiter.budget(60.0):.0f} "
        f"(capacity + leak capacity + 80/s x 60 s)")
    return {"switches": snap["switches"], "admitted": admitted,
            "budget": limiter.budget(60.0), "casts_admitted_in_fights": phases["fight"][0],
            "casts_refused_in_fights": phases["fight"][1],
            "macro_casts_admitted": phases["macro"][0], "macro_casts_refused": phases["macro"][1],
            "heartbeats_refused": sum(p[3] for p in phases.values())}


def _players(seed: int, spray: bool) -> Dict[str, Any]:
    honest_rng = random.Random(seed)
    spray_rng = random.Random(seed + 1)
    clock = ManualClock()
    limiter = KeyedLimiter(5, 10, max_keys=20_000, clock=clock, name="per-player", seed=seed)
    acquire = limiter.try_acquire
    ok = refused = sprayed = 0
    biggest = 0
    for tick in range(100):  # 10 s in 100 ms ticks
        clock.advance(0.1)
        for player in range(1, 2001):  # ~5.8 calls/s each, now and then a burst of 4
            r = honest_rng.random()
            for _ in range(4 if r < 0.02 else 1 if r < 0.52 else 0):
                if acquire(player):
                    ok += 1
                else:
                    refused += 1
        if spray and 20 <= tick < 80:  # the attacker: fresh ids, never repeated
            for _ in range(3334):
                acquire(spray_rng.getrandbits(62) + 10_000)
                sprayed += 1
        biggest = max(biggest, len(limiter))
    return {"limiter": limiter, "ok": ok, "refused": refused, "sprayed": sprayed,
            "biggest": biggest}


def _spray(seed: int, out: Callable[[str], Any]) -> Dict[str, Any]:
    started = time.perf_counter()
    calm = _players(seed, spray=False)
    attacked = _players(seed, spray=True)
    elapsed = time.perf_counter() - started
    limiter = attacked["limiter"]
    snap = limiter.snapshot()
    checks = calm["ok"] + calm["refused"] + attacked["ok"] + attacked["refused"] + \
        attacked["sprayed"]
    out("  KeyedLimiter(5/s, burst 10, max_keys 20,000), 10 s: 2,000 players, then the same")
    out(f"  with a client spraying {attacked['sprayed']:,} fresh ids:")
    out(f"    keys held at most {attacked['biggest']:,} <= {snap['max_keys']:,}; table "
        f"{snap['nbytes'] / 1e6:.2f} MB (bound {limiter.max_bytes / 1e6:.2f} MB, 30 B/key)")
    out(f"    evicted {snap['evicted']['full']:,} refilled keys + "
        f"{snap['evicted']['stale']:,} stalest")
    same = (calm["ok"], calm["refused"]) == (attacked["ok"], attacked["refused"])
    out(f"    honest players: {attacked['ok']:,} admitted, {attacked['refused']:,} refused "
        f"(over their own 5/s),")
    out(f"    {'identical to' if same else 'DIFFERENT from'} the run without the attacker; "
        f"{checks:,} checks in {elapsed:.2f} s")
    return {"keys_max": attacked["biggest"], "max_keys": snap["max_keys"],
            "nbytes": snap["nbytes"], "max_bytes": limiter.max_bytes,
            "spray_calls": attacked["sprayed"], "honest_admitted": attacked["ok"],
            "honest_refused": attacked["refused"], "honest_unaffected": same,
            "evicted_stale": snap["evicted"]["stale"], "evicted_full": snap["evicted"]["full"]}


def run(seed: int = 7, out: Callable[[str], Any] = print) -> Dict[str, Any]:
    """Run both simulations; print a few lines through ``out``; return the numbers."""
    header(out, "Rate limiting: a MOBA team fight and a key-spraying client",
           "casts: skill casts (burst traffic); beats: 10 Hz movement heartbeats (steady);",
           "ok / refused: calls the limiter admitted or turned away in that phase.")
    fight = _teamfight(seed, out)
    spray = _spray(seed, out)
    return {"hybrid": fight, "keyed": spray}


if __name__ == "__main__":
    run()
