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
import threading
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twopc.coordinator.acting import (
    RecoveryReport,
    Resolution,
    act_together,
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
    coordinator_home,
    coordinator_logs,
    facts_of,
    gather_evidence,
    inspect_log,
    missing_log,
    prepared_everywhere,
    txlog_root,
)
from twopc.coordinator.ids import coordinator_of
from twopc.coordinator.listing import InDoubtBranch, InDoubtReport, find_in_doubt
from twopc.coordinator.records import BranchEntry, CommitDecision, EndedBy, EndRecord, Kind
from twopc.coordinator.resolve import ManualResolution, resolve
from twopc.participants import FORMAT_ID, Participant, ParticipantError, Xid
from twopc.participants.lockwaits import LockWait
from twopc.participants.xid import gtrids_named_in
from twopc.txlog import LogCorrupt, LogError, LogLocked, LogMissing, TransactionLog
from twopc.txlog.files import fsync_directory

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

# -- one pass of recovery ---------------------------------------------------------------------

#: Branches finished at once per server (each on a connection of its own).
WORKERS_PER_SERVER = 8
#: Prepared branches finished in one request where the server allows (MariaDB: several
#: ``XA COMMIT`` in one multi-statement request; PostgreSQL's ``COMMIT PREPARED`` cannot share
#: one, so there a batch is that many requests, one after the other).
BRANCHES_PER_REQUEST = 16
#: Dead coordinators' logs held open at once (two descriptors each).
LOGS_AT_ONCE = 128
#: Logs closed or removed at the same time when recovery releases a chunk.
RELEASES_AT_ONCE = 4


