"""Participants: one adapter per resource manager (PostgreSQL, MySQL/MariaDB) behind one interface.

A :class:`Participant` opens :class:`Branch` objects that speak only their server's
two-phase-commit SQL; the :class:`Xid` type owns every wire form of a branch name; driver
errors are translated once, here, into the :class:`ParticipantError` hierarchy.
"""

from twopc.participants.base import (
    Branch,
    BranchState,
    Cursor,
    LocalTransaction,
    Participant,
    PreparedBranch,
    Vote,
)
from twopc.participants.errors import (
    BranchBusy,
    BranchStateError,
    LockWaitTimeout,
    MisconfiguredServer,
    ParticipantError,
    ParticipantUnavailable,
    PrepareRefused,
    StatementFailed,
    UnknownXid,
)
from twopc.participants.lockwaits import LockWait
from twopc.participants.mysql import MySQLParticipant
from twopc.participants.postgres import PostgresParticipant
from twopc.participants.urls import Backend, DatabaseURL, InvalidURL
from twopc.participants.xid import FORMAT_ID, InvalidXid, Xid

__all__ = [
    "FORMAT_ID",
    "Backend",
    "Branch",
    "BranchBusy",
    "BranchState",
    "BranchStateError",
    "Cursor",
    "DatabaseURL",
    "InvalidURL",
    "InvalidXid",
    "LocalTransaction",
    "LockWait",
    "LockWaitTimeout",
    "MisconfiguredServer",
    "MySQLParticipant",
    "Participant",
    "ParticipantError",
    "ParticipantUnavailable",
    "PostgresParticipant",
    "PrepareRefused",
    "PreparedBranch",
    "StatementFailed",
    "UnknownXid",
    "Vote",
    "Xid",
    "participant_for",
]


def participant_for(name: str, url: DatabaseURL, *, lock_wait: float = 30.0) -> Participant:
    """The adapter for the URL's backend."""
    kind = PostgresParticipant if url.backend == "pg" else MySQLParticipant
    return kind(name, url, lock_wait=lock_wait)
