"""In-doubt transactions: finding them, resolving them from the logs, auditing outcomes.

Sources of truth: each coordinator's log (COMMIT records without END) and each server's list
of prepared branches carrying our FORMAT_ID. The rules (presumed abort):

- a prepared branch whose gtrid has a COMMIT record is committed;
- one with no COMMIT record is rolled back — only once its coordinator is dead (its log lock
  is free). A live coordinator's branches are reported and never touched;
- a branch whose coordinator has no log (an orphan), or whose log is damaged anywhere but a
  torn tail, is left alone: decisions may be lost, so abort is never presumed for it.

Recovery opens a dead coordinator's log as its writer, so it holds that coordinator's lock
while it works: a coordinator restarting with the same id, or a second recovery, waits its
turn instead of racing.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.ids import check_coordinator_id, coordinator_of
from coordinator.transaction import COMMIT, END
from participants import (
    FORMAT_ID,
    BranchBusy,
    Participant,
    ParticipantError,
    PreparedBranch,
    UnknownXid,
    Xid,
)
from participants.lockwaits import LockWait
from txlog import (
    LogCorrupt,
    LogError,
    LogLocked,
    LogMissing,
    Record,
    TransactionLog,
    is_locked,
    read_log,
)

log = logging.getLogger(__name__)

DECISION_COMMIT = "commit"
DECISION_NONE = "none"  # no COMMIT record: presumed abort
DECISION_LOG_MISSING = "log missing"
DECISION_LOG_UNREADABLE = "log unreadable"

OPERATOR_LOG = "_operator"  # not a valid coordinator id, so it never collides with one
RESOLVE = "RESOLVE"
_BUSY_PATIENCE = 3.0  # seconds to wait for MariaDB to detach a dead client's branch


class RecoveryError(Exception):
    """A recovery command cannot do what was asked; nothing was changed."""


# -- what the logs say ------------------------------------------------------------------------


@dataclass(frozen=True)
class LogState:
    """What one coordinator's log says, read without taking its lock."""

    coordinator: str
    path: Path
    exists: bool
    alive: bool
    commits: dict[str, Record] = field(default_factory=dict)
    ended: dict[str, Record] = field(default_factory=dict)  # gtrid -> its final record
    error: str | None = None

    def decision(self, gtrid: str) -> str:
        if not self.exists:
            return DECISION_LOG_MISSING
        if self.error is not None:
            return DECISION_LOG_UNREADABLE
        return DECISION_COMMIT if gtrid in self.commits else DECISION_NONE


def txlog_root(home: Path) -> Path:
    return home / "txlog"


def inspect_log(home: Path, coordinator: str) -> LogState:
    """Read ``coordinator``'s log (no lock taken); damage is reported in ``error``."""
    path = txlog_root(home) / coordinator
    if not path.is_dir():
        return LogState(coordinator, path, exists=False, alive=False)
    alive = is_locked(path)
    try:
        records = read_log(path).records
    except LogMissing:
        return LogState(coordinator, path, exists=False, alive=alive)
    except LogError as err:
        return LogState(coordinator, path, exists=True, alive=alive, error=str(err))
    commits = {r.txid: r for r in records if r.kind == COMMIT}
    ended = {r.txid: r for r in records if r.final}
    return LogState(coordinator, path, True, alive, commits, ended)


def coordinator_logs(home: Path) -> list[str]:
    """Ids of every coordinator with a log directory under ``home``."""
    root = txlog_root(home)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _is_coordinator_id(p.name))


def _is_coordinator_id(name: str) -> bool:
    try:
        check_coordinator_id(name)
    except ValueError:
        return False
    return True


# -- what the servers say ---------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """One prepared branch, with the participant that holds it."""

    participant: Participant
    branch: PreparedBranch

    @property
    def xid(self) -> Xid:
        assert self.branch.xid is not None
        return self.branch.xid

    @property
    def ours(self) -> bool:
        return self.branch.xid is not None and self.branch.xid.is_ours

    @property
    def prepared_seconds(self) -> float | None:
        at = self.branch.prepared_at
        return None if at is None else max(0.0, time.time() - at)