class _Session:
    """One pass of recovery over a snapshot of the servers: the prepared branches are listed
    once, the evidence read once, and the snapshot kept up to date as branches are finished,
    so no coordinator's share costs another listing (recovery holds the home's turn, so only
    a live or restarting coordinator can change what it lists, and such branches are left
    alone or settled by their markers)."""

    def __init__(self, participants: Sequence[Participant], report: RecoveryReport) -> None:
        self.participants = list(participants)
        self.by_name = {p.name: p for p in participants}
        self.report = report
        self.prepared = [p for p in prepared_everywhere(participants) if p.ours]
        self.still = {p.xid for p in self.prepared}
        self.listed = set(self.still)  # every branch this recovery has listed
        self.evidence = gather_evidence(participants, {p.gtrid for p in self.prepared})
        waits = self._lock_waits() if self.prepared else []
        #: The prepared branches other sessions wait on (their rows are freed first), and
        #: the coordinators whose requests those sessions run (fenced first), whether or not
        #: the branch waited on could be named (MariaDB's sometimes cannot).
        self.waited = {w.blocker for w in waits if w.blocker is not None}
        self.waiting = {
            coordinator_of(gtrid) for w in waits for gtrid in gtrids_named_in(w.query or "")
        }
        self._lock = threading.Lock()

    def act_all(self, plans: Sequence[tuple[Prepared, BranchFacts]]) -> None:
        """Carry the verdicts out concurrently, a few requests at a time per server, each
        finishing a batch of one server's branches with one verdict (in one request where
        the server allows); the branches other sessions wait on first, in batches of their
        own (their rows are freed soonest)."""
        lanes = max(1, len(self.participants)) * WORKERS_PER_SERVER
        with ThreadPoolExecutor(lanes, "twopc-recovery") as pool:
            list(pool.map(self._act, batches(plans, self.waited)))

    def _act(self, batch: Sequence[tuple[Prepared, BranchFacts]]) -> None:
        finished = act_together(batch, self.report)
        with self._lock:
            self.still.difference_update(finished)

    def fence(self, coordinators: Collection[str]) -> set[str]:
        """Stop the requests of these dead coordinators (their logs held) that a server is
        still running, and wait until their sessions are gone: a request waiting for a row
        lock would otherwise prepare its branch once it got the lock, after this recovery
        listed the servers (see :mod:`twopc.participants.requests`). Returns the coordinators
        this cannot vouch for: all of them when a server could not be asked."""
        if not coordinators:
            return set()
        prefixes = [f"{c}." for c in coordinators]
        for participant in self.participants:
            try:
                stopped = participant.stop_requests(prefixes)
            except ParticipantError as err:
                self.report.problems.append(
                    f"{participant.server}: could not make sure that no request of a dead "
                    f"coordinator is still running there ({err}): their logs are kept"
                )
                return set(coordinators)
            self.report.stopped_requests.extend(sorted(stopped))
        return set()

    def late(self, coordinators: Collection[str]) -> tuple[list[Prepared], set[str]]:
        """Branches of these (fenced) coordinators prepared now that the listing at the start
        did not hold (a request that prepared between that listing and the fence), and the
        coordinators whose branches could not be listed again."""
        wanted = set(coordinators)
        if not wanted:
            return [], set()
        found: list[Prepared] = []
        for participant in self.participants:
            try:
                fresh = {
                    x
                    for x in participant.prepared_xids()
                    if coordinator_of(x.gtrid) in wanted and x not in self.listed
                }
                if fresh:
                    branches = participant.prepared_branches()
                    found += [Prepared(participant, b) for b in branches if b.xid in fresh]
            except ParticipantError as err:
                self.report.problems.append(
                    f"{participant.server}: could not list prepared branches again ({err}): "
                    "the logs of the coordinators it holds branches of are kept"
                )
                return found, wanted
        if found:
            more = gather_evidence(self.participants, {p.gtrid for p in found})
            self.evidence = Evidence(
                {**self.evidence.committed, **more.committed},
                tuple(sorted({*self.evidence.unknown, *more.unknown})),
            )
            self.prepared += found
            self.listed |= {p.xid for p in found}
            self.still |= {p.xid for p in found}
        return found, set()

    def left_prepared(self, coordinators: Collection[str]) -> set[str]:
        """Those of ``coordinators`` with a branch this recovery did not finish (left alone
        or failed): their logs must stay for the recovery that will."""
        wanted = set(coordinators)
        return {c for c in map(coordinator_of, (x.gtrid for x in self.still)) if c in wanted}

    def _lock_waits(self) -> list[LockWait]:
        waits: list[LockWait] = []
        for participant in self.participants:
            try:
                waits += participant.lock_waits()
            except ParticipantError:
                continue  # an order to act in, no more: recovery goes on without it
        return waits

    def end_complete(self, held: dict[str, TransactionLog]) -> None:
        """END every decision of the held logs whose branches all committed, judged from
        the snapshot and one marker query per server; make those ENDs durable."""
        decisions = {c: _commits(log) for c, log in held.items()}
        gtrids = [g for commits in decisions.values() for g in commits]
        committed = gather_evidence(self.participants, gtrids) if gtrids else Evidence({})
        for coordinator, commits in decisions.items():
            for gtrid, decision in commits.items():
                self._end_if_complete(held[coordinator], gtrid, decision, committed)
            held[coordinator].sync()  # the ENDs are durable before any marker they cover goes

    def _end_if_complete(
        self,
        txlog: TransactionLog,
        gtrid: str,
        decision: CommitDecision | None,
        committed: Evidence,
    ) -> None:
        if decision is None:
            self.report.problems.append(f"{gtrid}: its COMMIT record is malformed; see `twopc log`")
            return
        states = [self._branch_state(gtrid, entry, committed) for entry in decision.branches]
        if all(state == "committed" for state in states):
            txlog.append(EndRecord(gtrid, EndedBy.RECOVERY).record(), force=False)
            self.report.ended.append(gtrid)
        elif "rolled back" in states:
            self.report.problems.append(
                f"{gtrid}: the log says COMMIT but a branch has no outcome marker (it was "
                "rolled back by someone else): a heuristic outcome; see `twopc audit`"
            )

    def _branch_state(self, gtrid: str, entry: BranchEntry, committed: Evidence) -> str:
        if entry.name not in self.by_name or entry.name in committed.unknown:
            return "unknown"  # that server is not configured for (or did not answer) recovery
        if Xid(FORMAT_ID, gtrid, entry.bqual) in self.still:
            return "prepared"
        if committed.committed_branch(gtrid, entry.name, entry.bqual):
            return "committed"
        return "rolled back"

    def elsewhere(self, coordinators: Sequence[str]) -> set[str]:
        """Those of ``coordinators`` with a branch still prepared on a configured server by
        another participant (another database or bqual, perhaps one this recovery is not
        configured with). Their logs must stay: without a log, a later recovery could not
        presume abort for that branch. Asked after acting, so branches just finished do not
        count; a server that does not answer may hold some, so then every log stays."""
        if not coordinators:
            return set()
        wanted = set(coordinators)
        found: set[str] = set()
        for participant in self.participants:
            try:
                gtrids = participant.prepared_elsewhere()
            except ParticipantError:
                return wanted
            found |= {c for c in map(coordinator_of, gtrids) if c in wanted}
        return found

    def collect_markers(self, coordinators: Sequence[str], unfinished: set[str]) -> None:
        """Delete the markers of every gtrid these coordinators minted that no log still
        needs (``unfinished``) and no server holds prepared (the caller holds their logs).
        Skipped when a server cannot be asked: a marker may be the only evidence there."""
        if not coordinators:
            return
        try:
            minted = self._minted(coordinators)
        except ParticipantError as err:
            log.info("outcome markers not collected: %s", err)
            return
        prepared = {x.gtrid for x in self.still}
        self.report.markers_collected += forget_markers(
            self.participants, minted - unfinished - prepared
        )

    def _minted(self, coordinators: Sequence[str]) -> set[str]:
        """Gtrids with a marker that these coordinators minted (one scan per server)."""
        wanted = set(coordinators)
        return {
            gtrid
            for participant in self.participants
            for gtrid, _ in participant.all_markers()
            if coordinator_of(gtrid) in wanted
        }


