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


def debit(
    tx: Executes, account: AccountRef, amount: Decimal, *, last: Reader | None = None
) -> str | None:
    """Take ``amount`` out of ``account``; the refusal's reason (unknown account,
    insufficient funds) when it cannot, with nothing changed.

    ``last``: the debit is its 2PC branch's last statement, so the branch prepares with it
    (see :meth:`twopc.participants.Branch.execute`) and can run nothing after it: the reason
    of a refusal is then read in a transaction ``last`` opens.
    """
    if _execute(tx, _DEBIT, (amount, account.id, amount), last).rowcount == 1:
        return None
    if last is None:
        row = tx.execute(_BALANCE, (account.id,)).fetchone()
    else:
        with last() as reader:
            row = reader.execute(_BALANCE, (account.id,)).fetchone()
    if row is None:
        return f"unknown account {account}"
    return f"insufficient funds in {account}: balance {row[0]}, need {amount}"


def credit(
    tx: Executes, account: AccountRef, amount: Decimal, *, last: Reader | None = None
) -> str | None:
    """Put ``amount`` into ``account``; the refusal's reason when it does not exist.
    ``last``: as for :func:`debit`."""
    if _execute(tx, _CREDIT, (amount, account.id), last).rowcount != 1:
        return f"unknown account {account}"
    return None


def _execute(tx: Executes, query: str, params: Sequence[Any], last: Reader | None) -> Cursor:
    if last is None:
        return tx.execute(query, params)
    return cast(Branch, tx).execute(query, params, last=True)


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