def prepared_everywhere(participants: Sequence[Participant]) -> list[Prepared]:
    """Every prepared branch on every participant's server, ours and foreign."""
    return [Prepared(p, branch) for p in participants for branch in p.prepared_branches()]


# -- in-doubt listing -------------------------------------------------------------------------


@dataclass(frozen=True)
class InDoubtBranch:
    """A prepared branch of ours, with what its coordinator's log says about it."""

    gtrid: str
    participant: str
    server: str
    coordinator: str | None
    coordinator_alive: bool | None  # None: no log found
    decision: str
    prepared_seconds: float | None
    blocking: tuple[dict[str, object], ...] = ()
    detail: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "gtrid": self.gtrid,
            "server": self.participant,
            "address": self.server,
            "coordinator": self.coordinator,
            "coordinator_alive": self.coordinator_alive,
            "decision": self.decision,
            "prepared_seconds": _rounded(self.prepared_seconds),
            "blocking": list(self.blocking),
            "detail": self.detail,
            "foreign": False,
        }


@dataclass(frozen=True)
class ForeignBranch:
    """A prepared transaction that is not ours: listed, never touched."""

    participant: str
    server: str
    name: str
    prepared_seconds: float | None

    def to_json(self) -> dict[str, object]:
        """The same keys as an in-doubt branch of ours, so one list can hold both."""
        return {
            "gtrid": self.name,
            "server": self.participant,
            "address": self.server,
            "coordinator": None,
            "coordinator_alive": None,
            "decision": "foreign",
            "prepared_seconds": _rounded(self.prepared_seconds),
            "blocking": [],
            "detail": None,
            "foreign": True,
        }


@dataclass(frozen=True)
class InDoubtReport:
    branches: list[InDoubtBranch]
    foreign: list[ForeignBranch]


def find_in_doubt(
    participants: Sequence[Participant], home: Path, *, with_blocking: bool = True
) -> InDoubtReport:
    """Every prepared branch on the servers: ours with their log's verdict, and foreign ones."""
    prepared = prepared_everywhere(participants)
    logs: dict[str, LogState] = {}
    waits = _lock_waits(participants) if with_blocking and prepared else {}
    ours = [_in_doubt(p, home, logs, waits) for p in prepared if p.ours]
    foreign = [
        ForeignBranch(p.participant.name, p.participant.server, p.branch.name, p.prepared_seconds)
        for p in prepared
        if not p.ours
    ]
    return InDoubtReport(ours, foreign)


def _in_doubt(
    prepared: Prepared,
    home: Path,
    logs: dict[str, LogState],
    waits: dict[Xid, list[dict[str, object]]],
) -> InDoubtBranch:
    gtrid = prepared.xid.gtrid
    coordinator = coordinator_of(gtrid)
    state = None
    if coordinator is not None:
        state = logs.setdefault(coordinator, inspect_log(home, coordinator))
    decision = state.decision(gtrid) if state else DECISION_LOG_MISSING
    alive = state.alive if state and state.exists else None
    return InDoubtBranch(
        gtrid,
        prepared.participant.name,
        prepared.participant.server,
        coordinator,
        alive,
        decision,
        prepared.prepared_seconds,
        tuple(waits.get(prepared.xid, ())),
        state.error if state else None,
    )


def _lock_waits(participants: Sequence[Participant]) -> dict[Xid, list[dict[str, object]]]:
    """Sessions waiting on locks of prepared branches, by the branch they wait for."""
    waits: dict[Xid, list[dict[str, object]]] = defaultdict(list)
    for participant in participants:
        try:
            found = participant.lock_waits()
        except ParticipantError:
            continue  # blocking is extra information; the listing stands without it
        for wait in found:
            if wait.blocker is not None:
                waits[wait.blocker].append(wait_json(wait))
    return waits


def wait_json(wait: LockWait) -> dict[str, object]:
    query = " ".join(wait.query.split()) if wait.query else wait.query  # one line per waiter
    return {
        "waiter": wait.waiter,
        "query": query,
        "waited_seconds": _rounded(wait.waited_seconds),
    }


