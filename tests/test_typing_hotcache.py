"""HotKeyCache's types as a user's ``mypy --strict`` sees them: generic values, typed
loaders, and ``cached`` keeping the decorated signature (sync, async, methods)."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

USER_FILE = textwrap.dedent('''
    from __future__ import annotations
    from gameguard import HotKeyCache

    class Player:
        name: str = ""

    any_cache = HotKeyCache(maxsize=10)
    players: HotKeyCache[Player] = HotKeyCache(ttl=5.0)

    def load_player(pid: int) -> Player:
        return Player()

    async def aload_player(pid: int) -> Player:
        return Player()

    reveal_type(any_cache)
    reveal_type(players.get(1))
    reveal_type(players.get(1, "none"))
    reveal_type(players.get_or_load(7, load_player))

    async def main() -> None:
        reveal_type(await players.get_or_load_async(7, aload_player))
        reveal_type(await players.get_or_load_async(7, load_player))

    @any_cache.cached
    def price(item: str, currency: str = "gold") -> int:
        return 1

    @any_cache.cached(ttl=3.0, key=lambda season: ("board", season))
    async def leaderboard(season: int) -> list[str]:
        return []

    class Shop:
        @any_cache.cached
        def stock(self, item: str) -> float:
            return 1.0

    reveal_type(price)
    reveal_type(leaderboard)
    reveal_type(Shop().stock)
''')

WRONG_FILE = textwrap.dedent('''
    from __future__ import annotations
    from gameguard import HotKeyCache

    cache: HotKeyCache[int] = HotKeyCache()

    @cache.cached
    def price(item: str) -> int:
        return 1

    def by_name(name: str) -> int:
        return len(name)

    price(3)                                  # wrong: the argument is a str
    cache.get_or_load(5, by_name)             # wrong: the loader takes a str key
    cache.set("k", "not an int")              # wrong: the value type is int
    cache.get_or_load("k", lambda k: "str")   # wrong: the loader returns a str
''')


def mypy(tmp_path: Path, source: str) -> str:
    user = tmp_path / "user.py"
    user.write_text(source)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir", str(tmp_path / ".mypy_cache"), str(user)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    return result.stdout + result.stderr


@pytest.mark.slow
def test_revealed_types(tmp_path: Path) -> None:
    out = mypy(tmp_path, USER_FILE)
    revealed = re.findall(r'Revealed type is "(.*)"', out)
    assert "error" not in out.replace("Revealed", ""), out
    assert revealed == [
        "gameguard.hotcache.HotKeyCache[Any]",
        "user.Player | None",
        "user.Player | str",
        "user.Player",
        "user.Player",
        "user.Player",
        "def (item: str, currency: str =) -> int",
        "def (season: int) -> typing.Coroutine[Any, Any, list[str]]",
        "def (item: str) -> float",
    ], out


@pytest.mark.slow
def test_wrong_calls_are_errors(tmp_path: Path) -> None:
    out = mypy(tmp_path, WRONG_FILE)
    lines = sorted({int(n) for n in re.findall(r"user\.py:(\d+): error", out)})
    wrong = [i for i, line in enumerate(WRONG_FILE.splitlines(), 1) if "# wrong" in line]
    assert len(wrong) == 4 and lines == wrong, out
