"""Instructions per call of ``@rules.guard(resource)`` against the same guards used directly
(the method of benchmarks/instructions.py: two loop lengths under callgrind, the
difference divided by the extra calls; interpreter start-up cancels out):

    for n in 20000 120000; do PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=/dev/null .venv/bin/python benchmarks/instructions_rules.py \\
        CASE $n 2>&1 | grep Collected; done

CASE: bare, breaker, rules_breaker, full, rules_full (breaker + limit + bulkhead),
rules_none (a resource without a rule), with_breaker and rules_with_breaker (``with``
blocks), awith_breaker and rules_awith_breaker (``async with`` blocks, in one coroutine
driven by ``send``: no event loop), task_bare, task_breaker and task_rules (a fresh asyncio
task per iteration, opening one ``async with`` block but in task_bare; the cyclic GC runs
as usual); ``_pure`` after a case runs the pure twin.
"""
from __future__ import annotations

import sys


def handler(x: int) -> int:
    return x


def build(case: str):  # -> a one-argument callable doing one guarded call
    import gameguard as gg
    from gameguard import _impl
    from gameguard.rules import Rules

    big = 10.0 ** 12
    twin = "pure" if case.endswith("_pure") else "fast"
    base = case[:-5] if case.endswith("_pure") else case
    full = {"breaker": {}, "limit": {"rate": big, "capacity": big},
            "bulkhead": {"max_concurrent": 64}}
    with _impl.use(twin):
        if base == "bare":
            return handler
        if base == "breaker":
            return gg.CircuitBreaker("b")(handler)
        if base == "full":
            return gg.pipeline(gg.CircuitBreaker("b"), gg.TokenBucket(big, big),
                               gg.Bulkhead(64))(handler)
        rules = Rules({"resource": {"breaker": {"breaker": {}}, "full": full}})
        if base == "rules_breaker":
            return rules.guard("breaker")(handler)
        if base == "rules_full":
            return rules.guard("full")(handler)
        if base == "rules_none":
            return rules.guard("none")(handler)
    raise SystemExit(f"unknown case {case!r}")


def blocks(case: str, n: int) -> None:
    """``with g: handler(1)`` (``async with`` for ``awith``) n times, the loop in one frame."""
    import gameguard as gg
    from gameguard import _impl
    from gameguard.rules import Rules

    with _impl.use("pure" if case.endswith("_pure") else "fast"):
        g = Rules({"resource": {"r": {"breaker": {}}}}).guard("r") \
            if case.startswith("rules_") else gg.CircuitBreaker("b")
    if "awith_" not in case:
        for _ in range(n):
            with g:
                handler(1)
        return

    async def loop() -> None:
        for _ in range(n):
            async with g:
                handler(1)
    try:
        loop().send(None)  # admitted blocks never suspend
    except StopIteration:
        return
    raise SystemExit("an async with block suspended")


def tasks(case: str, n: int) -> None:
    """n fresh tasks, one after another, each opening a block (``task_bare``: none)."""
    import asyncio

    import gameguard as gg
    from gameguard import _impl
    from gameguard.rules import Rules

    with _impl.use("pure" if case.endswith("_pure") else "fast"):
        g = None if case.startswith("task_bare") else gg.CircuitBreaker("b") \
            if case.startswith("task_breaker") else \
            Rules({"resource": {"r": {"breaker": {}}}}).guard("r")

    async def task() -> None:
        if g is None:
            handler(1)
            return
        async with g:
            handler(1)

    async def main() -> None:
        for _ in range(n):
            await asyncio.create_task(task())
    asyncio.run(main())


if __name__ == "__main__":
    case, n = sys.argv[1], int(sys.argv[2])
    if case.startswith("task_"):
        tasks(case, n)
    elif "with_" in case:
        blocks(case, n)
    else:
        f = build(case)
        for _ in range(n):
            f(1)
