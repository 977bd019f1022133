"""Audit: was every transaction the logs know about all-or-nothing?

For each COMMIT record: with an END record, every branch acknowledged its commit. Without
one, each branch is looked up on its server: still prepared (in doubt), committed (its
outcome marker is there), or rolled back (no marker) — and a COMMIT decision with a
rolled-back branch is an atomicity violation.

Manual resolutions are judged from the operator's log, which records the state of every
branch right after each one: a transaction an operator ended (its END says so) is judged by
that record, not by markers collected since, and a resolution that left a transaction half
committed is a violation for good, even once its coordinator's log is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from twopc.coordinator.facts import (
    OPERATOR_LOG,
    RESOLVE,
    coordinator_home,
    coordinator_logs,
    inspect_log,
)
from twopc.coordinator.records import CommitDecision, EndedBy
from twopc.participants import FORMAT_ID, Participant, ParticipantError, Xid
from twopc.txlog import LogError, read_log

ATOMIC = "committed"
IN_DOUBT = "in doubt"
ROLLED_BACK = "rolled back"
VIOLATION = "VIOLATION"


@dataclass(frozen=True)
class AuditEntry:
    gtrid: str
    coordinator: str
    verdict: str
    branches: dict[str, str]

    def to_json(self) -> dict[str, object]:
        return {
            "gtrid": self.gtrid,
            "coordinator": self.coordinator,
            "verdict": self.verdict,
            "branches": self.branches,
        }


@dataclass
class AuditReport:
    entries: list[AuditEntry] = field(default_factory=list)
    heuristic: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(1 for e in self.entries if e.verdict == verdict)

    @property
    def atomic(self) -> bool:
        return self.count(VIOLATION) == 0 and not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "atomic": self.atomic,
            "transactions": [e.to_json() for e in self.entries],
            "committed": self.count(ATOMIC),
            "in_doubt": self.count(IN_DOUBT),
            "violations": self.count(VIOLATION),
            "heuristic_resolutions": self.heuristic,
            "problems": self.problems,
        }


def audit(participants: Sequence[Participant], home: Path) -> AuditReport:
    """Check every transaction every log under ``home`` knows about."""
    report = AuditReport()
    by_name = {p.name: p for p in participants}
    resolutions = _resolutions(home, report)
    for coordinator in coordinator_logs(home):
        state = inspect_log(home, coordinator)
        if state.error is not None:
            report.problems.append(f"log of {coordinator} is unreadable: {state.error}")
            continue
        for gtrid, record in state.commits.items():
            end = state.ended.get(gtrid)
            if end is not None and end.by is EndedBy.OPERATOR and gtrid in resolutions:
                report.entries.append(_resolved(coordinator, resolutions.pop(gtrid)))
            else:
                report.entries.append(_entry(coordinator, record, end is not None, by_name))
    # Resolutions of transactions no coordinator's log holds any more (or never held).
    for body in resolutions.values():
        report.entries.append(_resolved(str(body.get("coordinator", "?")), body))
    return report


def _entry(
    coordinator: str, decision: CommitDecision, ended: bool, by_name: dict[str, Participant]
) -> AuditEntry:
    gtrid, names = decision.gtrid, [b.name for b in decision.branches]
    if ended:
        return AuditEntry(gtrid, coordinator, ATOMIC, dict.fromkeys(names, "committed"))
    states = {
        b.name: _branch_state(by_name.get(b.name), Xid(FORMAT_ID, gtrid, b.bqual))
        for b in decision.branches
    }
    return AuditEntry(gtrid, coordinator, _verdict(list(states.values())), states)


def _resolved(coordinator: str, body: dict[str, object]) -> AuditEntry:
    """A transaction judged by the operator's record of its branches after the resolution."""
    outcome = body.get("outcome")
    states = {str(k): str(v) for k, v in outcome.items()} if isinstance(outcome, dict) else {}
    return AuditEntry(str(body.get("gtrid")), coordinator, _verdict(list(states.values())), states)


def _branch_state(participant: Participant | None, xid: Xid) -> str:
    if participant is None:
        return "unknown (server not configured)"
    try:
        if any(b.xid == xid for b in participant.prepared_branches()):
            return "prepared"
        return "committed" if participant.has_marker(xid) else "rolled back"
    except ParticipantError as err:
        return f"unknown ({err})"


def _verdict(values: list[str]) -> str:
    if "committed" in values and "rolled back" in values:
        return VIOLATION
    if values and all(v == "committed" for v in values):
        return ATOMIC
    if values and all(v == "rolled back" for v in values):
        return ROLLED_BACK  # atomic, though against the logged decision (a heuristic outcome)
    return IN_DOUBT


def _resolutions(home: Path, report: AuditReport) -> dict[str, dict[str, object]]:
    """The latest recorded resolution of each gtrid, with the heuristic ones listed."""
    path = coordinator_home(home).path(OPERATOR_LOG)
    if not path.is_dir():
        return {}
    try:
        records = read_log(path).records
    except LogError as err:
        report.problems.append(f"operator log is unreadable: {err}")
        return {}
    latest: dict[str, dict[str, object]] = {}
    for record in records:
        if record.kind != RESOLVE:
            continue
        body = dict(record.body) | {"time": record.time}
        body.setdefault("coordinator", record.txid.rpartition(".")[0] or "?")
        if record.body.get("heuristic"):
            report.heuristic.append(body)
        if isinstance(body.get("outcome"), dict):  # records written before outcomes had none
            latest[record.txid] = body
    return latest
