"""``python -m gameguard``: help with no command, ``--version``, quiet on a closed pipe; the demo
prints one header style, explains its columns, folds repeated state changes and prints the
same text for the same seed."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import gameguard
from gameguard.__main__ import SECTIONS, main
from gameguard.demos import fold_changes


def cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gameguard", *args], capture_output=True,
                          text=True, timeout=120, **kw)  # type: ignore[call-overload]


def test_no_command_prints_help() -> None:
    result = cli()
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: python -m gameguard")
    assert "demo" in result.stdout and "--version" in result.stdout


def test_version_names_the_build() -> None:
    result = cli("--version")
    kernels = "compiled" if gameguard.USE_EXTENSIONS else "pure-Python"
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"gameguard {gameguard.__version__} ({kernels} kernels)\n"


def test_bad_arguments_are_a_usage_error_not_a_traceback() -> None:
    for args in (["teleport"], ["demo", "--only", "nope"], ["demo", "--seed", "x"]):
        result = cli(*args)
        assert result.returncode == 2, args
        assert "usage:" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("args", [[], ["--version"], ["demo", "--only", "breaker"]])
def test_a_closed_pipe_is_no_traceback(args: list[str]) -> None:
    """The reader is gone before the first write (what `| head -1` becomes once head has
    its line): every write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "gameguard", *args], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, \
        result.stderr
    assert result.returncode in (0, 1)  # argparse's --version exits by itself


def test_demo_piped_into_head() -> None:
    result = subprocess.run(f"'{sys.executable}' -u -m gameguard demo | head -1", shell=True,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith(f"gameguard {gameguard.__version__} (")
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr


def demo_text(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["demo", *args]) == 0
    out = capsys.readouterr().out
    # wall-clock figures are the only lines allowed to differ between runs
    return re.sub(r"in \d+\.\d+ s\b", "in <t> s", out)


#: the sections on a simulated clock; "scaleout" runs real processes against a real Redis
#: (its own test is tests/test_redis_demo.py), so its figures differ from run to run
SEEDED = [s for s in SECTIONS if s != "scaleout"]


def test_demo_output(twin: str, capsys: pytest.CaptureFixture[str]) -> None:
    only = [arg for s in SEEDED for arg in ("--only", s)]
    text = demo_text(capsys, *only)
    lines = text.splitlines()
    headers = [line for line in lines if line.startswith("==")]
    assert "scaleout" in SECTIONS and len(SEEDED) == 5
    assert len(headers) == len(SEEDED), headers  # one per section, one style
    assert all(re.fullmatch(r"== [A-Z][^=]+ ==", h) for h in headers), headers
    for h in headers:                           # each header is followed by its legend
        legend = lines[lines.index(h) + 1]
        assert legend.startswith("   ") and legend.strip(), (h, legend)
    assert not [line for line in lines if len(line) > 100]
    assert not re.search(r"0x[0-9a-f]{6,}|pid \d+|/tmp/", text)   # nothing unstable
    # the breaker's probes failing again and again: one folded line, not a dozen
    assert re.search(r"open ⇄ half_open ×\d+", text)
    assert "->" not in text                     # one arrow style: →
    assert demo_text(capsys, *only) == text     # seeded: the same text again


def test_demo_closes_with_top_showing_its_own_guards(capsys: pytest.CaptureFixture[str]) -> None:
    """The closing section is ``top``'s frame of the guards the sections built (held alive
    past their sections), with the figures those sections counted."""
    from gameguard.demos import breaker

    expected = breaker.run(out=lambda line: None)["guarded"]
    text = demo_text(capsys, "--only", "breaker", "--only", "top")
    frame = text.split("== Live view: python -m gameguard top ==")[1]
    row = re.search(r"circuit_breaker\s+matchmaking\s+(\w+)\s+([\d.]+)\s+([\d.]+)", frame)
    assert row is not None, frame
    assert row.group(1) == "closed"
    assert float(row.group(2)) == expected["dependency_calls"]   # calls that reached it
    assert float(row.group(3)) == expected["fallbacks"]          # rejected, answered by fallback
    assert "(no guards registered)" not in frame


def test_demo_only_runs_the_sections_asked(capsys: pytest.CaptureFixture[str]) -> None:
    text = demo_text(capsys, "--only", "hotcache", "--only", "breaker")
    headers = [line for line in text.splitlines() if line.startswith("==")]
    assert [h.split(":")[0] for h in headers] == ["== Hot-key cache", "== Circuit breaker"]


@pytest.mark.parametrize("changes,expected", [
    ([], []),
    ([(1.0, "closed", "open")], ["1.0 s closed → open"]),
    ([(1.0, "closed", "open"), (3.0, "open", "half_open"), (3.0, "half_open", "open"),
      (5.0, "open", "half_open"), (5.0, "half_open", "open"), (7.0, "open", "half_open"),
      (7.0, "half_open", "closed")],
     ["1.0 s closed → open", "3.0-5.0 s open ⇄ half_open ×2",
      "7.0 s open → half_open → closed"]),
    # one round trip is not worth folding; different times do not chain
    ([(3.0, "open", "half_open"), (3.5, "half_open", "open")],
     ["3.0 s open → half_open", "3.5 s half_open → open"]),
    ([(2.0, "laning", "teamfight"), (2.0, "teamfight", "laning"), (2.0, "laning", "teamfight"),
      (2.0, "teamfight", "laning")], ["2.0 s laning ⇄ teamfight ×2"]),
])
def test_fold_changes(changes: list[tuple[float, str, str]], expected: list[str]) -> None:
    assert fold_changes(changes) == expected
