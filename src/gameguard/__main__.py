"""``python -m gameguard``: the command line. ``demo [--seed N] [--only NAME]`` runs the seeded
demo of each capability; ``sagas`` lists, shows and retries saga transactions (``saga/cli.py``);
``--version`` says which build is installed; no command prints help."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from typing import List, Optional

from . import USE_EXTENSIONS, __version__

#: demo sections, in order; each module in gameguard.demos exposes run(seed, out)
SECTIONS = ("breaker", "ratelimit", "hotcache", "saga", "scaleout", "top")
BUILD = f"gameguard {__version__} ({'compiled' if USE_EXTENSIONS else 'pure-Python'} kernels)"


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m gameguard",
        description="gameguard: resilience for game servers. Seeded, simulated demos of "
                    "circuit breaking, rate limiting, hot-key caching and sagas.")
    cli.add_argument("--version", action="version", version=BUILD)
    sub = cli.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the seeded game-server simulations (a few seconds)",
                          description="Run the seeded game-server simulations, one section "
                                      "per capability, on a simulated clock.")
    demo.add_argument("--seed", type=int, default=7,
                      help="random seed (default: 7); the same seed prints the same figures")
    demo.add_argument("--only", choices=SECTIONS, action="append", metavar="SECTION",
                      help=f"run only this section, repeatable: {', '.join(SECTIONS)}")
    from .saga import cli as sagas
    sagas.add_parser(sub)
    from . import top
    top.add_arguments(sub.add_parser(
        "top", help="live view of a process's guards (state, calls/s, rejected/s, hit ratio)",
        description="Show the guards of this process, or of a running one (--url its "
                    "Prometheus endpoint), refreshing every --interval seconds."))
    from .scenario.cli import add_parser as add_scenario  # argparse only: grpc loads on use
    add_scenario(sub)
    return cli


def run_demo(seed: int, only: Optional[List[str]]) -> None:
    from ._registry import hold

    print(BUILD)
    started = time.perf_counter()
    kept: List[object] = []  # the sections' guards, alive for the closing `top` view
    hold(kept)
    try:
        for name in only or SECTIONS:
            try:
                module = importlib.import_module(f"gameguard.demos.{name}")
            except ModuleNotFoundError:
                continue  # a capability not in this build
            print()
            if name == "top":  # the closing view: what the sections before it built
                module.run(seed=seed, out=print, objects=list(kept))
            else:
                module.run(seed=seed, out=print)
    finally:
        hold(kept, False)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")


def main(argv: Optional[List[str]] = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    code = 0
    try:
        if args.command is None:
            cli.print_help()
        elif args.command == "sagas":
            from .saga import cli as sagas
            code = sagas.run(args)
        elif args.command == "top":
            from . import top
            code = top.run(args.url, args.interval, args.iterations)
        elif args.command == "scenario":
            from .scenario.cli import run as run_scenario
            code = run_scenario(args)
        else:
            run_demo(args.seed, args.only)
        sys.stdout.flush()  # here, so a closed pipe is met inside this try
    except BrokenPipeError:
        # the reader left (`| head -1`): stop quietly, and point stdout at /dev/null so the
        # interpreter's last flush at exit has nowhere to fail either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
