"""Participants: one adapter per resource manager (PostgreSQL, MySQL/MariaDB) behind one interface.

A :class:`Participant` opens :class:`Branch` objects that speak only their server's
two-phase-commit SQL; the :class:`Xid` type owns every wire form of a branch name; driver
errors are translated once, here, into the :class:`ParticipantError` hierarchy.
"""

from participants.base import (
    Branch,
    BranchState,
    Cursor,
    LocalTransaction,
    Participant,
    PreparedBranch,
    Vote,
)
from participants.errors import (
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
from participants.lockwaits import LockWait
from participants.mysql import MySQLParticipant
from participants.postgres import PostgresParticipant
from participants.urls import Backend, DatabaseURL, InvalidURL
from participants.xid import FORMAT_ID, InvalidXid, Xid

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
