"""Recovery: finish the transactions a store holds that nobody is driving any more (after a
crash, an interrupt or a cancelled task), and never one that somebody still drives: this
process (the registry below) or another live process (the store's owner liveness)."""
from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple, Union

from ..errors import SagaError
from .records import SagaResult, Step, Tx
from .runner import drive, perform, perform_async
from .store import FAILED, UNFINISHED, TxRecord

if TYPE_CHECKING:
    from .core import Saga

Item = Union[Tuple[TxRecord, List[Step]], SagaResult]


class _Active:
    """This process's running transactions, by (store identity, tx_id)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._mu = threading.Lock()
        self._keys: Set[Tuple[str, str]] = set()

    def acquire(self, key: Tuple[str, str]) -> bool:
        with self._mu:
            if key in self._keys:
                return False
            self._keys.add(key)
            return True

    def release(self, key: Tuple[str, str]) -> None:
        with self._mu:
            self._keys.discard(key)

    def __contains__(self, key: Tuple[str, str]) -> bool:
        return key in self._keys


ACTIVE = _Active()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=ACTIVE._reset)  # a child runs none of these


def _steps_of(saga: Saga, rec: TxRecord) -> Union[List[Step], str]:
    """The registered steps ``rec`` recorded, or why it cannot be driven."""
    names = rec.steps
    missing = [nm for nm in names if nm not in saga._by_name]
    if missing:
        return (f"its recorded steps {missing} are no longer registered in saga "
                f"{saga.name!r}; not guessing, left as {rec.status!r}")
    if not 0 <= rec.step < len(names):
        return f"its step index {rec.step} is out of range; left as {rec.status!r}"
    return [saga._by_name[nm] for nm in names]


def recoverable(saga: Saga, include_failed: bool) -> List[Item]:
    """This saga's rows that nobody drives: (row, steps) to drive, or a result saying why
    one cannot be driven (its recorded steps are no longer registered)."""
    store = saga.store
    statuses = UNFINISHED + ((FAILED,) if include_failed else ())
    me = store.owner
    alive: Dict[str, bool] = {}
    out: List[Item] = []
    for rec in store.scan(saga.name, statuses):
        if (store.identity, rec.tx_id) in ACTIVE:
            continue  # running in this process right now
        if rec.owner != me:
            if rec.owner not in alive:
                alive[rec.owner] = store.owner_alive(rec.owner)
            if alive[rec.owner]:
                continue  # another live process is driving it
        steps = _steps_of(saga, rec)
        if isinstance(steps, str):
            import logging
            logging.getLogger("gameguard.saga").warning(
                "saga %r: transaction %r cannot be recovered: %s", saga.name, rec.tx_id,
                steps)
            out.append(SagaResult(rec.tx_id, saga.name, rec.status, rec.results,
                                  rec.payload, rec.trace_id,
                                  SagaError(f"transaction {rec.tx_id!r}: {steps}"),
                                  rec.errors))
            continue
        out.append((rec, steps))
    return out


def _claimed(saga: Saga, rec: TxRecord, steps: List[Step]) -> Tx:
    return Tx(rec.tx_id, rec.status, rec.step, rec.attempt + 1, rec.version + 1,
              rec.payload, rec.results, rec.errors, rec.trace_id, steps, saga.name)


def _finish(saga: Saga, rec: TxRecord, steps: List[Step]) -> Optional[SagaResult]:
    """Claim ``rec`` and drive it to its end; ``None`` if it moved on (another recoverer
    claimed it, or it just finished) or this process runs it right now."""
    store = saga.store
    key = (store.identity, rec.tx_id)
    if not ACTIVE.acquire(key):
        return None
    try:
        if not store.claim(rec.tx_id, rec.version, store.owner, time.time()):
            return None
        return perform(drive(_claimed(saga, rec, steps), saga._rng), store, saga._clock)
    finally:
        ACTIVE.release(key)


def recover(saga: Saga, include_failed: bool) -> List[SagaResult]:
    store = saga.store
    results: List[SagaResult] = []
    for item in recoverable(saga, include_failed):
        if isinstance(item, SagaResult):
            results.append(item)
            continue
        res = _finish(saga, *item)
        if res is not None:
            results.append(res)
    store.purge()
    return results


def retry_target(saga: Saga, tx_id: str, include_failed: bool) -> Tuple[TxRecord, List[Step]]:
    """The row and steps of one transaction an operator asked to retry, or a
    :class:`SagaError` saying why it cannot be retried now."""
    store = saga.store
    rec = store.get(tx_id)
    where = f"in saga store {store.identity}"
    if rec is None:
        raise SagaError(f"no transaction {tx_id!r} {where}")
    if rec.saga != saga.name:
        raise SagaError(f"transaction {tx_id!r} belongs to saga {rec.saga!r}, not "
                        f"{saga.name!r}")
    if rec.status == FAILED and not include_failed:
        raise SagaError(f"transaction {tx_id!r} is failed: retry it with include_failed=True "
                        f"(--include-failed) once the cause is fixed")
    if rec.status not in UNFINISHED + (FAILED,):
        raise SagaError(f"transaction {tx_id!r} is already {rec.status}; nothing to do")
    if (store.identity, tx_id) in ACTIVE or (rec.owner != store.owner
                                            and store.owner_alive(rec.owner)):
        raise SagaError(f"transaction {tx_id!r} is being driven by a live process "
                        f"({rec.owner}); retry it once that one has finished or died")
    steps = _steps_of(saga, rec)
    if isinstance(steps, str):
        raise SagaError(f"transaction {tx_id!r}: {steps}")
    return rec, steps


def _claimed_result(res: Optional[SagaResult], tx_id: str) -> SagaResult:
    if res is None:
        raise SagaError(f"transaction {tx_id!r} moved on while it was being claimed "
                        f"(another recoverer?); nothing was done")
    return res


def retry(saga: Saga, tx_id: str, include_failed: bool) -> SagaResult:
    res = _finish(saga, *retry_target(saga, tx_id, include_failed))
    return _claimed_result(res, tx_id)


async def _finish_async(saga: Saga, rec: TxRecord,
                        steps: List[Step]) -> Optional[SagaResult]:
    """:func:`_finish` on the event loop (the claim runs in a worker thread)."""
    import asyncio
    store = saga.store
    key = (store.identity, rec.tx_id)
    if not ACTIVE.acquire(key):
        return None
    try:
        if not await asyncio.to_thread(store.claim, rec.tx_id, rec.version, store.owner,
                                       time.time()):
            return None
        return await perform_async(drive(_claimed(saga, rec, steps), saga._rng), store,
                                   saga._clock)
    finally:
        ACTIVE.release(key)


async def retry_async(saga: Saga, tx_id: str, include_failed: bool) -> SagaResult:
    import asyncio
    target = await asyncio.to_thread(retry_target, saga, tx_id, include_failed)
    res = await _finish_async(saga, *target)
    return _claimed_result(res, tx_id)


async def recover_async(saga: Saga, include_failed: bool,
                        concurrency: int) -> List[SagaResult]:
    import asyncio
    store = saga.store
    results: List[SagaResult] = []
    sem = asyncio.Semaphore(concurrency)

    async def finish(rec: TxRecord, steps: List[Step]) -> None:
        async with sem:
            res = await _finish_async(saga, rec, steps)
            if res is not None:
                results.append(res)

    tasks = []
    for item in await asyncio.to_thread(recoverable, saga, include_failed):
        if isinstance(item, SagaResult):
            results.append(item)
        else:
            tasks.append(asyncio.ensure_future(finish(*item)))
    if tasks:
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    await asyncio.to_thread(store.purge)
    return results
