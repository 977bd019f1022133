"""Manual resolution: an operator finishes every branch of one gtrid, recorded in a log.

The rules (when it is heuristic, when it needs ``force``) are :func:`decide_resolution` in
:mod:`coordinator.decisions`. While it acts, ``resolve`` holds the home's recovery turn and,
when it can, the coordinator's own log lock, so neither a recovery nor that coordinator
restarting can act on the same branches at the same time.

Every resolution is recorded in the operator's log (``HOME/txlog/_operator``) with the state
of every branch it knows of afterwards — from the COMMIT record, the servers and the outcome
markers — so ``audit`` can judge it later from the record alone. One that left the
transaction half committed is a violation: its record is kept unfinished, so checkpoints
never drop it and ``audit`` reports it for good.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from twopc.coordinator.acting import Resolution, finish_branch, forget_markers, recovery_turn
from twopc.coordinator.decisions import BranchFacts, Logged, decide_resolution
from twopc.coordinator.errors import RecoveryError
from twopc.coordinator.facts import (
    OPERATOR_LOG,
    RESOLVE,
    Evidence,
    LogState,
    Prepared,
    coordinator_home,
    gather_evidence,
    inspect_log,
    missing_log,
    prepared_everywhere,
)
from twopc.coordinator.ids import coordinator_of
from twopc.coordinator.records import EndedBy, EndRecord
from twopc.participants import Participant
from twopc.txlog import LogError, LogLocked, Record, TransactionLog

COMMITTED = "committed"
ROLLED_BACK = "rolled back"
PREPARED = "prepared"


@dataclass(frozen=True)
class ManualResolution:
    gtrid: str
    decision: str  # "commit" | "rollback"
    logged: str  # what the coordinator's log says (a Logged value)
    heuristic: bool
    branches: list[Resolution]
    #: Every branch known afterwards (``participant/bqual``) -> committed, rolled back,
    #: prepared; what ``audit`` judges the resolution by.
    outcome: dict[str, str]

    @property
    def violation(self) -> bool:
        """Whether the transaction ended half committed."""
        states = set(self.outcome.values())
        return COMMITTED in states and ROLLED_BACK in states

    def to_json(self) -> dict[str, object]:
        return {
            "gtrid": self.gtrid,
            "decision": self.decision,
            "logged_decision": self.logged,
            "heuristic": self.heuristic,
            "violation": self.violation,
            "branches": [b.to_json() for b in self.branches],
            "outcome": self.outcome,
        }


def resolve(
    participants: Sequence[Participant], home: Path, gtrid: str, *, commit: bool, force: bool
) -> ManualResolution:
    """Finish every branch of ``gtrid`` as the operator says, and record it in a log.

    Refused (RecoveryError, nothing changed) when it would go against what is known without
    ``force``: see :func:`decide_resolution`.
    """
    with recovery_turn(home):
        branches = [p for p in prepared_everywhere(participants) if p.ours and p.gtrid == gtrid]
        if not branches:
            raise RecoveryError(f"no prepared branch of {gtrid} on any configured server")
        held, state = _hold_log(home, coordinator_of(gtrid))
        try:
            return _resolve(participants, home, gtrid, branches, held, state, commit, force)
        finally:
            if held is not None:
                held.close()


def _resolve(
    participants: Sequence[Participant],
    home: Path,
    gtrid: str,
    branches: list[Prepared],
    held: TransactionLog | None,
    state: LogState,
    commit: bool,
    force: bool,
) -> ManualResolution:
    evidence = gather_evidence(participants, [gtrid])
    facts = BranchFacts(state.logged(gtrid), state.alive, evidence.of(gtrid))
    verdict = decide_resolution(facts, commit=commit, force=force)
    if verdict.refusal is not None:
        raise RecoveryError(f"{gtrid}: {verdict.refusal}; add --force to do it")
    results = [_manual(p, commit) for p in branches]
    known = _known_branches(state, gtrid, evidence, branches)
    outcome = ManualResolution(
        gtrid,
        "commit" if commit else "rollback",
        facts.logged.value,
        verdict.heuristic,
        results,
        _outcome(participants, gtrid, known, results),
    )
    _record(home, outcome)
    finished = all(r.finished for r in results)
    if held is not None and facts.logged is Logged.COMMIT and finished:
        _end_by_operator(held, gtrid, outcome.decision)
    if finished:  # the record now holds the evidence; the markers are not needed
        forget_markers(participants, [gtrid])
    return outcome


def _hold_log(home: Path, coordinator: str | None) -> tuple[TransactionLog | None, LogState]:
    """The coordinator's log opened as writer (its lock held) when possible, and its state."""
    if coordinator is None:
        return None, missing_log(home, None)
    state = inspect_log(home, coordinator)
    if not state.exists or state.error is not None:
        return None, state
    try:
        held = TransactionLog.open(state.path, create=False)
    except LogLocked:
        return None, replace(state, alive=True)
    except LogError:
        return None, inspect_log(home, coordinator)  # changed meanwhile: report what it is now
    return held, replace(inspect_log(home, coordinator), alive=False)  # we hold it ourselves


def _manual(prepared: Prepared, commit: bool) -> Resolution:
    action, finished = finish_branch(prepared.participant, prepared.xid, commit=commit)
    return Resolution(prepared.gtrid, prepared.participant.name, action, "operator", finished)


def _known_branches(
    state: LogState, gtrid: str, evidence: Evidence, prepared: list[Prepared]
) -> set[tuple[str, str]]:
    """Every branch of ``gtrid`` anything tells of: the COMMIT record, the servers' prepared
    lists, and the committed markers (as ``(participant, bqual)``)."""
    known = {(p.participant.name, p.xid.bqual) for p in prepared}
    known |= evidence.committed.get(gtrid, set())
    decision = state.commits.get(gtrid)
    if decision is not None:
        known |= {(b.name, b.bqual) for b in decision.branches}
    return known


def _outcome(
    participants: Sequence[Participant],
    gtrid: str,
    known: set[tuple[str, str]],
    results: list[Resolution],
) -> dict[str, str]:
    """The state of every known branch after the resolution, judged by the markers."""
    after = gather_evidence(participants, [gtrid])
    unfinished = {r.participant for r in results if not r.finished}
    outcome = {}
    for name, bqual in sorted(known):
        if name in unfinished:
            outcome[f"{name}/{bqual}"] = PREPARED
        elif after.committed_branch(gtrid, name, bqual):
            outcome[f"{name}/{bqual}"] = COMMITTED
        else:
            outcome[f"{name}/{bqual}"] = ROLLED_BACK
    return outcome


def _record(home: Path, outcome: ManualResolution) -> None:
    """Forced to the operator's log; a violation stays unfinished there, never checkpointed."""
    record = Record(RESOLVE, outcome.gtrid, outcome.to_json(), final=not outcome.violation)
    with coordinator_home(home).open(OPERATOR_LOG) as log:
        log.append(record, force=True)


def _end_by_operator(held: TransactionLog, gtrid: str, decision: str) -> None:
    held.append(EndRecord(gtrid, EndedBy.OPERATOR, decision).record(), force=True)
    if not held.unfinished():
        held.destroy()