# -- resolving branches -----------------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """What recovery did (or would do, or could not do) with one branch."""

    gtrid: str
    participant: str
    action: str
    reason: str
    finished: bool

    def to_json(self) -> dict[str, object]:
        return {
            "gtrid": self.gtrid,
            "server": self.participant,
            "action": self.action,
            "reason": self.reason,
            "finished": self.finished,
        }


@dataclass
class RecoveryReport:
    resolutions: list[Resolution] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    removed_logs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def in_doubt_remains(self) -> bool:
        return bool(self.problems) or any(not r.finished for r in self.resolutions)

    def to_json(self) -> dict[str, object]:
        return {
            "resolutions": [r.to_json() for r in self.resolutions],
            "ended": self.ended,
            "removed_logs": self.removed_logs,
            "problems": self.problems,
            "in_doubt_remains": self.in_doubt_remains,
        }


def finish_branch(participant: Participant, xid: Xid, *, commit: bool) -> tuple[str, bool]:
    """Commit or roll back one prepared branch; returns (what happened, finished?).

    "Unknown xid" is settled by the branch's outcome marker, never guessed; MariaDB's
    "not yet" (the preparing session is still connected) is waited out briefly.
    """
    give_up = time.monotonic() + _BUSY_PATIENCE
    while True:
        try:
            participant.finish_prepared(xid, commit=commit)
            return ("committed" if commit else "rolled back"), True
        except UnknownXid:
            return _already_finished(participant, xid)
        except BranchBusy:
            if time.monotonic() > give_up:
                return "left alone", False
            time.sleep(0.2)
        except ParticipantError as err:
            return f"failed: {err}", False


def _already_finished(participant: Participant, xid: Xid) -> tuple[str, bool]:
    try:
        return ("already committed" if participant.has_marker(xid) else "already rolled back"), True
    except ParticipantError as err:
        return f"unknown ({err})", False


class LogResolver:
    """Resolves the prepared branches of one coordinator whose log it holds open (locked)."""

    def __init__(self, log: TransactionLog, participants: Sequence[Participant]) -> None:
        self.log = log
        self._participants = {p.name: p for p in participants}

    def commits(self) -> dict[str, Record]:
        """The unfinished COMMIT decisions in the log, by gtrid."""
        return {
            txid: next(r for r in records if r.kind == COMMIT)
            for txid, records in self.log.unfinished().items()
            if any(r.kind == COMMIT for r in records)
        }

    def resolve(self, branches: Iterable[Prepared], report: RecoveryReport) -> None:
        """Finish every branch by the log's decision, then END the decisions now complete."""
        commits = self.commits()
        for prepared in branches:
            commit = prepared.xid.gtrid in commits
            action, finished = finish_branch(prepared.participant, prepared.xid, commit=commit)
            reason = "COMMIT record in the log" if commit else "no COMMIT record: presumed abort"
            if not finished:
                reason += "; the server would not finish it yet (session still connected?)"
            report.resolutions.append(
                Resolution(prepared.xid.gtrid, prepared.participant.name, action, reason, finished)
            )
        for gtrid, record in commits.items():
            self._end_if_complete(gtrid, record, report)

    def _end_if_complete(self, gtrid: str, record: Record, report: RecoveryReport) -> None:
        states = [self._branch_state(gtrid, entry) for entry in _branches_of(record)]
        if all(state == "committed" for state in states):
            self.log.append(Record(END, gtrid, {"by": "recovery"}, final=True), force=False)
            report.ended.append(gtrid)
        elif "rolled back" in states:
            report.problems.append(
                f"{gtrid}: the log says COMMIT but a branch has no outcome marker (it was rolled "
                "back by someone else): a heuristic outcome; see `twopc audit`"
            )

    def _branch_state(self, gtrid: str, entry: dict[str, str]) -> str:
        participant = self._participants.get(entry["name"])
        if participant is None:
            return "unknown"  # that server is not configured for this recovery
        xid = Xid(FORMAT_ID, gtrid, entry["bqual"])
        try:
            if any(b.xid == xid for b in participant.prepared_branches()):
                return "prepared"
            return "committed" if participant.has_marker(xid) else "rolled back"
        except ParticipantError:
            return "unknown"


