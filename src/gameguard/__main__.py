"""``python -m gameguard demo [--seed N] [--only NAME]``: the seeded demo of each capability."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import List, Optional

from . import USE_EXTENSIONS, __version__

#: demo sections, in order; each module in gameguard.demos exposes run(seed, out)
SECTIONS = ("breaker", "ratelimit", "hotcache", "saga")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gameguard")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the seeded simulations")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--only", choices=SECTIONS, action="append")
    args = parser.parse_args(argv)

    print(f"gameguard {__version__} ({'compiled' if USE_EXTENSIONS else 'pure-Python'} kernels)")
    started = time.perf_counter()
    for name in args.only or SECTIONS:
        try:
            module = importlib.import_module(f"gameguard.demos.{name}")
        except ModuleNotFoundError:
            continue  # a capability not in this build
        print()
        module.run(seed=args.seed, out=print)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
