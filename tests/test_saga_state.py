"""The transaction state machine under random faults (hypothesis ``RuleBasedStateMachine``).

Transactions run, fail, get interrupted (KeyboardInterrupt: the process "dies" mid-step)
and are recovered, in any order hypothesis picks. Every write the store sees must be an
edge of the state machine in docs/saga.md; finished transactions never change again; an
attempt number is never reused for one idempotency key; and the ledger (deduping by key,
with dtm's barrier for compensations) holds every committed transaction's effects once
and nets every compensated one to zero.
"""
from __future__ import annotations

from collections import defaultdict, deque
from typing import Any, Deque, Dict, List, Set, Tuple

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gameguard import ManualClock
from gameguard.saga import Saga, SQLiteStore, StepContext, Transition, TxRecord

STEPS = ("a", "b", "c")
OUTCOMES = ("ok", "ok", "fail", "apply_fail", "interrupt", "apply_interrupt")
ALLOWED = {
    (None, "preparing"),
    ("preparing", "preparing"), ("preparing", "executing"), ("preparing", "compensating"),
    ("executing", "executing"), ("executing", "committed"), ("executing", "compensating"),
    ("compensating", "compensating"), ("compensating", "compensated"),
    ("compensating", "failed"),
    ("failed", "failed"), ("failed", "compensating"), ("failed", "compensated"),
}


class TrackingStore(SQLiteStore):
    """Checks every write against the state machine as it happens."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.status: Dict[str, str] = {}
        self.bad: List[tuple] = []

    def _edge(self, tx: str, new: str) -> None:
        edge = (self.status.get(tx), new)
        if edge not in ALLOWED:
            self.bad.append((tx, edge))
        self.status[tx] = new

    def insert(self, record: TxRecord) -> None:
        super().insert(record)
        self._edge(record.tx_id, record.status)

    def update(self, t: Transition) -> None:
        super().update(t)
        self._edge(t.tx_id, t.status)

    def claim(self, tx_id: str, version: int, owner: str, at: float) -> bool:
        ok = super().claim(tx_id, version, owner, at)
        if ok and self.status.get(tx_id) in ("committed", "compensated"):
            self.bad.append((tx_id, "claimed a finished transaction"))
        return ok


class SagaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = TrackingStore()
        self.clock = ManualClock()
        self.saga = Saga("m", store=self.store, clock=self.clock, seed=0, backoff=0.5)
        self.plan: Deque[str] = deque()
        self.entries: Dict[str, str] = {}            # idempotency key -> "do" | "undo" | "barrier"
        self.attempts: Dict[str, Set[int]] = defaultdict(set)
        self.reused: List[Tuple[str, int]] = []
        self.n = 0
        for name in STEPS:
            self.saga.step(self._action(name), name=name, compensate=self._undo(name), retries=1)

    def teardown(self) -> None:
        self.store.close()

    def _outcome(self, ctx: StepContext) -> str:
        if ctx.attempt in self.attempts[ctx.idempotency_key]:
            self.reused.append((ctx.idempotency_key, ctx.attempt))
        self.attempts[ctx.idempotency_key].add(ctx.attempt)
        return self.plan.popleft() if self.plan else "ok"

    @staticmethod
    def _after(outcome: str) -> None:
        if outcome == "apply_fail":
            raise ConnectionError("reply lost")
        if outcome == "apply_interrupt":
            raise KeyboardInterrupt

    def _action(self, name: str) -> Any:
        def action(ctx: StepContext) -> str:
            outcome = self._outcome(ctx)
            if outcome == "fail":
                raise RuntimeError("refused")
            if outcome == "interrupt":
                raise KeyboardInterrupt
            self.entries.setdefault(ctx.idempotency_key, "do")  # dedupe by key
            self._after(outcome)
            return name
        return action

    def _undo(self, name: str) -> Any:
        def undo(ctx: StepContext) -> None:
            outcome = self._outcome(ctx)
            if outcome == "fail":
                raise RuntimeError("undo refused")
            if outcome == "interrupt":
                raise KeyboardInterrupt
            action_key = ctx.idempotency_key.rsplit("/", 1)[0] + "/action"
            if self.entries.setdefault(action_key, "barrier") == "do":
                self.entries.setdefault(ctx.idempotency_key, "undo")
            self._after(outcome)
        return undo

    @rule(outcomes=st.lists(st.sampled_from(OUTCOMES), max_size=8))
    def run(self, outcomes: List[str]) -> None:
        self.plan = deque(outcomes)
        self.n += 1
        try:
            res = self.saga.run({"n": self.n}, tx_id=f"t{self.n}")
        except KeyboardInterrupt:
            assert self.store.get(f"t{self.n}").status in ("preparing", "executing",
                                                            "compensating")
        else:
            assert res.status in ("committed", "compensated", "failed")
            assert self.store.get(res.tx_id).status == res.status

    @rule(outcomes=st.lists(st.sampled_from(OUTCOMES), max_size=8),
          include_failed=st.booleans())
    def recover(self, outcomes: List[str], include_failed: bool) -> None:
        self.plan = deque(outcomes)
        try:
            for res in self.saga.recover(include_failed=include_failed):
                assert res.status in ("committed", "compensated", "failed")
        except KeyboardInterrupt:
            pass

    @precondition(lambda self: self.n > 0)
    @rule()
    def heal(self) -> None:
        """Every fault fixed: an operator's recover ends everything."""
        self.plan = deque()
        self.saga.recover(include_failed=True)
        counts = self.store.counts()
        assert set(counts) <= {"committed", "compensated"}, counts

    @invariant()
    def only_state_machine_edges(self) -> None:
        assert self.store.bad == []
        assert self.reused == []

    @invariant()
    def ledger_matches_outcomes(self) -> None:
        for tx, status in self.store.status.items():
            keys = {s: (f"m/{tx}/{s}/action", f"m/{tx}/{s}/compensation") for s in STEPS}
            if status == "committed":
                for s in STEPS:
                    assert self.entries.get(keys[s][0]) == "do"
                    assert keys[s][1] not in self.entries
            elif status == "compensated":
                for s in STEPS:
                    act = self.entries.get(keys[s][0])
                    undo = self.entries.get(keys[s][1])
                    assert (act, undo) in ((None, None), ("barrier", None), ("do", "undo")), \
                        (tx, s, act, undo)


TestSagaStateMachine = SagaMachine.TestCase
TestSagaStateMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