def _commits(txlog: TransactionLog) -> dict[str, CommitDecision | None]:
    """The unfinished COMMIT decisions in a held log, by gtrid (None: a COMMIT record too
    malformed to say its branches — the decision stands, its completion cannot be told)."""
    found: dict[str, CommitDecision | None] = {}
    for txid, records in txlog.unfinished().items():
        for record in records:
            if record.kind == Kind.COMMIT.value:
                try:
                    found[txid] = CommitDecision.from_record(record)
                except ValueError:
                    found[txid] = None
    return found


# -- recover ----------------------------------------------------------------------------------


def recover(
    participants: Sequence[Participant], home: Path, *, dry_run: bool = False
) -> RecoveryReport:
    """Resolve every in-doubt branch of every dead coordinator (see the module rules)."""
    if dry_run:
        return _plan(participants, home)
    with recovery_turn(home):
        report = RecoveryReport()
        for leftover in coordinator_home(home).remove_leftovers():
            log.info("removed %s: a log its coordinator died creating", leftover)
        session = _Session(participants, report)
        grouped = by_coordinator(session.prepared)
        nameless = grouped.pop(None, [])
        plans = [(p, facts_of(p, missing_log(home, None), session.evidence)) for p in nameless]
        session.act_all(plans)
        coordinators = sorted({c for c in grouped if c} | set(coordinator_logs(home)))
        urgent = {p.coordinator for p in session.prepared if p.xid in session.waited}
        for chunk in _chunks(coordinators, urgent, session.waiting):
            _recover_coordinators(home, chunk, grouped, session)
        forget_markers(participants, report.ended)
        return report


def batches(
    plans: Sequence[tuple[Prepared, BranchFacts]], waited: Collection[Xid]
) -> list[list[tuple[Prepared, BranchFacts]]]:
    """``plans`` cut into batches of :data:`BRANCHES_PER_REQUEST` at most, each of one
    participant's branches with one verdict, those others wait on in batches of their own,
    which come first."""
    groups: dict[tuple[int, Action, bool], list[tuple[Prepared, BranchFacts]]] = {}
    for plan in plans:
        prepared, facts = plan
        key = (id(prepared.participant), decide(facts).action, prepared.xid in waited)
        groups.setdefault(key, []).append(plan)
    cut = [
        group[n : n + BRANCHES_PER_REQUEST]
        for group in groups.values()
        for n in range(0, len(group), BRANCHES_PER_REQUEST)
    ]
    return sorted(cut, key=lambda batch: batch[0][0].xid not in waited)


def _chunks(
    coordinators: Sequence[str], urgent: Collection[str | None], waiting: Collection[str | None]
) -> list[list[str]]:
    """The coordinators to recover together, in turn, :data:`LOGS_AT_ONCE` at most. First,
    by themselves, those whose requests wait on a prepared branch (``waiting``: each chunk
    fences its dead coordinators' requests before acting, so such a request is stopped before
    the row it waits for is freed), then those whose branches others wait on (``urgent``:
    their rows are freed without waiting for any other log to be read), then the rest."""
    first = [c for c in coordinators if c in waiting]
    first += [c for c in coordinators if c in urgent and c not in waiting]
    rest = [c for c in coordinators if c not in urgent and c not in waiting]
    return [
        group[n : n + LOGS_AT_ONCE]
        for group in (first, rest)
        for n in range(0, len(group), LOGS_AT_ONCE)
    ]


def _recover_coordinators(
    home: Path,
    coordinators: Sequence[str],
    grouped: dict[str | None, list[Prepared]],
    session: _Session,
) -> None:
    """Recover a chunk of coordinators: hold the logs that can be held, decide and act on
    every branch at once, then END, collect markers and release (or remove) each log."""
    held: dict[str, TransactionLog] = {}
    keep: set[str] = set()  # logs that must stay though nothing in them is unfinished
    orphans: list[str] = []
    plans: list[tuple[Prepared, BranchFacts]] = []
    try:
        for coordinator in coordinators:
            branches = grouped.get(coordinator, [])
            state = _hold(home, coordinator, held, session.report)
            if state is None:  # held: decide from the log we hold
                commits = _commits(held[coordinator])
                plans += [(b, _held_facts(b, commits, session.evidence)) for b in branches]
                continue
            plans += [(b, facts_of(b, state, session.evidence)) for b in branches]
            if not state.exists:
                orphans.append(coordinator)
        unvouched = session.fence(list(held))
        session.act_all(plans)
        late, unlisted = session.late([c for c in held if c not in unvouched])
        session.act_all([(b, _late_facts(b, held, session.evidence)) for b in late])
        session.end_complete(held)
        unfinished = {g for txlog in held.values() for g in txlog.unfinished()}
        done = [c for c, txlog in held.items() if not txlog.unfinished()]
        elsewhere = session.elsewhere(done)
        keep = elsewhere | session.left_prepared(done) | ((unvouched | unlisted) & set(done))
        session.collect_markers([c for c in held if c not in keep], unfinished)
        _collect_orphan_markers(home, orphans, session)
        for coordinator in sorted(elsewhere):
            session.report.problems.append(
                f"coordinator {coordinator} still has branches prepared on these servers that "
                "this recovery did not finish (other databases or participants it is not "
                "configured with?): its log is kept for a recovery that can (add them with "
                "--participant NAME=URL)"
            )
    finally:
        _release_all(home, held, keep, session.report)