def _branches_of(record: Record) -> list[dict[str, str]]:
    branches = record.body.get("branches", [])
    return [dict(b) for b in branches] if isinstance(branches, list) else []


# -- recover ----------------------------------------------------------------------------------


def recover(
    participants: Sequence[Participant], home: Path, *, dry_run: bool = False
) -> RecoveryReport:
    """Resolve every in-doubt branch of every dead coordinator (see the module rules)."""
    report = RecoveryReport()
    by_coordinator: dict[str | None, list[Prepared]] = defaultdict(list)
    for prepared in prepared_everywhere(participants):
        if prepared.ours:
            by_coordinator[coordinator_of(prepared.xid.gtrid)].append(prepared)
    for prepared in by_coordinator.pop(None, []):
        _leave(report, prepared, "its gtrid names no coordinator: resolve it with `twopc resolve`")
    coordinators = {c for c in by_coordinator if c is not None} | set(coordinator_logs(home))
    for coordinator in sorted(coordinators):
        branches = by_coordinator.get(coordinator, [])
        if dry_run:
            _plan(inspect_log(home, coordinator), branches, report)
        else:
            _recover_coordinator(home, coordinator, branches, participants, report)
    forget_markers(participants, report.ended)
    return report


def _recover_coordinator(
    home: Path,
    coordinator: str,
    branches: list[Prepared],
    participants: Sequence[Participant],
    report: RecoveryReport,
) -> None:
    try:
        log = TransactionLog.open(txlog_root(home) / coordinator, create=False)
    except LogLocked:
        for prepared in branches:
            _leave(report, prepared, f"coordinator {coordinator} is alive: it finishes its own")
        return
    except LogMissing:
        for prepared in branches:
            _leave(report, prepared, _ORPHAN.format(coordinator=coordinator))
        return
    except LogCorrupt as err:
        _refuse(report, coordinator, branches, str(err))
        return
    LogResolver(log, participants).resolve(branches, report)
    if log.unfinished():
        log.close()
    else:
        log.destroy()
        report.removed_logs.append(coordinator)


_ORPHAN = (
    "no log for coordinator {coordinator} (an orphan): its decision is unknown; "
    "resolve it by hand with `twopc resolve GTRID --commit|--rollback`"
)


def _refuse(report: RecoveryReport, coordinator: str, branches: list[Prepared], why: str) -> None:
    report.problems.append(
        f"log of coordinator {coordinator} is damaged ({why}): decisions may be lost, so "
        "abort is not presumed for its branches; inspect it with `twopc log verify` and "
        "resolve them by hand with `twopc resolve`"
    )
    for prepared in branches:
        _leave(report, prepared, "its coordinator's log is damaged")


def _leave(report: RecoveryReport, prepared: Prepared, reason: str) -> None:
    report.resolutions.append(
        Resolution(prepared.xid.gtrid, prepared.participant.name, "left alone", reason, False)
    )


def _plan(state: LogState, branches: list[Prepared], report: RecoveryReport) -> None:
    """Dry run: say what recovery would do with one coordinator's branches."""
    if state.error is not None:
        _refuse(report, state.coordinator, branches, state.error)
        return
    for prepared in branches:
        gtrid = prepared.xid.gtrid
        if not state.exists:
            _leave(report, prepared, _ORPHAN.format(coordinator=state.coordinator))
        elif state.alive:
            _leave(report, prepared, f"coordinator {state.coordinator} is alive")
        else:
            commit = state.decision(gtrid) == DECISION_COMMIT
            action = "would commit" if commit else "would roll back"
            reason = "COMMIT record in the log" if commit else "no COMMIT record: presumed abort"
            report.resolutions.append(
                Resolution(gtrid, prepared.participant.name, action, reason, True)
            )


def forget_markers(participants: Sequence[Participant], gtrids: list[str]) -> None:
    """Delete the outcome markers of ended transactions; a failure only leaves garbage."""
    for participant in participants:
        try:
            participant.forget_markers(gtrids)
        except ParticipantError as err:
            log.info("outcome markers not collected on %s: %s", participant.server, err)


