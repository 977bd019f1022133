"""The participant error hierarchy: driver errors are translated into these once, at the boundary.

Every error keeps the driver's exception as ``__cause__`` (``raise … from err``) and carries a
message that is safe to print: it never contains a password.
"""

from __future__ import annotations


class ParticipantError(Exception):
    """Base of every error a participant raises."""


class ParticipantUnavailable(ParticipantError):
    """The server could not be reached, or the connection was lost mid-conversation.

    The branch's fate is unknown to the caller: it may or may not have reached the server.
    """


class MisconfiguredServer(ParticipantError):
    """The server is reachable but cannot do two-phase commit as configured."""


class StatementFailed(ParticipantError):
    """A statement inside a branch failed; the branch can only be rolled back."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # PostgreSQL SQLSTATE or MySQL error number
        #: Which of several statements sent at once failed (0-based), where that is known.
        self.statement: int | None = None


class LockWaitTimeout(StatementFailed):
    """A statement waited longer than the lock-wait limit for a row lock."""

    @classmethod
    def after(cls, message: str, seconds: float, *, code: str) -> LockWaitTimeout:
        """The error for ``message``, naming the limit (``seconds``) the server applied."""
        return cls(f"{message} (lock-wait limit {seconds:g}s)", code=code)


class LockBusy(LockWaitTimeout):
    """A statement sent not to wait for row locks found its row locked by another
    transaction (see :meth:`twopc.participants.Branch.request_execute`)."""


class DuplicateKey(StatementFailed):
    """A unique or primary key already holds the value (PostgreSQL 23505, MySQL 1062)."""


class ConstraintViolation(StatementFailed):
    """An integrity constraint refused the change (NOT NULL, a foreign key, a CHECK): no
    retry makes it pass."""


class InvalidValue(StatementFailed):
    """A value the column cannot hold (out of range, truncated, of the wrong type): no retry
    makes it pass."""


class UndefinedTable(StatementFailed):
    """The statement names a table that does not exist (PostgreSQL 42P01, MySQL 1146)."""


class UndefinedColumn(StatementFailed):
    """The statement names a column that does not exist (PostgreSQL 42703, MySQL 1054)."""


class DuplicateObject(StatementFailed):
    """A table, column or index being created already exists."""


class PermissionDenied(StatementFailed):
    """The user may not do this (PostgreSQL 42501, MySQL 1142 and kin)."""


#: Statement errors that no retry can fix (business code treats them as a refusal).
PERMANENT = (ConstraintViolation, InvalidValue)


class PrepareRefused(ParticipantError):
    """The branch voted NO: phase 1 failed on it and nothing stays prepared."""


class UnknownXid(ParticipantError):
    """The server holds no prepared branch with this xid (already finished, or never prepared)."""


class BranchStateError(ParticipantError):
    """A branch method was called in a state that does not allow it."""


class BranchBusy(ParticipantError):
    """The server lists the prepared branch but will not finish it yet (MariaDB: its
    preparing session is still connected). "Not yet", never "already done": retry later."""
