"""Errors the coordinator raises about a global transaction's outcome."""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base of the coordinator's errors."""


class TransactionStateError(CoordinatorError):
    """A transaction method was called in a state that does not allow it."""


class TransactionAborted(CoordinatorError):
    """The transaction was rolled back: nothing it did is visible on any server.

    ``leftover`` lists branches whose rollback could not be confirmed; they carry no COMMIT
    record, so recovery rolls them back (presumed abort).
    """

    def __init__(self, gtrid: str, reason: str, leftover: tuple[str, ...] = ()) -> None:
        super().__init__(f"transaction {gtrid} aborted: {reason}")
        self.gtrid = gtrid
        self.reason = reason
        self.leftover = leftover


class InDoubt(CoordinatorError):
    """The commit decision is durable but some branches could not be told in time.

    Nothing is lost: ``twopc recover`` commits the remaining branches from the log.
    """

    def __init__(self, gtrid: str, unfinished: tuple[str, ...], reason: str) -> None:
        names = ", ".join(unfinished)
        super().__init__(
            f"transaction {gtrid} is committed in the log but branches {names} are still "
            f"prepared ({reason}); run `twopc recover` to finish them"
        )
        self.gtrid = gtrid
        self.unfinished = unfinished


class CoordinatorBusy(CoordinatorError):
    """Another live process holds this coordinator id's log."""


class OutcomeUnknown(CoordinatorError):
    """A one-phase commit lost its connection before the server answered: it may or may not
    have committed. Check the data (``twopc balances``) before retrying."""

    def __init__(self, gtrid: str, reason: str) -> None:
        super().__init__(f"transaction {gtrid}: commit outcome unknown ({reason})")
        self.gtrid = gtrid


class RecoveryError(CoordinatorError):
    """A recovery command cannot do what was asked; nothing was changed."""
