"""The in-doubt listing: every prepared branch on the servers, ours with what their log says,
what recovery would do with them and which sessions they block; foreign ones apart."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twopc.coordinator.decisions import decide
from twopc.coordinator.facts import (
    LogState,
    Prepared,
    coordinator_home,
    facts_of,
    gather_evidence,
    inspect_log,
    missing_log,
    prepared_everywhere,
)
from twopc.coordinator.ids import coordinator_of
from twopc.participants import Participant, ParticipantError, Xid
from twopc.participants.lockwaits import LockWait


@dataclass(frozen=True)
class InDoubtBranch:
    """A prepared branch of ours, with what its coordinator's log says about it."""

    gtrid: str
    participant: str
    server: str
    coordinator: str | None
    coordinator_alive: bool | None  # None: no log found
    decision: str  # what the log says: a Logged value
    prepared_seconds: float | None
    blocking: tuple[dict[str, object], ...] = ()
    detail: str | None = None
    evidence: bool = False  # some branch of the gtrid has committed
    recovery: str = ""  # what `twopc recover` would do (an Action value)

    def to_json(self) -> dict[str, object]:
        return {
            "gtrid": self.gtrid,
            "server": self.participant,
            "address": self.server,
            "coordinator": self.coordinator,
            "coordinator_alive": self.coordinator_alive,
            "decision": self.decision,
            "evidence": self.evidence,
            "recovery": self.recovery,
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
            "evidence": False,
            "recovery": "never touched",
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
    """Every prepared branch on the servers: ours with their log's verdict, and foreign ones.

    A live coordinator may finish a branch and remove its log between the listing and the
    log's inspection; that branch would then show once as a coordinator's with no log (its
    abort presumed). So a branch whose coordinator was not found alive is reported only if a
    second listing, made after the inspections (and only when there is such a branch), still
    holds it: a coordinator keeps its log, locked, while any branch of it is prepared."""
    prepared = prepared_everywhere(participants)
    ours = [p for p in prepared if p.ours]
    evidence = gather_evidence(participants, (p.gtrid for p in ours))
    logs: dict[str | None, LogState] = {}
    waits = _lock_waits(participants) if with_blocking and prepared else {}
    branches = []
    for each in ours:
        if each.coordinator not in logs:
            logs[each.coordinator] = (
                inspect_log(home, each.coordinator) if each.coordinator else missing_log(home, None)
            )
        state = logs[each.coordinator]
        facts = facts_of(each, state, evidence)
        branches.append(_in_doubt(each, state, facts.evidence, decide(facts).action.value, waits))
    if any(branch.coordinator_alive is not True for branch in branches):
        still = {(p.participant.name, p.xid) for p in prepared_everywhere(participants) if p.ours}
        branches = [
            branch
            for branch, each in zip(branches, ours, strict=True)
            if branch.coordinator_alive is True or (each.participant.name, each.xid) in still
        ]
    foreign = [
        ForeignBranch(p.participant.name, p.participant.server, p.branch.name, p.prepared_seconds)
        for p in prepared
        if not p.ours
    ]
    return InDoubtReport(branches, foreign)


def in_doubt_of_dead(participants: Sequence[Participant], home: Path) -> set[str]:
    """Gtrids of ours prepared on these servers whose coordinator is not alive (its log is
    not locked, or it has none): cheap enough to ask before every transfer — one listing per
    server and a lock probe per coordinator, no log read and no marker query.

    A live coordinator may finish its branches and remove its log between the listing and
    the probe, so a branch found without a live coordinator counts only if a second listing,
    made after the probes, still holds it (a coordinator keeps its log, locked, while any
    branch of it is prepared). The second listing is made only when there is a candidate."""
    alive: dict[str | None, bool] = {}
    dead = set()
    for each in prepared_everywhere(participants):
        if not each.ours:
            continue
        coordinator = each.coordinator
        if coordinator not in alive:
            alive[coordinator] = coordinator is not None and coordinator_home(home).alive(
                coordinator
            )
        if not alive[coordinator]:
            dead.add(each.gtrid)
    if not dead:
        return dead
    return dead & {each.gtrid for each in prepared_everywhere(participants) if each.ours}


def _in_doubt(
    prepared: Prepared,
    state: LogState,
    evidence: bool,
    recovery: str,
    waits: dict[Xid, list[dict[str, object]]],
) -> InDoubtBranch:
    return InDoubtBranch(
        prepared.gtrid,
        prepared.participant.name,
        prepared.participant.server,
        prepared.coordinator,
        state.alive if state.exists else None,
        state.logged(prepared.gtrid).value,
        prepared.prepared_seconds,
        tuple(waits.get(prepared.xid, ())),
        state.error,
        evidence,
        recovery,
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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def lock_wait_lines(home: Path, participant: Participant, waits: Sequence[LockWait]) -> list[str]:
    """What to tell a user whose statement on ``participant`` waits on these locks: for a
    prepared branch, its gtrid, how long it has been in doubt, whether its coordinator is
    alive, and what resolves it."""
    prepared = {b.xid: b.prepared_at for b in participant.prepared_branches() if b.xid}
    lines = []
    for wait in waits:
        if wait.blocker is None:
            lines.append(f"waiting for a lock on {participant.name} held by {wait.blocker_name}")
            continue
        gtrid = wait.blocker.gtrid
        at = prepared.get(wait.blocker)
        since = f"in doubt for {time.time() - at:.1f}s" if at else "in doubt"
        owner = coordinator_of(gtrid)
        state = "alive" if owner and coordinator_home(home).alive(owner) else "dead"
        lines.append(
            f"waiting for a row lock on {participant.name} held by in-doubt transaction "
            f"{gtrid} ({since}; its coordinator {owner} is {state}); "
            "resolve it with: twopc recover"
        )
    return lines
