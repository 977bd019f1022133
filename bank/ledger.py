"""The transfer's changes to one database, written once for both engines.

Each function runs its statements through whatever executes them: a branch of a 2PC global
transaction (:class:`twopc.participants.Branch`) or a saga step's local transaction
(:class:`twopc.participants.LocalTransaction`). A business refusal is returned as its reason
(the engine decides what a refusal means: a rollback of the whole global transaction, or a
refused saga step); anything else a server says is its participant's typed error.

The hold is the saga's semantic lock: the money a debit took for a saga that is not finished,
so readers can tell committed money from money in flight. Under 2PC the rows' own locks play
that part, so nothing is held.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, cast

from twopc.bank.accounts import AccountRef
from twopc.participants import Branch, Cursor

_DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = %s AND balance >= %s"
_CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = %s"
_BALANCE = "SELECT balance FROM accounts WHERE id = %s"
_HOLD = "INSERT INTO saga_holds (saga_id, account_id, amount, created_at) VALUES (%s, %s, %s, %s)"
_UNHOLD = "DELETE FROM saga_holds WHERE saga_id = %s AND account_id = %s"
_NOTIFY = "INSERT INTO saga_notifications (saga_id, message, created_at) VALUES (%s, %s, %s)"


class Executes(Protocol):
    """A transaction statements run in: a 2PC branch or a local transaction."""

    def execute(self, query: str, params: Sequence[Any] | None = None) -> Cursor: ...


#: Opens a transaction of its own to read in (a participant's ``local_transaction``).
Reader = Callable[[], AbstractContextManager[Executes]]


@dataclass(frozen=True)
class Change:
    """A debit (``delta`` < 0) or a credit of ``account``: its statement, and what a cursor
    that ran it says about a refusal."""

    account: AccountRef
    delta: Decimal

    @property
    def statement(self) -> tuple[str, tuple[Any, ...]]:
        """The query and its values."""
        if self.delta < 0:
            return _DEBIT, (-self.delta, self.account.id, -self.delta)
        return _CREDIT, (self.delta, self.account.id)

    def refusal(self, done: Cursor, read_in: Executes | Reader) -> str | None:
        """The refusal's reason (unknown account, insufficient funds) when the statement
        changed no row, read in ``read_in`` (the transaction it ran in, or a ``Reader`` when
        it was its branch's last statement); None when it went through."""
        if done.rowcount == 1:
            return None
        if self.delta > 0:
            return f"unknown account {self.account}"
        if callable(read_in):
            with read_in() as reader:
                row = reader.execute(_BALANCE, (self.account.id,)).fetchone()
        else:
            row = read_in.execute(_BALANCE, (self.account.id,)).fetchone()
        if row is None:
            return f"unknown account {self.account}"
        return f"insufficient funds in {self.account}: balance {row[0]}, need {-self.delta}"


def debit(
    tx: Executes, account: AccountRef, amount: Decimal, *, last: Reader | None = None
) -> str | None:
    """Take ``amount`` out of ``account``; the refusal's reason (unknown account,
    insufficient funds) when it cannot, with nothing changed.

    ``last``: the debit is its 2PC branch's last statement, so the branch prepares with it
    (see :meth:`twopc.participants.Branch.execute`) and can run nothing after it: the reason
    of a refusal is then read in a transaction ``last`` opens.
    """
    return _run(tx, Change(account, -amount), last)


def credit(
    tx: Executes, account: AccountRef, amount: Decimal, *, last: Reader | None = None
) -> str | None:
    """Put ``amount`` into ``account``; the refusal's reason when it does not exist.
    ``last``: as for :func:`debit`."""
    return _run(tx, Change(account, amount), last)


def _run(tx: Executes, change: Change, last: Reader | None) -> str | None:
    if last is None:
        return change.refusal(tx.execute(*change.statement), tx)
    return change.refusal(cast(Branch, tx).execute(*change.statement, last=True), last)


def hold(tx: Executes, saga_id: str, account: AccountRef, amount: Decimal) -> None:
    """Show ``amount`` as pending out of ``account`` while saga ``saga_id`` is unfinished."""
    tx.execute(_HOLD, (saga_id, account.id, amount, time.time()))


def release_hold(tx: Executes, saga_id: str, account: AccountRef) -> int:
    """Drop saga ``saga_id``'s hold on ``account``; how many holds were dropped."""
    return tx.execute(_UNHOLD, (saga_id, account.id)).rowcount


def notify(tx: Executes, saga_id: str, message: str) -> None:
    """Append the saga's notification (one per completed saga)."""
    tx.execute(_NOTIFY, (saga_id, message, time.time()))


def balance_of(tx: Executes, account: AccountRef) -> str:
    """``account``'s balance as text ("?" when it is gone)."""
    row = tx.execute(_BALANCE, (account.id,)).fetchone()
    return str(row[0]) if row else "?"
