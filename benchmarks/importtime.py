"""What ``import gameguard`` costs: wall time and instructions, beyond a bare interpreter.

    python benchmarks/importtime.py [--runs N] [--instructions]

Wall time is the median over N fresh interpreters of ``-X importtime``'s cumulative figure
for ``gameguard`` (bytecode already cached, as after an install). ``--instructions`` also
counts instructions under callgrind (``import gameguard`` minus ``pass``), the figure to
trust on a busy machine. It prints the modules the import loads beyond a bare start.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys


def wall_us(python: str) -> int:
    err = subprocess.run([python, "-X", "importtime", "-c", "import gameguard"],
                         capture_output=True, text=True, check=True, env=_env()).stderr
    for line in err.splitlines():
        if line.rstrip().endswith("| gameguard"):
            return int(line.split("|")[1])
    raise RuntimeError(f"no gameguard line in -X importtime output:\n{err}")


def instructions(python: str, code: str) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          python, "-c", code], capture_output=True, text=True, check=True,
                         env=_env()).stderr
    m = re.search(r"Collected : (\d+)", out)
    if not m:
        raise RuntimeError(f"callgrind printed no total:\n{out}")
    return int(m.group(1))


def extra_modules(python: str) -> list[str]:
    code = ("import sys; before = set(sys.modules); import gameguard; "
            "print(' '.join(sorted(set(sys.modules) - before)))")  # json would load re and enum
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True,
                         env=_env()).stdout
    return [m for m in out.split() if not m.startswith("gameguard")]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # time the import, not the compile
    return env


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--runs", type=int, default=21)
    cli.add_argument("--instructions", action="store_true")
    cli.add_argument("--python", default=sys.executable)
    args = cli.parse_args()
    wall_us(args.python)  # writes the bytecode cache
    runs = sorted(wall_us(args.python) for _ in range(args.runs))
    print(f"import gameguard: median {statistics.median(runs) / 1000:.1f} ms "
          f"(min {runs[0] / 1000:.1f}, max {runs[-1] / 1000:.1f}) over {args.runs} runs")
    if args.instructions:
        n = instructions(args.python, "import gameguard") - instructions(args.python, "pass")
        print(f"import gameguard: {n / 1e6:.1f} M instructions beyond a bare start")
    print("modules loaded beyond a bare start:", ", ".join(extra_modules(args.python)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