def _hold(
    home: Path, coordinator: str, held: dict[str, TransactionLog], report: RecoveryReport
) -> LogState | None:
    """Open a dead coordinator's log as its writer into ``held`` (None); else say why not:
    the state of a live, missing or damaged log."""
    logs = coordinator_home(home)
    path = logs.path(coordinator)
    try:
        held[coordinator] = logs.open(coordinator, create=False)
        return None
    except LogLocked:
        return inspect_log(home, coordinator)
    except LogMissing:
        return missing_log(home, coordinator)
    except LogCorrupt as err:
        report.problems.append(
            f"log of coordinator {coordinator} is damaged ({err}): decisions may be lost, so "
            "abort is not presumed for its branches; inspect it with `twopc log verify` and "
            "resolve them by hand with `twopc resolve`"
        )
        return LogState(coordinator, path, True, False, error=str(err))


def _held_facts(
    prepared: Prepared, commits: dict[str, CommitDecision | None], evidence: Evidence
) -> BranchFacts:
    logged = Logged.COMMIT if prepared.gtrid in commits else Logged.NONE
    return BranchFacts(logged, alive=False, evidence=evidence.of(prepared.gtrid))


def _late_facts(
    prepared: Prepared, held: dict[str, TransactionLog], evidence: Evidence
) -> BranchFacts:
    """A branch prepared after the listing: its coordinator's log is held (it was fenced)."""
    coordinator = prepared.coordinator
    assert coordinator is not None  # late() keeps only branches of held coordinators
    return _held_facts(prepared, _commits(held[coordinator]), evidence)


def _release_all(
    home: Path, held: dict[str, TransactionLog], keep: set[str], report: RecoveryReport
) -> None:
    """Close the held logs, removing those with nothing unfinished that need not be kept, a
    few at a time (removing files waits on the disk, not on Python); then one fsync of the
    home makes every removal durable."""

    def release(item: tuple[str, TransactionLog]) -> str | None:
        coordinator, txlog = item
        if coordinator in keep or txlog.unfinished():
            txlog.close()
            return None
        txlog.destroy(durable=False)
        return coordinator

    with ThreadPoolExecutor(RELEASES_AT_ONCE, "twopc-release") as pool:
        outcomes = list(pool.map(release, held.items()))
    removed = [coordinator for coordinator in outcomes if coordinator is not None]
    if removed:
        fsync_directory(coordinator_home(home).root)
    report.removed_logs += removed


def _collect_orphan_markers(home: Path, orphans: Sequence[str], session: _Session) -> None:
    """Coordinators with no log: once nothing of theirs is prepared any more, their markers
    are evidence for nothing, so they go. A (new, empty) log is held for each meanwhile, so
    no coordinator can start with its id and commit something whose marker this would take."""
    still = {coordinator_of(x.gtrid) for x in session.still}
    done = [c for c in orphans if c not in still]
    held: list[TransactionLog] = []
    try:
        for coordinator in done:
            try:
                held.append(coordinator_home(home).open(coordinator))
            except LogError:
                continue
        session.collect_markers([t.path.name for t in held], set())
    finally:
        for txlog in held:
            txlog.destroy()


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
    """A (re)starting coordinator resolves its own in-doubt branches before new work. A
    request its previous run left running on a server is stopped first (it could prepare a
    branch after the listing; see :meth:`_Session.fence`)."""
    report = RecoveryReport()
    prefix = [f"{coordinator}."]
    for participant in participants:
        report.stopped_requests.extend(sorted(participant.stop_requests(prefix)))
    session = _Session(participants, report)
    commits = _commits(txlog)
    mine = [p for p in session.prepared if p.coordinator == coordinator]
    session.act_all([(p, _held_facts(p, commits, session.evidence)) for p in mine])
    session.end_complete({coordinator: txlog})
    session.collect_markers([coordinator], set(txlog.unfinished()))
    return report
