"""The saga state machine, written once as a generator over *effects* (call a step, write a
transition, sleep), and the two runners that perform them: blocking (``run``, ``recover``)
and awaiting (``run_async``, ``recover_async``).

Per transaction the store sees ``1 + steps`` writes on the happy path (insert, then one per
completed step, the last one ``committed``), each durable before the next action starts.
"""
from __future__ import annotations

import time
from types import CoroutineType, MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Generator, List, Optional, Tuple

from ..errors import CompensationFailed
from ..retry import backoff_delay
from .records import ACTION, COMPENSATION, StepContext, Step, Tx, dumps, loads
from .store import COMMITTED, COMPENSATED, COMPENSATING, EXECUTING, FAILED, PREPARING

if TYPE_CHECKING:
    from ..clock import Clock
    from .records import SagaResult
    from .store import SagaStore

# effects the driver yields; the runners perform them
_CALL, _WRITE, _SLEEP = 0, 1, 2
Outcome = Tuple[Optional[BaseException], Any]
Driver = Generator[Tuple[Any, ...], Any, "SagaResult"]


def drive(tx: Tx, rng: Callable[[], float]) -> Driver:
    """Take ``tx`` from its current state to an end: forward through the steps, or
    backward through the compensations once a step has failed for good."""
    steps = tx.steps
    n = len(steps)
    if tx.status in (PREPARING, EXECUTING):
        while True:
            st = steps[tx.step]
            exc, value = yield from _attempts(tx, st, ACTION, rng)
            if exc is None:
                try:
                    vjson = dumps(value)
                except (TypeError, ValueError) as e:
                    exc = TypeError(f"step {st.name!r} returned a value that is not "
                                    f"JSON-serialisable ({e}); step results are stored "
                                    f"as JSON")
                    tx.note_error(st.name, ACTION, exc)
                else:
                    tx.results[st.name] = loads(vjson)
                    tx.parts.append(f"{dumps(st.name)}:{vjson}")
                    nxt = tx.step + 1
                    if nxt == n:
                        yield (_WRITE, tx.move(COMMITTED, n, 0, results=True))
                        return tx.result()
                    yield (_WRITE, tx.move(EXECUTING, nxt, 1, results=True))
                    continue
            # failed for good: compensate this step too (it may have half-applied),
            # then the completed ones, newest first
            tx.error = exc
            c = _compensable(steps, tx.step)
            if c < 0:
                yield (_WRITE, tx.move(COMPENSATED, -1, 0))
                return tx.result()
            yield (_WRITE, tx.move(COMPENSATING, c, 1))
            break
    elif tx.status == FAILED:  # an operator's retry (recover(include_failed=True))
        tx.status = COMPENSATING
    while True:
        c = _compensable(steps, tx.step)
        if c != tx.step:  # only after a code change: that step lost its compensation
            if c < 0:
                yield (_WRITE, tx.move(COMPENSATED, -1, 0))
                return tx.result()
            yield (_WRITE, tx.move(COMPENSATING, c, 1))
        st = steps[tx.step]
        exc, _ = yield from _attempts(tx, st, COMPENSATION, rng)
        if exc is not None:
            yield (_WRITE, tx.move(FAILED, tx.step, tx.attempt))
            err = CompensationFailed(
                f"saga {tx.saga!r}, transaction {tx.tx_id!r}: compensation of step "
                f"{st.name!r} still failed after {st.retries + 1} attempt(s): "
                f"{type(exc).__name__}: {exc}; the transaction is kept as 'failed'",
                step=st.name, errors=[e for e in (tx.error, exc) if e is not None])
            err.__cause__ = exc
            tx.error = err
            return tx.result()
        c = _compensable(steps, tx.step - 1)
        if c < 0:
            yield (_WRITE, tx.move(COMPENSATED, -1, 0))
            return tx.result()
        yield (_WRITE, tx.move(COMPENSATING, c, 1))


def _compensable(steps: List[Step], i: int) -> int:
    """The highest index <= i whose step has a compensation (-1: none)."""
    while i >= 0 and steps[i].compensate is None:
        i -= 1
    return i


def _attempts(tx: Tx, st: Step, phase: str,
              rng: Callable[[], float]) -> Generator[Tuple[Any, ...], Any, Outcome]:
    """Attempts of one action or compensation, retried with backoff; each new attempt's
    number is durable before it starts."""
    key = tx.prefix + (st.action_key if phase == ACTION else st.comp_key)
    tries = 0
    while True:
        tries += 1
        ctx = StepContext(tx.tx_id, tx.saga, st.name, phase, tx.payload,
                          MappingProxyType(dict(tx.results)),
                          tx.attempt, key, tx.trace_id, st.timeout)
        exc, value = yield (_CALL, st, phase, ctx)
        if exc is None:
            return None, value
        tx.note_error(st.name, phase, exc)
        if tries > st.retries:
            return exc, None
        # a retry schedule is one delay at a time, computed when it is due: no queue of
        # timers to keep sorted
        delay = backoff_delay(tries, st.backoff, st.max_backoff, rng(), exc)
        if delay > 0.0:
            yield (_SLEEP, delay)
        yield (_WRITE, tx.move(tx.status, tx.step, tx.attempt + 1))


