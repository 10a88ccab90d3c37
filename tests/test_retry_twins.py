"""The retry kernels decide alike in both twins: the budget under any sequence of deposits,
withdrawals and clock moves, and the retrying call under any pattern of failures."""
from __future__ import annotations

from typing import Any, List, Tuple

from hypothesis import given, settings, strategies as st

from conftest import both_twins

ops = st.lists(st.tuples(st.sampled_from(["deposit", "withdraw", "balance"]),
                         st.floats(0.0, 3.0, allow_nan=False)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(ratio=st.floats(0.0, 2.0), reserve=st.floats(0.0, 20.0),
       window=st.floats(0.1, 30.0), buckets=st.integers(1, 20), ops=ops)
def test_budget_twins_decide_alike(ratio: float, reserve: float, window: float, buckets: int,
                                   ops: List[Tuple[str, float]]) -> None:
    fast, pure = both_twins("retry")
    kernels = [fast.Budget(ratio, reserve, window, buckets),
               pure.Budget(ratio, reserve, window, buckets)]
    now = 0.0
    for op, step in ops:
        now += step
        answers = [getattr(k, op)(now) for k in kernels]
        assert answers[0] == answers[1], (op, now)
        assert kernels[0].counts(now) == kernels[1].counts(now)


@settings(max_examples=100, deadline=None)
@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=8),
       retries_allowed=st.integers(0, 8), budget=st.booleans())
def test_retrying_call_twins_behave_alike(outcomes: List[bool], retries_allowed: int,
                                          budget: bool) -> None:
    """``outcomes[i]``: whether call i succeeds; ``again`` retries up to ``retries_allowed``
    times (the public Retry's policy stands in)."""
    results = []
    for twin in both_twins("retry"):
        log: List[Any] = []
        it = iter(outcomes + [True] * 10)

        def f(x: int, *, y: int = 0) -> int:
            log.append(("call", x, y))
            if not next(it):
                raise ValueError(len(log))
            return x + y

        def again(args: Any, kwargs: Any, exc: Exception) -> Any:
            for _ in range(retries_allowed):
                log.append(("retry", type(exc).__name__))
                try:
                    return f(*args, **kwargs)
                except ValueError as e:
                    exc = e
            raise exc

        kernel = twin.Budget(0.5, 1.0, 10.0, 10) if budget else None
        wrapped = twin.wrap_sync(f, again, kernel, lambda: 1.0)
        try:
            out: Any = wrapped(2, y=3)
        except ValueError as exc:
            out = ("raised", exc.args)
        results.append((out, log, None if kernel is None else kernel.counts(1.0)))
    assert results[0] == results[1]
