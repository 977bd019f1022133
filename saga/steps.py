"""What one step of a saga runs: a definition's action for one saga, as a keyed unit of work.

A :class:`Work` is one local transaction on one participant — a forward step, a compensation
or a release — with its idempotency key, the words reports show for it, and the request its
key is bound to. It is built from the saga's definition and its parameters alone, so a saga
resumed from its log (by the same process or by recovery) runs exactly the same work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from twopc.retry import RetryPolicy
from twopc.saga.definition import SagaDefinition, SagaRun, Step, StepFunction
from twopc.saga.idempotency import APPLIED, Change, StepResult
from twopc.saga.ids import compensation_key, release_key, step_key


@dataclass(frozen=True)
class Work:
    """One participant-side local transaction of a saga: what, where, and under which key."""

    name: str  # the action's name: "debit", "refund", "release"
    label: str  # "step 1", "comp 1", "release 1"
    key: str
    participant: str
    description: str  # "debit pg:a1 7.25"
    change: Change
    retry: RetryPolicy | None = None
    timeout: float | None = None

    def describe(self) -> str:
        return self.description

    def request(self, saga: str) -> str:
        """What this work's idempotency key is bound to: the saga's request and this step's,
        canonically (a key reused for anything else is refused)."""
        return json.dumps({"saga": saga, "step": self.description}, sort_keys=True)


def forward_work(definition: SagaDefinition, run: SagaRun, n: int) -> Work:
    """Forward step ``n`` of saga ``run``."""
    step = definition.step(n)
    return _work(step, run, step.name, f"step {n}", step_key(run.saga_id, n), step.action)


def compensation_work(definition: SagaDefinition, run: SagaRun, n: int) -> Work:
    """The compensation of step ``n`` of saga ``run``; ``ValueError`` if it has none."""
    step = definition.step(n)
    if step.compensation is None:
        raise ValueError(f"step {n} of saga {definition.name} has no compensation")
    key = compensation_key(run.saga_id, n)
    work = _work(step, run, step.undo_name, f"comp {n}", key, step.compensation)
    return replace(work, retry=step.compensation_retry)


def release_work(definition: SagaDefinition, run: SagaRun, n: int) -> Work:
    """The release of the semantic lock step ``n`` took; ``ValueError`` if it takes none."""
    step = definition.step(n)
    if step.release is None:
        raise ValueError(f"step {n} of saga {definition.name} takes no lock to release")
    key = release_key(run.saga_id, n)
    return _work(step, run, "release", f"release {n}", key, step.release)


def _work(
    step: Step, run: SagaRun, name: str, label: str, key: str, function: StepFunction
) -> Work:
    return Work(
        name,
        label,
        key,
        step.participant(run.params),
        step.describe(name, run.params),
        lambda tx: _stored(function(tx, run)),
        step.retry,
        step.timeout,
    )


def _stored(result: StepResult | None) -> StepResult:
    return StepResult(APPLIED) if result is None else result