# -- the blocking runner ----------------------------------------------------------------------
def perform(gen: Driver, store: SagaStore, clock: Optional[Clock]) -> SagaResult:
    send: Any = None
    try:
        while True:
            try:
                eff = gen.send(send)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            kind = eff[0]
            if kind == _CALL:
                send = _call(eff[1], eff[2], eff[3], clock)
            elif kind == _WRITE:
                store.update(eff[1])
                send = None
            else:
                from ..clock import sleeper
                sleeper(clock)(eff[1])
                send = None
    finally:
        gen.close()


def _call(st: Step, phase: str, ctx: StepContext, clock: Optional[Clock]) -> Outcome:
    fn = st.action if phase == ACTION else st.compensate
    guard = st.guard if phase == ACTION else None
    now = clock or time.monotonic
    try:
        t0 = now() if st.timeout is not None else 0.0
        if guard is not None:
            with guard:
                value = fn(ctx)  # type: ignore[misc]
                if st.timeout is not None:
                    _check_elapsed(st, phase, now() - t0)
        else:
            value = fn(ctx)  # type: ignore[misc]
            if st.timeout is not None:
                _check_elapsed(st, phase, now() - t0)
    except Exception as exc:
        return exc, None
    if hasattr(value, "__await__"):  # a coroutine, future or task: it needed run_async
        if isinstance(value, CoroutineType):
            value.close()  # no "never awaited" warning for a coroutine we refuse
        return TypeError(f"step {st.name!r} ({phase}) returned an awaitable; "
                         f"async steps need run_async"), None
    return None, value


def _check_elapsed(st: Step, phase: str, elapsed: float) -> None:
    if elapsed > st.timeout:  # type: ignore[operator]
        raise TimeoutError(f"step {st.name!r} ({phase}) took {elapsed:.3f}s, over its "
                           f"timeout of {st.timeout}s; its result is discarded")


# -- the awaiting runner ----------------------------------------------------------------------
async def perform_async(gen: Driver, store: SagaStore, clock: Optional[Clock]) -> SagaResult:
    send: Any = None
    try:
        while True:
            try:
                eff = gen.send(send)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            kind = eff[0]
            if kind == _CALL:
                st = eff[1]
                if st.is_async:
                    send = await _call_async(st, eff[2], eff[3], clock)
                else:
                    send = _call(st, eff[2], eff[3], clock)
            elif kind == _WRITE:
                await store.update_async(eff[1])
                send = None
            else:
                from ..clock import async_sleeper
                await async_sleeper(clock)(eff[1])
                send = None
    finally:
        gen.close()


async def _call_async(st: Step, phase: str, ctx: StepContext,
                      clock: Optional[Clock]) -> Outcome:
    import asyncio
    fn = st.action if phase == ACTION else st.compensate
    guard = st.guard if phase == ACTION else None
    try:
        if st.action_async if phase == ACTION else st.comp_async:
            if guard is None:
                value = await _await_step(fn, ctx, st.timeout)
            elif hasattr(guard, "__aenter__"):
                async with guard:  # the coroutine is made only once admitted
                    value = await _await_step(fn, ctx, st.timeout)
            else:
                with guard:
                    value = await _await_step(fn, ctx, st.timeout)
        else:  # a sync function among async ones: called inline
            now = clock or time.monotonic
            t0 = now()
            if guard is None:
                value = fn(ctx)  # type: ignore[misc]
            elif hasattr(guard, "__aenter__"):
                async with guard:
                    value = fn(ctx)  # type: ignore[misc]
            else:
                with guard:
                    value = fn(ctx)  # type: ignore[misc]
            if st.timeout is not None:
                _check_elapsed(st, phase, now() - t0)
    except asyncio.TimeoutError:  # wait_for's (an outside cancellation stays CancelledError)
        return TimeoutError(f"step {st.name!r} ({phase}) did not finish within its "
                            f"timeout of {st.timeout}s and was cancelled"), None
    except Exception as exc:
        return exc, None
    return None, value


async def _await_step(fn: Any, ctx: StepContext, timeout: Optional[float]) -> Any:
    if timeout is None:
        return await fn(ctx)
    import asyncio
    return await asyncio.wait_for(fn(ctx), timeout)
