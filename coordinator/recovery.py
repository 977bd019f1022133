"""Recovery: finishing the in-doubt branches of dead coordinators, by the rules of
:mod:`coordinator.decisions`, from the facts :mod:`coordinator.facts` reads.

Recovery opens a dead coordinator's log as its writer, so it holds that coordinator's lock
while it acts: a coordinator restarting with the same id waits its turn instead of racing.
Two recoveries of one home take turns too (the home's recovery lock), and each lists the
prepared branches only once it has the turn, so neither reports as left over what the other
just finished.

Outcome markers are deleted only once nothing needs them: after the END records covering
them are durable, and — for a dead coordinator's log held locked — for every gtrid it minted
that is neither unfinished in its log nor prepared on any server (this also collects the
markers a coordinator killed before its own collection left behind).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from twopc.coordinator.acting import (
    RecoveryReport,
    Resolution,
    act,
    finish_branch,
    forget_markers,
    leave,
    recovery_turn,
)
from twopc.coordinator.decisions import Action, BranchFacts, Logged, decide
from twopc.coordinator.errors import RecoveryError
from twopc.coordinator.facts import (
    DECISION_NONE,
    OPERATOR_LOG,
    RESOLVE,
    Evidence,
    LogState,
    Prepared,
    by_coordinator,
    coordinator_logs,
    facts_of,
    gather_evidence,
    inspect_log,
    missing_log,
    prepared_everywhere,
    prepared_of,
    txlog_root,
)
from twopc.coordinator.listing import InDoubtBranch, InDoubtReport, find_in_doubt
from twopc.coordinator.records import BranchEntry, CommitDecision, EndedBy, EndRecord, Kind
from twopc.coordinator.resolve import ManualResolution, resolve
from twopc.participants import FORMAT_ID, Participant, ParticipantError, Xid
from twopc.txlog import LogCorrupt, LogError, LogLocked, LogMissing, TransactionLog

__all__ = [
    "DECISION_NONE",
    "OPERATOR_LOG",
    "RESOLVE",
    "InDoubtBranch",
    "InDoubtReport",
    "ManualResolution",
    "RecoveryError",
    "RecoveryReport",
    "Resolution",
    "find_in_doubt",
    "finish_branch",
    "forget_markers",
    "recover",
    "recover_own",
    "recovery_turn",
    "resolve",
    "txlog_root",
]

log = logging.getLogger(__name__)

# -- a coordinator's log, held -----------------------------------------------------------------


class LogResolver:
    """Resolves the prepared branches of one coordinator whose log it holds open (locked)."""

    def __init__(self, log: TransactionLog, participants: Sequence[Participant]) -> None:
        self.log = log
        self._participants = list(participants)
        self._by_name = {p.name: p for p in participants}

    def commits(self) -> dict[str, CommitDecision | None]:
        """The unfinished COMMIT decisions in the log, by gtrid (None: a COMMIT record too
        malformed to say its branches — the decision stands, its completion cannot be told)."""
        found: dict[str, CommitDecision | None] = {}
        for txid, records in self.log.unfinished().items():
            for record in records:
                if record.kind == Kind.COMMIT.value:
                    try:
                        found[txid] = CommitDecision.from_record(record)
                    except ValueError:
                        found[txid] = None
        return found

    def resolve(self, branches: Sequence[Prepared], report: RecoveryReport) -> None:
        """Finish every branch by the log's decision (or the evidence), END the decisions
        now complete, make those ENDs durable, then collect the markers nobody needs."""
        commits = self.commits()
        undecided = [b.gtrid for b in branches if b.gtrid not in commits]
        evidence = gather_evidence(self._participants, undecided)
        for prepared in branches:
            logged = Logged.COMMIT if prepared.gtrid in commits else Logged.NONE
            facts = BranchFacts(logged, alive=False, evidence=evidence.of(prepared.gtrid))
            act(prepared, facts, report)
        self._end_complete(commits, report)
        self.log.sync()  # the ENDs are durable before any marker they cover goes
        self.collect_markers(report)

    def collect_markers(self, report: RecoveryReport) -> None:
        """Delete the markers of every gtrid this coordinator minted that its log no longer
        needs (not unfinished) and no server holds prepared. Skipped when a server cannot be
        asked: a marker may be the only evidence for a branch there."""
        coordinator = self.log.path.name
        try:
            minted: set[str] = set()
            for participant in self._participants:
                minted |= {g for g, _ in participant.markers_of_coordinator(coordinator)}
            prepared = {p.gtrid for p in prepared_of(self._participants, coordinator)}
        except ParticipantError as err:
            log.info("outcome markers of %s not collected: %s", coordinator, err)
            return
        unfinished = set(self.log.unfinished())
        report.markers_collected += forget_markers(
            self._participants, minted - unfinished - prepared
        )

    def _end_complete(
        self, commits: dict[str, CommitDecision | None], report: RecoveryReport
    ) -> None:
        """Write END for every decision whose branches all committed (judged from one fresh
        listing and one marker query per server); report those a branch went against."""
        if not commits:
            return
        try:
            still = {p.xid for p in prepared_everywhere(self._participants)}
            committed = gather_evidence(self._participants, list(commits))
        except ParticipantError as err:
            report.problems.append(f"could not tell which decisions are complete: {err}")
            return
        for gtrid, decision in commits.items():
            if decision is None:
                report.problems.append(f"{gtrid}: its COMMIT record is malformed; see `twopc log`")
                continue
            states = [self._branch_state(decision, e, still, committed) for e in decision.branches]
            if all(state == "committed" for state in states):
                self.log.append(EndRecord(gtrid, EndedBy.RECOVERY).record(), force=False)
                report.ended.append(gtrid)
            elif "rolled back" in states:
                report.problems.append(
                    f"{gtrid}: the log says COMMIT but a branch has no outcome marker (it was "
                    "rolled back by someone else): a heuristic outcome; see `twopc audit`"
                )

    def _branch_state(
        self, decision: CommitDecision, entry: BranchEntry, still: set[Xid], committed: Evidence
    ) -> str:
        if entry.name not in self._by_name or entry.name in committed.unknown:
            return "unknown"  # that server is not configured for (or did not answer) recovery
        if Xid(FORMAT_ID, decision.gtrid, entry.bqual) in still:
            return "prepared"
        if committed.committed_branch(decision.gtrid, entry.name, entry.bqual):
            return "committed"
        return "rolled back"


# -- recover ----------------------------------------------------------------------------------


def recover(
    participants: Sequence[Participant], home: Path, *, dry_run: bool = False
) -> RecoveryReport:
    """Resolve every in-doubt branch of every dead coordinator (see the module rules)."""
    if dry_run:
        return _plan(participants, home)
    with recovery_turn(home):
        report = RecoveryReport()
        grouped = by_coordinator(prepared_everywhere(participants))
        nameless = grouped.pop(None, [])
        evidence = gather_evidence(participants, (p.gtrid for p in nameless))
        for prepared in nameless:
            act(prepared, facts_of(prepared, missing_log(home, None), evidence), report)
        for coordinator in sorted({c for c in grouped if c} | set(coordinator_logs(home))):
            _recover_coordinator(
                home, coordinator, grouped.get(coordinator, []), participants, report
            )
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
        txlog = TransactionLog.open(txlog_root(home) / coordinator, create=False)
    except LogLocked:
        _without_log(inspect_log(home, coordinator), branches, participants, report)
        return
    except LogMissing:
        # Listed before we had our turn: another recovery may have finished them since.
        fresh = prepared_of(participants, coordinator)
        _without_log(missing_log(home, coordinator), fresh, participants, report)
        _collect_orphan_markers(home, coordinator, participants, report)
        return
    except LogCorrupt as err:
        state = LogState(coordinator, txlog_root(home) / coordinator, True, False, error=str(err))
        _without_log(state, branches, participants, report)
        return
    LogResolver(txlog, participants).resolve(prepared_of(participants, coordinator), report)
    if txlog.unfinished():
        txlog.close()
    else:
        txlog.destroy()
        report.removed_logs.append(coordinator)


def _collect_orphan_markers(
    home: Path, coordinator: str, participants: Sequence[Participant], report: RecoveryReport
) -> None:
    """A coordinator with no log: once nothing of it is prepared any more, its markers are
    evidence for nothing, so they go. Its (new, empty) log is held meanwhile, so no
    coordinator can start with its id and commit something whose marker this would take."""
    try:
        if prepared_of(participants, coordinator):
            return  # still evidence for what is left: an operator resolves it first
        held = TransactionLog.open(txlog_root(home) / coordinator)
    except (ParticipantError, LogError):
        return
    try:
        LogResolver(held, participants).collect_markers(report)
    finally:
        held.destroy()


def _without_log(
    state: LogState,
    branches: list[Prepared],
    participants: Sequence[Participant],
    report: RecoveryReport,
) -> None:
    """Branches of a coordinator whose log recovery cannot hold: alive, missing or damaged.
    Only evidence lets it act on them (see the rules)."""
    if state.error is not None:
        report.problems.append(
            f"log of coordinator {state.coordinator} is damaged ({state.error}): decisions may "
            "be lost, so abort is not presumed for its branches; inspect it with `twopc log "
            "verify` and resolve them by hand with `twopc resolve`"
        )
    evidence = gather_evidence(participants, (b.gtrid for b in branches))
    for prepared in branches:
        act(prepared, facts_of(prepared, state, evidence), report)


def _plan(participants: Sequence[Participant], home: Path) -> RecoveryReport:
    """Dry run: say what recovery would do with every branch; change nothing."""
    report = RecoveryReport()
    prepared = [p for p in prepared_everywhere(participants) if p.ours]
    evidence = gather_evidence(participants, (p.gtrid for p in prepared))
    logs: dict[str | None, LogState] = {}
    for each in prepared:
        coordinator = each.coordinator
        if coordinator not in logs:
            logs[coordinator] = (
                inspect_log(home, coordinator) if coordinator else missing_log(home, None)
            )
        _plan_one(each, facts_of(each, logs[coordinator], evidence), report)
    return report


def _plan_one(prepared: Prepared, facts: BranchFacts, report: RecoveryReport) -> None:
    verdict = decide(facts)
    would = {Action.COMMIT: "would commit", Action.ROLL_BACK: "would roll back"}
    if verdict.action is Action.LEAVE:
        leave(report, prepared, verdict.reason)
        return
    report.resolutions.append(
        Resolution(
            prepared.gtrid, prepared.participant.name, would[verdict.action], verdict.reason, True
        )
    )


def recover_own(
    txlog: TransactionLog, coordinator: str, participants: Sequence[Participant]
) -> RecoveryReport:
    """A (re)starting coordinator resolves its own in-doubt branches before new work."""
    report = RecoveryReport()
    LogResolver(txlog, participants).resolve(prepared_of(participants, coordinator), report)
    return report
