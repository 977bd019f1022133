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


def act(prepared: Prepared, facts: BranchFacts, report: RecoveryReport) -> bool:
    """Apply the rules to one prepared branch and carry out (and report) their verdict;
    returns whether the branch is finished (no longer prepared)."""
    verdict = decide(facts)
    if verdict.action is Action.LEAVE:
        leave(report, prepared, verdict.reason)
        return False
    commit = verdict.action is Action.COMMIT
    action, finished = finish_branch(prepared.participant, prepared.xid, commit=commit)
    reason = verdict.reason
    if not finished:
        reason += "; the server would not finish it yet (session still connected?)"
    at = time.monotonic() - report.started
    report.add(Resolution(prepared.gtrid, prepared.participant.name, action, reason, finished, at))
    return finished


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
