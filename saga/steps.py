"""The transfer saga's steps and compensations, each one local transaction on one server.

1. **debit** SOURCE (compensable): take the amount and record a hold — the semantic lock that
   shows the money as pending while the saga is unfinished. Compensation: **refund** it and
   drop the hold.
2. **credit** DEST: the pivot. Once it commits the saga can only go forward, so it has no
   compensation.
   Then **release** the hold on SOURCE (the money has arrived), and last
3. **notify**: append a line to DEST's notifications — irreversible, so it runs only after
   every reversible step committed, and is retried until it succeeds, never compensated.

A business refusal (unknown account, insufficient funds) is a REJECTED result, stored under
the step's key like any other, so a replay gets the same answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal

from twopc.bank import AccountRef, Transfer
from twopc.participants import LocalTransaction
from twopc.saga.idempotency import APPLIED, REJECTED, Change, StepResult

DEBIT, CREDIT, NOTIFY = 1, 2, 3
FORWARD_STEPS = (DEBIT, CREDIT)  # the steps before the saga's outcome is settled
COMPENSABLE = frozenset({DEBIT})
HOLDING = DEBIT  # the step whose hold is released when the saga completes

_DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = %s AND balance >= %s"
_CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = %s"
_BALANCE = "SELECT balance FROM accounts WHERE id = %s"
_HOLD = "INSERT INTO saga_holds (saga_id, account_id, amount, created_at) VALUES (%s, %s, %s, %s)"
_UNHOLD = "DELETE FROM saga_holds WHERE saga_id = %s AND account_id = %s"
_NOTIFY = "INSERT INTO saga_notifications (saga_id, message, created_at) VALUES (%s, %s, %s)"


class CompensationFailed(Exception):
    """A compensation found the world not as it left it (its account is gone)."""


@dataclass(frozen=True)
class Work:
    """One participant-side local transaction of a saga: what, where, and under which key."""

    name: str
    account: AccountRef
    amount: Decimal
    change: Change

    @property
    def side(self) -> str:
        return self.account.side

    def describe(self) -> str:
        return f"{self.name} {self.account} {self.amount}"

    def request(self, saga: str) -> str:
        """What this work's idempotency key is bound to: the saga's request and this step's,
        canonically (a key reused for anything else is refused)."""
        return json.dumps({"saga": saga, "step": self.describe()}, sort_keys=True)


def describe_transfer(transfer: Transfer) -> str:
    """The transfer saga's request, as its idempotency keys record it."""
    return f"{transfer.source} -> {transfer.destination} {transfer.amount}"


def forward_step(saga_id: str, transfer: Transfer, n: int) -> Work:
    """Forward step ``n`` of the transfer saga ``saga_id``."""
    source, destination, amount = transfer.source, transfer.destination, transfer.amount
    if n == DEBIT:
        return Work("debit", source, amount, lambda tx: _debit(tx, saga_id, source, amount))
    if n == CREDIT:
        return Work("credit", destination, amount, lambda tx: _credit(tx, destination, amount))
    if n == NOTIFY:
        message = f"saga {saga_id}: {source} -> {destination} {amount} completed"
        return Work("notify", destination, amount, lambda tx: _notify(tx, saga_id, message))
    raise ValueError(f"the transfer saga has no step {n}")


def compensation(saga_id: str, transfer: Transfer, n: int) -> Work:
    """The compensation of step ``n`` (only the debit has one)."""
    if n != DEBIT:
        raise ValueError(f"step {n} of the transfer saga has no compensation")
    source, amount = transfer.source, transfer.amount
    return Work("refund", source, amount, lambda tx: _refund(tx, saga_id, source, amount))


def release(saga_id: str, transfer: Transfer) -> Work:
    """Drop the hold the debit took: the saga completed, the money is no longer in flight."""
    source, amount = transfer.source, transfer.amount
    return Work("release", source, amount, lambda tx: _release(tx, saga_id, source))


def _debit(tx: LocalTransaction, saga_id: str, account: AccountRef, amount: Decimal) -> StepResult:
    if tx.execute(_DEBIT, (amount, account.id, amount)).rowcount != 1:
        return _refusal(tx, account, amount)
    tx.execute(_HOLD, (saga_id, account.id, amount, time.time()))
    return StepResult(APPLIED, {"balance": _balance(tx, account), "held": str(amount)})


def _refusal(tx: LocalTransaction, account: AccountRef, amount: Decimal) -> StepResult:
    row = tx.execute(_BALANCE, (account.id,)).fetchone()
    if row is None:
        return StepResult(REJECTED, {"reason": f"unknown account {account}"})
    reason = f"insufficient funds in {account}: balance {row[0]}, need {amount}"
    return StepResult(REJECTED, {"reason": reason})


def _credit(tx: LocalTransaction, account: AccountRef, amount: Decimal) -> StepResult:
    if tx.execute(_CREDIT, (amount, account.id)).rowcount != 1:
        return StepResult(REJECTED, {"reason": f"unknown account {account}"})
    return StepResult(APPLIED, {"balance": _balance(tx, account)})


def _refund(tx: LocalTransaction, saga_id: str, account: AccountRef, amount: Decimal) -> StepResult:
    if tx.execute(_CREDIT, (amount, account.id)).rowcount != 1:
        raise CompensationFailed(f"cannot refund {amount} to {account}: the account is gone")
    tx.execute(_UNHOLD, (saga_id, account.id))
    return StepResult(APPLIED, {"balance": _balance(tx, account)})


def _release(tx: LocalTransaction, saga_id: str, account: AccountRef) -> StepResult:
    released = tx.execute(_UNHOLD, (saga_id, account.id)).rowcount
    return StepResult(APPLIED, {"released": str(released)})


def _notify(tx: LocalTransaction, saga_id: str, message: str) -> StepResult:
    tx.execute(_NOTIFY, (saga_id, message, time.time()))
    return StepResult(APPLIED, {"message": message})


def _balance(tx: LocalTransaction, account: AccountRef) -> str:
    row = tx.execute(_BALANCE, (account.id,)).fetchone()
    return str(row[0]) if row else "?"
