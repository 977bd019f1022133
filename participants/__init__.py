"""Participants: one adapter per resource manager (PostgreSQL, MySQL/MariaDB) behind one interface.

A :class:`Participant` opens :class:`Branch` objects that speak only their server's
two-phase-commit SQL; the :class:`Xid` type owns every wire form of a branch name; driver
errors are translated once, in each server's own modules (``postgres*``, ``mysql*``), into the
:class:`ParticipantError` hierarchy. A server's participant is composed of one object per role
(pool, branch protocol, lock waits, outcome markers, local transactions); the modules that are
not a server's know no SQL.
"""

from twopc.participants.base import (
    Branch,
    BranchState,
    Cursor,
    LocalTransaction,
    LockWaitNotice,
    Participant,
    PreparedBranch,
    Vote,
)
from twopc.participants.errors import (
    PERMANENT,
    BranchBusy,
    BranchStateError,
    ConstraintViolation,
    DuplicateKey,
    DuplicateObject,
    InvalidValue,
    LockBusy,
    LockWaitTimeout,
    MisconfiguredServer,
    ParticipantError,
    ParticipantUnavailable,
    PermissionDenied,
    PrepareRefused,
    StatementFailed,
    UndefinedColumn,
    UndefinedTable,
    UnknownXid,
)
from twopc.participants.lockwaits import LockWait
from twopc.participants.mysql import MySQLParticipant
from twopc.participants.postgres import PostgresParticipant
from twopc.participants.urls import Backend, DatabaseURL, InvalidURL
from twopc.participants.xid import FORMAT_ID, InvalidXid, Xid

__all__ = [
    "FORMAT_ID",
    "PERMANENT",
    "Backend",
    "Branch",
    "BranchBusy",
    "BranchState",
    "BranchStateError",
    "ConstraintViolation",
    "Cursor",
    "DatabaseURL",
    "DuplicateKey",
    "DuplicateObject",
    "InvalidURL",
    "InvalidValue",
    "InvalidXid",
    "LocalTransaction",
    "LockBusy",
    "LockWait",
    "LockWaitNotice",
    "LockWaitTimeout",
    "MisconfiguredServer",
    "MySQLParticipant",
    "Participant",
    "ParticipantError",
    "ParticipantUnavailable",
    "PermissionDenied",
    "PostgresParticipant",
    "PrepareRefused",
    "PreparedBranch",
    "StatementFailed",
    "UndefinedColumn",
    "UndefinedTable",
    "UnknownXid",
    "Vote",
    "Xid",
    "participant_for",
]


def participant_for(
    name: str,
    url: DatabaseURL,
    *,
    lock_wait: float = 30.0,
    on_lock_wait: LockWaitNotice | None = None,
    notice_after: float = 1.0,
) -> Participant:
    """The adapter for the URL's backend, called ``name``.

    The name is the bqual of every branch the participant holds (several participants may
    share a server, each with its own name), so it must be a valid one: :class:`InvalidXid`
    otherwise, before anything connects.
    """
    Xid(FORMAT_ID, "participant", name)  # validates the name as a bqual
    kind = PostgresParticipant if url.backend == "pg" else MySQLParticipant
    return kind(
        name, url, lock_wait=lock_wait, on_lock_wait=on_lock_wait, notice_after=notice_after
    )
