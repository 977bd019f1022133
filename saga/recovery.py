"""Recovery of sagas whose orchestrator died, and an operator's retry of one saga.

Rules, like the 2PC resolver's: a live orchestrator's sagas (its log is locked) are reported
and never touched; a dead one's log is opened as its writer (so two recoveries never race),
each unfinished saga is resumed from its records — forward or backward, as the log says —
and the log is removed once nothing in it is unfinished. A saga's definition comes from the
registry in the recovery's :class:`SagaConfig` (``definitions``); a saga whose definition is
not there is reported and left alone, for a recovery that has it. A dead-lettered
compensation is left for ``twopc sagas retry``; a damaged log is reported and left alone,
since decisions may be lost in it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from twopc.participants import Participant
from twopc.saga.errors import SagaBusy, SagaError, SagaNotFound
from twopc.saga.logs import (
    OrchestratorLog,
    orchestrator_home,
    orchestrator_ids,
    read_orchestrator,
)
from twopc.saga.orchestrator import Orchestrator, SagaConfig, SagaOutcome, open_log
from twopc.saga.registry import SagaRegistry, resolve
from twopc.saga.report import outcome_of
from twopc.saga.state import SagaState, next_action, replay_records
from twopc.txlog import LogMissing, TransactionLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SagaResolution:
    """What recovery did (or would do, or could not do) with one unfinished saga."""

    saga_id: str
    orchestrator: str
    action: str
    reason: str
    finished: bool

    def to_json(self) -> dict[str, object]:
        return {
            "saga_id": self.saga_id,
            "orchestrator": self.orchestrator,
            "action": self.action,
            "reason": self.reason,
            "finished": self.finished,
        }


@dataclass
class SagaRecoveryReport:
    resolutions: list[SagaResolution] = field(default_factory=list)
    removed_logs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def unfinished_remain(self) -> bool:
        return bool(self.problems) or any(not r.finished for r in self.resolutions)

    def to_json(self) -> dict[str, object]:
        return {
            "resolutions": [r.to_json() for r in self.resolutions],
            "removed_logs": self.removed_logs,
            "problems": self.problems,
            "unfinished_remain": self.unfinished_remain,
        }


def recover_sagas(
    participants: Sequence[Participant], config: SagaConfig, *, dry_run: bool = False
) -> SagaRecoveryReport:
    """Resume the unfinished sagas of every dead orchestrator under ``config.home``."""
    report = SagaRecoveryReport()
    if not dry_run:
        for leftover in orchestrator_home(config.home).remove_leftovers():
            log.info("removed %s: a log its orchestrator died creating", leftover)
    for orchestrator_id in orchestrator_ids(config.home):
        found = read_orchestrator(config.home, orchestrator_id)
        if dry_run or found.alive or found.error:
            _plan(found, report, config.definitions, dry_run=dry_run)
            continue
        _recover_orchestrator(participants, config, orchestrator_id, report)
    return report


def _plan(
    found: OrchestratorLog, report: SagaRecoveryReport, registry: SagaRegistry, *, dry_run: bool
) -> None:
    """Report what is left alone (live or damaged logs), or what a dry run would do."""
    if found.error:
        report.problems.append(
            f"log of orchestrator {found.orchestrator} is damaged ({found.error}): its sagas "
            "are left alone, since decisions may be lost; resolve them by hand"
        )
        return
    for state in found.sagas:
        if found.alive:
            reason = f"orchestrator {found.orchestrator} is alive: it finishes its own sagas"
            report.resolutions.append(_resolution(state, found.orchestrator, "left alone", reason))
        elif dry_run:
            report.resolutions.append(_would(state, found.orchestrator, registry))


def _would(state: SagaState, orchestrator: str, registry: SagaRegistry) -> SagaResolution:
    if state.dead_lettered:
        return _resolution(state, orchestrator, "left alone", _dead_letter_reason(state))
    state, definition = resolve(state, registry)
    if definition is None:
        return _resolution(state, orchestrator, "left alone", _stuck_reason(state))
    action = next_action(state, definition)
    direction = "backward" if state.backward else "forward"
    reason = f"{direction}, next: {action.kind} {action.n or ''}".rstrip()
    return _resolution(state, orchestrator, "would resume", reason)


def _recover_orchestrator(
    participants: Sequence[Participant],
    config: SagaConfig,
    orchestrator_id: str,
    report: SagaRecoveryReport,
) -> None:
    try:
        txlog = open_log(config.home, orchestrator_id, create=False)
    except LogMissing:
        return
    except SagaBusy:
        found = read_orchestrator(config.home, orchestrator_id)
        _plan(found, report, config.definitions, dry_run=False)
        return
    except SagaError as err:
        report.problems.append(str(err))
        return
    orchestrator = Orchestrator(
        participants, replace(config, orchestrator_id=orchestrator_id, hooks=None), txlog
    )
    for state in _unfinished(txlog).values():
        report.resolutions.append(_resume(orchestrator, state))
    _close(txlog, orchestrator_id, report)


def _unfinished(txlog: TransactionLog) -> dict[str, SagaState]:
    return {sid: replay_records(sid, records) for sid, records in txlog.unfinished().items()}


def _resume(orchestrator: Orchestrator, state: SagaState) -> SagaResolution:
    if state.dead_lettered:
        reason = _dead_letter_reason(state)
        return _resolution(state, orchestrator.id, "left alone", reason)
    state, definition = orchestrator.definition_of(state)
    if definition is None:
        return _resolution(state, orchestrator.id, "left alone", _stuck_reason(state))
    outcome = orchestrator.resume(state.saga_id)
    return _resolution(outcome.state, orchestrator.id, outcome.outcome, _why(outcome))


def _close(txlog: TransactionLog, orchestrator_id: str, report: SagaRecoveryReport) -> None:
    if txlog.unfinished():
        txlog.close()
    else:
        txlog.destroy()
        report.removed_logs.append(orchestrator_id)


def retry_saga(
    participants: Sequence[Participant], config: SagaConfig, saga_id: str
) -> SagaOutcome:
    """Resume one unfinished saga now, retrying a dead-lettered compensation (safe to repeat:
    a compensation that already applied returns its stored result)."""
    owner = _owner(config.home, saga_id)
    if owner.alive:
        raise SagaBusy(
            f"saga {saga_id} belongs to orchestrator {owner.orchestrator}, which is alive "
            "and finishes it itself"
        )
    txlog = open_log(config.home, owner.orchestrator, create=False)
    orchestrator = Orchestrator(
        participants, replace(config, orchestrator_id=owner.orchestrator, hooks=None), txlog
    )
    try:
        return orchestrator.resume(saga_id, retry_dead_letters=True)
    finally:
        _close(txlog, owner.orchestrator, SagaRecoveryReport())


def _owner(home: Path, saga_id: str) -> OrchestratorLog:
    for orchestrator_id in orchestrator_ids(home):
        found = read_orchestrator(home, orchestrator_id)
        if any(state.saga_id == saga_id for state in found.sagas):
            return found
    raise SagaNotFound(
        f"no unfinished saga {saga_id} in any orchestrator's log under {home}: "
        "it finished (see `twopc sagas`), or never began"
    )


def _resolution(state: SagaState, orchestrator: str, action: str, reason: str) -> SagaResolution:
    return SagaResolution(state.saga_id, orchestrator, action, reason, state.finished)


def _dead_letter_reason(state: SagaState) -> str:
    errors = "; ".join(f"comp {n}: {f.error}" for n, f in sorted(state.dead_letters.items()))
    return f"dead-lettered ({errors}); retry it with `twopc sagas retry {state.saga_id}`"


def _stuck_reason(state: SagaState) -> str:
    return "cannot resume it: " + "; ".join(state.problems)


def _why(outcome: SagaOutcome) -> str:
    state = outcome.state
    if state.finished:
        return f"resumed {'backward' if state.backward else 'forward'} from the log"
    if state.problems:
        return _stuck_reason(state)
    return f"{outcome_of(state)}: {state.last_error or 'waiting'}"