def recover_own(
    log: TransactionLog, coordinator: str, participants: Sequence[Participant]
) -> RecoveryReport:
    """A (re)starting coordinator resolves its own in-doubt branches before new work."""
    report = RecoveryReport()
    mine = [
        p
        for p in prepared_everywhere(participants)
        if p.ours and coordinator_of(p.xid.gtrid) == coordinator
    ]
    LogResolver(log, participants).resolve(mine, report)
    forget_markers(participants, report.ended)
    return report


# -- resolve by hand --------------------------------------------------------------------------


@dataclass(frozen=True)
class ManualResolution:
    gtrid: str
    decision: str  # "commit" | "rollback"
    logged: str  # what the coordinator's log says
    heuristic: bool
    branches: list[Resolution]

    def to_json(self) -> dict[str, object]:
        return {
            "gtrid": self.gtrid,
            "decision": self.decision,
            "logged_decision": self.logged,
            "heuristic": self.heuristic,
            "branches": [b.to_json() for b in self.branches],
        }


def resolve(
    participants: Sequence[Participant], home: Path, gtrid: str, *, commit: bool, force: bool
) -> ManualResolution:
    """Finish every branch of ``gtrid`` as the operator says, and record it in a log.

    Going against the log (rolling back a logged commit, committing without one) is a
    heuristic outcome: refused unless ``force``. So is touching a live coordinator's branch.
    """
    branches = [p for p in prepared_everywhere(participants) if p.ours and p.xid.gtrid == gtrid]
    if not branches:
        raise RecoveryError(f"no prepared branch of {gtrid} on any configured server")
    coordinator = coordinator_of(gtrid)
    state = inspect_log(home, coordinator) if coordinator else None
    logged = state.decision(gtrid) if state else DECISION_LOG_MISSING
    _check_resolution(gtrid, state, logged, commit=commit, force=force)
    heuristic = logged in (DECISION_COMMIT, DECISION_NONE) and (logged == DECISION_COMMIT) != commit
    results = [_manual(p, commit) for p in branches]
    decision = "commit" if commit else "rollback"
    outcome = ManualResolution(gtrid, decision, logged, heuristic, results)
    _audit_record(home, outcome)
    if state is not None and logged == DECISION_COMMIT and all(r.finished for r in results):
        _end_by_operator(state, gtrid, decision)
    return outcome


def _check_resolution(
    gtrid: str, state: LogState | None, logged: str, *, commit: bool, force: bool
) -> None:
    if force:
        return
    if state is not None and state.alive:
        raise RecoveryError(
            f"coordinator {state.coordinator} is alive and will finish {gtrid} itself; "
            "add --force to override it"
        )
    if logged == DECISION_COMMIT and not commit:
        raise RecoveryError(
            f"the log records a COMMIT decision for {gtrid}: rolling it back would be a "
            "heuristic outcome (some branches may already be committed); add --force to do it"
        )
    if logged == DECISION_NONE and commit:
        raise RecoveryError(
            f"the log has no COMMIT record for {gtrid} (presumed abort): committing it would be "
            "a heuristic outcome (a branch may never have prepared); add --force to do it"
        )


def _manual(prepared: Prepared, commit: bool) -> Resolution:
    action, finished = finish_branch(prepared.participant, prepared.xid, commit=commit)
    return Resolution(prepared.xid.gtrid, prepared.participant.name, action, "operator", finished)


def _audit_record(home: Path, outcome: ManualResolution) -> None:
    with TransactionLog.open(txlog_root(home) / OPERATOR_LOG) as log:
        log.append(Record(RESOLVE, outcome.gtrid, outcome.to_json(), final=True), force=True)


def _end_by_operator(state: LogState, gtrid: str, decision: str) -> None:
    try:
        log = TransactionLog.open(state.path, create=False)
    except LogError:
        return  # recovery will END it once it sees nothing left prepared
    body = {"by": "operator", "decision": decision}
    log.append(Record(END, gtrid, body, final=True), force=True)
    if log.unfinished():
        log.close()
    else:
        log.destroy()


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
