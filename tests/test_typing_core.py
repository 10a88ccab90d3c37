"""Under ``mypy --strict``, the core guard decorators keep the decorated function's signature:
``@breaker``, ``@breaker(fallback=...)`` and ``@pipeline(...)``, on sync and async functions.
A small user file is type-checked in a scratch directory; its ``reveal_type`` lines must show
the original signatures, its deliberate mistakes must be errors, and nothing else may be."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from typing import Dict, List

import pytest

USER = textwrap.dedent('''
    import gameguard as gg

    breaker = gg.CircuitBreaker("matchmaking")
    bulkhead = gg.Bulkhead(4)

    @breaker
    def find_match(player_id: int, region: str = "eu") -> dict[str, int]:
        return {region: player_id}

    @breaker(fallback=lambda player_id: "later")
    def queue_eta(player_id: int) -> str:
        return "now"

    @breaker
    async def load_profile(player_id: int, *, fresh: bool = False) -> bytes:
        return b""

    @gg.pipeline(breaker, bulkhead)
    def damage(base: float, *, crit: float = 1.0) -> float:
        return base * crit

    @gg.pipeline(breaker, bulkhead, fallback=lambda *args: 0.0)
    async def fetch_score(player_id: int) -> float:
        return 1.0

    reveal_type(find_match)      # REVEAL find_match
    reveal_type(queue_eta)       # REVEAL queue_eta
    reveal_type(load_profile)    # REVEAL load_profile
    reveal_type(damage)          # REVEAL damage
    reveal_type(fetch_score)     # REVEAL fetch_score
    reveal_type(gg.SQLiteStore)  # REVEAL SQLiteStore

    find_match("p1")                 # ERROR
    queue_eta(1, 2)                  # ERROR
    load_profile(1, fresh="yes")     # ERROR
    damage(2.0, crit="x")            # ERROR
    total: int = fetch_score(1)      # ERROR
    gg.Sagas                         # ERROR
''')

#: what each revealed type must contain: the parameters and the return type, unchanged
#: (builtin names unqualified: older mypy releases write them as ``builtins.int``)
EXPECTED = {
    "find_match": ["player_id: int", "region: str =",
                   "-> dict[str, int]"],
    "queue_eta": ["player_id: int", "-> str"],
    "load_profile": ["player_id: int", "*, fresh: bool =",
                     "-> typing.Coroutine[Any, Any, bytes]"],
    "damage": ["base: float", "*, crit: float =", "-> float"],
    "fetch_score": ["player_id: int", "-> typing.Coroutine[Any, Any, float]"],
    "SQLiteStore": ["gameguard.saga.sqlite.SQLiteStore"],
}


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> Dict[int, List[str]]:
    """mypy's messages on the user file, by line."""
    work = tmp_path_factory.mktemp("typing")
    (work / "user.py").write_text(USER)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--hide-error-context",
         "--cache-dir", str(work / ".mypy_cache"), "user.py"],
        cwd=work, capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 1: the errors above
    by_line: Dict[int, List[str]] = {}
    for line in result.stdout.splitlines():
        found = re.match(r"user\.py:(\d+): (.*)", line)
        assert found, line
        by_line.setdefault(int(found.group(1)), []).append(found.group(2))
    return by_line


def lines_marked(marker: str) -> Dict[int, str]:
    return {n: line.split(marker, 1)[1].strip()
            for n, line in enumerate(USER.splitlines(), 1) if marker in line}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_decorated_signature_is_kept(mypy_output: Dict[int, List[str]], name: str) -> None:
    line = next(n for n, what in lines_marked("# REVEAL").items() if what == name)
    notes = [m for m in mypy_output.get(line, []) if "Revealed type" in m]
    assert len(notes) == 1, mypy_output.get(line)
    revealed = notes[0].replace("builtins.", "")
    for part in EXPECTED[name]:
        assert part in revealed, revealed


def test_wrong_calls_are_errors_and_nothing_else_is(mypy_output: Dict[int, List[str]]) -> None:
    errors = {n for n, messages in mypy_output.items()
              if any(m.startswith("error:") for m in messages)}
    assert errors == set(lines_marked("# ERROR")), mypy_output
