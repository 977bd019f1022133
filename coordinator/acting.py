"""Carrying out recovery's verdicts: finishing prepared branches, reporting what was done,
collecting outcome markers, and taking turns with other recoveries of the same home."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from twopc.coordinator.decisions import Action, BranchFacts, decide
from twopc.coordinator.errors import RecoveryError
from twopc.coordinator.facts import Prepared
from twopc.participants import BranchBusy, Participant, ParticipantError, UnknownXid, Xid
from twopc.participants.branch import finished_or_error
from twopc.txlog import LogLocked
from twopc.txlog.files import make_directories
from twopc.txlog.locking import WriterLock

log = logging.getLogger(__name__)

_BUSY_PATIENCE = 3.0  # seconds to wait for MariaDB to detach a dead client's branch
#: How long a recovery waits for another recovery (or ``resolve``) of the same home.
TURN_PATIENCE = 60.0


@dataclass(frozen=True)
class Resolution:
    """What recovery did (or would do, or could not do) with one branch."""

    gtrid: str
    participant: str
    action: str
    reason: str
    finished: bool
    at: float | None = None  # seconds after recovery started that it was done

    def to_json(self) -> dict[str, object]:
        return {
            "gtrid": self.gtrid,
            "server": self.participant,
            "action": self.action,
            "reason": self.reason,
            "finished": self.finished,
            "at_seconds": None if self.at is None else round(self.at, 4),
        }


@dataclass
class RecoveryReport:
    resolutions: list[Resolution] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    removed_logs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    markers_collected: int = 0
    # gtrids named by requests of dead coordinators that were still running and were stopped
    stopped_requests: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, resolution: Resolution) -> None:
        """Record what was done with one branch (thread-safe: recovery acts concurrently)."""
        with self._lock:
            self.resolutions.append(resolution)

    @property
    def in_doubt_remains(self) -> bool:
        return bool(self.problems) or any(not r.finished for r in self.resolutions)

    def to_json(self) -> dict[str, object]:
        return {
            "resolutions": [r.to_json() for r in self.resolutions],
            "ended": self.ended,
            "removed_logs": self.removed_logs,
            "problems": self.problems,
            "markers_collected": self.markers_collected,
            "stopped_requests": self.stopped_requests,
            "in_doubt_remains": self.in_doubt_remains,
        }


# -- acting on one branch ---------------------------------------------------------------------


def finish_branch(participant: Participant, xid: Xid, *, commit: bool) -> tuple[str, bool]:
    """Commit or roll back one prepared branch; returns (what happened, finished?).

    "Unknown xid" is settled by the branch's outcome marker, never guessed; MariaDB's
    "not yet" (the preparing session is still connected) is waited out briefly.
    """
    outcome = finished_or_error(participant.finish_prepared, xid, commit)
    return _settled(participant, xid, outcome, commit=commit)


def _settled(
    participant: Participant, xid: Xid, outcome: ParticipantError | None, *, commit: bool
) -> tuple[str, bool]:
    """What happened to a branch that finishing left with ``outcome`` (None: finished),
    as :func:`finish_branch` says it; a busy branch is tried again, a few times."""
    give_up = time.monotonic() + _BUSY_PATIENCE
    while isinstance(outcome, BranchBusy):
        if time.monotonic() > give_up:
            return "left alone", False
        time.sleep(0.2)
        outcome = finished_or_error(participant.finish_prepared, xid, commit)
    if outcome is None:
        return ("committed" if commit else "rolled back"), True
    if isinstance(outcome, UnknownXid):
        return _already_finished(participant, xid)
    return f"failed: {outcome}", False


def _already_finished(participant: Participant, xid: Xid) -> tuple[str, bool]:
    try:
        return ("already committed" if participant.has_marker(xid) else "already rolled back"), True
    except ParticipantError as err:
        return f"unknown ({err})", False


def act_together(
    plans: Sequence[tuple[Prepared, BranchFacts]], report: RecoveryReport
) -> list[Xid]:
    """Apply the rules to prepared branches of one participant whose verdict is the same
    action, and carry out (and report) that verdict: the branches to finish go to its server
    in as few requests as it allows. Returns the xids finished (no longer prepared)."""
    if not plans:
        return []
    verdicts = [decide(facts) for _, facts in plans]
    action = verdicts[0].action
    participant = plans[0][0].participant
    if any(v.action is not action for v in verdicts) or any(
        p.participant is not participant for p, _ in plans
    ):
        raise ValueError("act_together takes branches of one participant with one verdict")
    if action is Action.LEAVE:
        for (prepared, _), verdict in zip(plans, verdicts, strict=True):
            leave(report, prepared, verdict.reason)
        return []
    commit = action is Action.COMMIT
    outcomes = participant.finish_prepared_many([p.xid for p, _ in plans], commit=commit)
    finished_xids = []
    for (prepared, _), verdict, outcome in zip(plans, verdicts, outcomes, strict=True):
        done, finished = _settled(participant, prepared.xid, outcome, commit=commit)
        reason = verdict.reason
        if not finished:
            reason += "; the server would not finish it yet (session still connected?)"
        at = time.monotonic() - report.started
        report.add(Resolution(prepared.gtrid, participant.name, done, reason, finished, at))
        if finished:
            finished_xids.append(prepared.xid)
    return finished_xids


def leave(report: RecoveryReport, prepared: Prepared, reason: str) -> None:
    report.add(Resolution(prepared.gtrid, prepared.participant.name, "left alone", reason, False))


def forget_markers(participants: Sequence[Participant], gtrids: Iterable[str]) -> int:
    """Delete the outcome markers of ``gtrids`` (their END records are durable, or nothing
    needs them); a failure only leaves garbage. Returns how many gtrids were asked for."""
    wanted = sorted(set(gtrids))
    if not wanted:
        return 0
    for participant in participants:
        try:
            participant.forget_markers(wanted)
        except ParticipantError as err:
            log.info("outcome markers not collected on %s: %s", participant.server, err)
    return len(wanted)


class recovery_turn:
    """Holds the home's recovery lock: one ``recover`` or ``resolve`` acts at a time.

    Waits up to ``patience`` seconds for another to finish, then raises RecoveryError.
    """

    def __init__(self, home: Path, patience: float = TURN_PATIENCE) -> None:
        self._directory = home / "recovery"
        self._patience = patience
        self._lock: WriterLock | None = None

    def __enter__(self) -> recovery_turn:
        make_directories(self._directory)
        give_up = time.monotonic() + self._patience
        while True:
            try:
                self._lock = WriterLock(self._directory)
                return self
            except LogLocked:
                if time.monotonic() > give_up:
                    raise RecoveryError(
                        f"another `twopc recover` or `twopc resolve` of {self._directory.parent} "
                        f"is still running after {self._patience:g}s; try again when it ends"
                    ) from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
