"""Reading the facts recovery decides on: what the logs say, what the servers hold prepared,
who is alive, and which branches have committed (their outcome markers). No decisions here
(:mod:`coordinator.decisions`), no actions (:mod:`coordinator.recovery`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from twopc.coordinator.decisions import BranchFacts, Logged
from twopc.coordinator.ids import check_coordinator_id, coordinator_of
from twopc.coordinator.records import CommitDecision, EndRecord, Kind
from twopc.participants import Participant, ParticipantError, PreparedBranch, Xid
from twopc.txlog import LogError, LogHome, LogMissing

#: The operator's log of manual resolutions: not a valid coordinator id, so never one's log.
OPERATOR_LOG = "_operator"
RESOLVE = Kind.RESOLVE.value
DECISION_NONE = Logged.NONE.value  # what the in-doubt listing says for presumed abort


def coordinator_home(home: Path) -> LogHome:
    """The coordinators' logs under ``home`` (``<home>/txlog/<id>/``), and the operator's."""
    return LogHome(home / "txlog", check_coordinator_id, frozenset({OPERATOR_LOG}))


def txlog_root(home: Path) -> Path:
    return coordinator_home(home).root


@dataclass(frozen=True)
class LogState:
    """What one coordinator's log says, read without taking its lock."""

    coordinator: str
    path: Path
    exists: bool
    alive: bool
    commits: dict[str, CommitDecision] = field(default_factory=dict)
    ended: dict[str, EndRecord] = field(default_factory=dict)
    error: str | None = None

    def logged(self, gtrid: str) -> Logged:
        """What this log says about ``gtrid``."""
        if not self.exists:
            return Logged.LOG_MISSING
        if self.error is not None:
            return Logged.LOG_UNREADABLE
        return Logged.COMMIT if gtrid in self.commits else Logged.NONE


def inspect_log(home: Path, coordinator: str) -> LogState:
    """Read ``coordinator``'s log (no lock taken); damage is reported in ``error``."""
    logs = coordinator_home(home)
    path = logs.path(coordinator)
    if not path.is_dir():
        return LogState(coordinator, path, exists=False, alive=False)
    alive = logs.alive(coordinator)
    try:
        records = logs.read(coordinator).records
        commits = {
            r.txid: CommitDecision.from_record(r) for r in records if r.kind == Kind.COMMIT.value
        }
        ended = {r.txid: EndRecord.from_record(r) for r in records if r.kind == Kind.END.value}
    except LogMissing:
        return LogState(coordinator, path, exists=False, alive=alive)
    except (LogError, ValueError) as err:  # a record it cannot read is damage too
        return LogState(coordinator, path, exists=True, alive=alive, error=str(err))
    return LogState(coordinator, path, True, alive, commits, ended)


def missing_log(home: Path, coordinator: str | None) -> LogState:
    """The state of a log that is not there (a gtrid naming no coordinator has none)."""
    name = coordinator or "?"
    return LogState(name, txlog_root(home) / name, exists=False, alive=False)


def coordinator_logs(home: Path) -> list[str]:
    """Ids of every coordinator with a log directory under ``home``."""
    return coordinator_home(home).owners()


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
    def gtrid(self) -> str:
        return self.xid.gtrid

    @property
    def ours(self) -> bool:
        return self.branch.xid is not None and self.branch.xid.is_ours

    @property
    def coordinator(self) -> str | None:
        return coordinator_of(self.gtrid) if self.ours else None

    @property
    def prepared_seconds(self) -> float | None:
        at = self.branch.prepared_at
        return None if at is None else max(0.0, time.time() - at)


def prepared_everywhere(participants: Sequence[Participant]) -> list[Prepared]:
    """Every prepared branch on every participant's server, ours and foreign."""
    return [Prepared(p, branch) for p in participants for branch in p.prepared_branches()]


def prepared_of(participants: Sequence[Participant], coordinator: str) -> list[Prepared]:
    """The prepared branches of ``coordinator``'s transactions, as the servers hold them now."""
    return [p for p in prepared_everywhere(participants) if p.ours and p.coordinator == coordinator]


def by_coordinator(prepared: Iterable[Prepared]) -> dict[str | None, list[Prepared]]:
    """Our prepared branches grouped by the coordinator their gtrid names (None: names none)."""
    grouped: dict[str | None, list[Prepared]] = defaultdict(list)
    for each in prepared:
        if each.ours:
            grouped[each.coordinator].append(each)
    return grouped


@dataclass(frozen=True)
class Evidence:
    """Which branches have committed, by gtrid: ``participant name -> bqual`` pairs whose
    outcome marker is visible. Servers that could not be asked are listed in ``unknown``."""

    committed: dict[str, set[tuple[str, str]]]
    unknown: tuple[str, ...] = ()

    def of(self, gtrid: str) -> bool:
        """Whether some branch of ``gtrid`` has committed."""
        return bool(self.committed.get(gtrid))

    def committed_branch(self, gtrid: str, participant: str, bqual: str) -> bool:
        return (participant, bqual) in self.committed.get(gtrid, set())


def gather_evidence(participants: Sequence[Participant], gtrids: Iterable[str]) -> Evidence:
    """Ask every participant which branches of ``gtrids`` committed (outcome markers)."""
    wanted = sorted(set(gtrids))
    committed: dict[str, set[tuple[str, str]]] = defaultdict(set)
    unknown = []
    if not wanted:
        return Evidence({})
    for participant in participants:
        try:
            found = participant.committed_markers(wanted)
        except ParticipantError:
            unknown.append(participant.name)
            continue
        for gtrid, bqual in found:
            committed[gtrid].add((participant.name, bqual))
    return Evidence(dict(committed), tuple(unknown))


def facts_of(prepared: Prepared, state: LogState, evidence: Evidence) -> BranchFacts:
    """The facts the rules need about one prepared branch of ours."""
    return BranchFacts(state.logged(prepared.gtrid), state.alive, evidence.of(prepared.gtrid))
