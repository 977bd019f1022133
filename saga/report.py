"""What a saga did, step by step, for people and machines."""

from __future__ import annotations

from dataclasses import dataclass

from twopc.saga.definition import SagaDefinition, SagaRun
from twopc.saga.idempotency import StepResult
from twopc.saga.ids import compensation_key, release_key, step_key
from twopc.saga.state import SagaState
from twopc.saga.steps import compensation_work, forward_work, release_work

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


def step_reports(state: SagaState, definition: SagaDefinition | None = None) -> list[StepReport]:
    """Every step, compensation and release the log records, in run order: the steps up to
    the pivot, the compensations (last first), the releases, then the steps after the pivot.

    Without ``definition`` (one not registered here), actions are named as the saga's BEGIN
    recorded its steps.
    """
    if not state.began:
        return []
    up_to = [n for n in sorted(state.results) if n <= state.pivot]
    after = [n for n in sorted(state.results) if n > state.pivot]
    reports = [_report(state, definition, _STEP, n, state.results[n]) for n in up_to]
    reports += [
        _report(state, definition, _COMP, n, result)
        for n, result in sorted(state.compensations.items(), reverse=True)
    ]
    reports += [
        _report(state, definition, _RELEASE, n, result)
        for n, result in sorted(state.releases.items())
    ]
    return reports + [_report(state, definition, _STEP, n, state.results[n]) for n in after]


_STEP, _COMP, _RELEASE = "step", "comp", "release"
_BUILD = {_STEP: forward_work, _COMP: compensation_work, _RELEASE: release_work}
_KEY = {_STEP: step_key, _COMP: compensation_key, _RELEASE: release_key}


def _report(
    state: SagaState, definition: SagaDefinition | None, kind: str, n: int, result: StepResult
) -> StepReport:
    label, key = f"{kind} {n}", _KEY[kind](state.saga_id, n)
    action = _action(state, definition, kind, n)
    return StepReport(label, key, action, result.status, result.replayed, dict(result.detail))


def _action(state: SagaState, definition: SagaDefinition | None, kind: str, n: int) -> str:
    """What the work did, in the definition's words (the recorded step name without one)."""
    if definition is not None:
        try:
            return _BUILD[kind](definition, SagaRun(state.saga_id, state.params), n).describe()
        except (KeyError, TypeError, ValueError):
            pass  # parameters the definition cannot describe: say what the log says
    name = state.steps[n - 1] if n <= len(state.steps) else "?"
    return name if kind == _STEP else f"{kind} {name}"
