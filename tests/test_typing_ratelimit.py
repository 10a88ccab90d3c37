"""``KeyedLimiter.limit`` and ``@limiter(key=...)`` keep the decorated signature under
``mypy --strict``: a small user file is type-checked in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

USER_FILE = '''
from gameguard import KeyedLimiter, TokenBucket

limiter = KeyedLimiter(5)


@limiter.limit(key=lambda player_id, *a, **kw: player_id)
def cast(player_id: int, spell: str) -> float:
    return 1.0


@limiter(key=lambda player_id, *a, **kw: player_id, cost=2)
async def move(player_id: int, x: float, *, run: bool = False) -> str:
    return "ok"


def heal(player_id: int) -> bool:
    return True


healed = limiter(heal, key=lambda p: p)
bucket = TokenBucket(10)

reveal_type(cast)
reveal_type(move)
reveal_type(healed)
reveal_type(bucket.rate)
cast(1, "fire")
cast("one", "fire")  # E: wrong argument type
coro = move(1, 2.0, run=3)  # E: wrong keyword type
'''


def _mypy(tmp_path: Path) -> str:
    path = tmp_path / "user_code.py"
    path.write_text(textwrap.dedent(USER_FILE))
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--cache-dir", str(tmp_path / ".mypy_cache"), str(path)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "MYPY_FORCE_COLOR": "0"})
    return out.stdout + out.stderr


def test_keyed_decorators_keep_the_signature(tmp_path: Path) -> None:
    out = _mypy(tmp_path)
    lines = out.splitlines()
    revealed = [line.split("Revealed type is ", 1)[1].replace("builtins.", "")
                .replace("typing.", "") for line in lines if "Revealed type is" in line]
    assert len(revealed) == 4, out
    assert revealed[0] == '"def (player_id: int, spell: str) -> float"'
    assert revealed[1].startswith('"def (player_id: int, x: float, *, run: bool =) -> '
                                  'Coroutine['), revealed[1]
    assert revealed[1].endswith('str]"'), revealed[1]
    assert revealed[2] == '"def (player_id: int) -> bool"'
    assert revealed[3] == '"float"'
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 2, out
    assert ':29: error: Argument 1 to "cast" has incompatible type "str"' in errors[0], out
    assert ':30: error: Argument "run" to "move" has incompatible type "int"' in errors[1], out
