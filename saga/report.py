"""What a saga did, step by step, for people and machines."""

from __future__ import annotations

from dataclasses import dataclass

from twopc.saga.idempotency import StepResult
from twopc.saga.ids import compensation_key, release_key, step_key
from twopc.saga.state import SagaState
from twopc.saga.steps import HOLDING, NOTIFY, compensation, forward_step, release

UNFINISHED = "unfinished"
DEAD_LETTERED = "dead-lettered"


@dataclass(frozen=True)
class StepReport:
    """One step or compensation that ran (or was found already stored)."""

    label: str  # "step 1", "comp 1", "release 1"
    key: str
    action: str  # "debit pg:a1 7.25"
    status: str
    replayed: bool
    detail: dict[str, str]

    def to_json(self) -> dict[str, object]:
        return {
            "step": self.label,
            "idempotency_key": self.key,
            "action": self.action,
            "status": self.status,
            "replayed": self.replayed,
            "detail": self.detail,
        }

    def line(self) -> str:
        replayed = " (replayed: already stored, nothing changed)" if self.replayed else ""
        reason = f": {self.detail['reason']}" if "reason" in self.detail else ""
        return f"{self.label:<10} {self.action:<28} {self.status}{reason}{replayed}"


def outcome_of(state: SagaState) -> str:
    """The saga's outcome, or where it stands if unfinished."""
    if state.outcome is not None:
        return state.outcome
    return DEAD_LETTERED if state.dead_lettered else UNFINISHED


def step_reports(state: SagaState) -> list[StepReport]:
    """Every step, compensation, release and notification the log records, in run order."""
    if state.transfer is None:
        return []
    saga_id, transfer = state.saga_id, state.transfer
    reports = [
        _report(f"step {n}", step_key(saga_id, n), forward_step(saga_id, transfer, n).describe(), r)
        for n, r in sorted(state.results.items())
    ]
    reports += [
        _report(
            f"comp {n}",
            compensation_key(saga_id, n),
            compensation(saga_id, transfer, n).describe(),
            r,
        )
        for n, r in sorted(state.compensations.items(), reverse=True)
    ]
    if state.released is not None:
        work = release(saga_id, transfer)
        reports.append(
            _report(
                f"release {HOLDING}", release_key(saga_id, HOLDING), work.describe(), state.released
            )
        )
    if state.notified is not None:
        work = forward_step(saga_id, transfer, NOTIFY)
        reports.append(
            _report(f"step {NOTIFY}", step_key(saga_id, NOTIFY), work.describe(), state.notified)
        )
    return reports


def _report(label: str, key: str, action: str, result: StepResult) -> StepReport:
    return StepReport(label, key, action, result.status, result.replayed, dict(result.detail))
