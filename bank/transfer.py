"""The demo business operation: move an amount from one account to another, atomically.

Under 2PC (:func:`run_transfer`) a cross-database transfer is one global transaction with a
branch on each side, committed with two-phase commit; a same-database transfer has a single
branch, which the coordinator commits in one phase. Locks are taken in a fixed order —
PostgreSQL before MySQL, then by account id — so two opposite transfers never wait for each
other's locks in a cycle. Across two databases both branches' statements (the event after
the credit) go out at once, PostgreSQL's not waiting for locks, which keeps that order (see
:meth:`GlobalTransaction.execute_last`). The debit and credit are :mod:`bank.ledger`'s,
the same the saga runs (:mod:`bank.transfer_saga`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from twopc.bank import ledger
from twopc.bank.accounts import SIDES, AccountRef, natural_key
from twopc.bank.errors import InvalidInput, TransferRejected
from twopc.bank.events import announce_transfer, transfer_event
from twopc.coordinator import Coordinator, GlobalTransaction, Outcome
from twopc.outbox import insert_statement
from twopc.participants import Participant, PermissionDenied, UndefinedTable


@dataclass(frozen=True)
class Transfer:
    """A validated transfer request."""

    source: AccountRef
    destination: AccountRef
    amount: Decimal

    def __post_init__(self) -> None:
        if self.source == self.destination:
            raise InvalidInput(f"source and destination are the same account ({self.source})")
        if self.amount <= 0:
            raise InvalidInput("amount must be greater than 0")


def run_transfer(coordinator: Coordinator, transfer: Transfer, *, announce: bool = True) -> Outcome:
    """Run ``transfer`` as one global transaction; raises TransferRejected on a business error.

    With ``announce`` (the default) the destination's branch also writes the transfer's
    ``transfer.committed`` event to its outbox, so the event commits with the transfer.
    """
    if transfer.source.side != transfer.destination.side:
        for side in SIDES:
            coordinator.participant(side).check_ready()
    with coordinator.transaction() as tx:
        _enlist(tx, transfer)
        steps = _ordered_steps(transfer, coordinator)
        if transfer.source.side != transfer.destination.side:
            _across(tx, transfer, steps, announce=announce)
        else:
            for step in steps:
                step(tx)
                if announce and step.account == transfer.destination:
                    _announce(tx, transfer)
    assert tx.outcome is not None  # set by a commit that returned
    return tx.outcome


def _across(
    tx: GlobalTransaction, transfer: Transfer, steps: list[_Step], *, announce: bool
) -> None:
    """Across two databases each branch's statements are its last: its prepare goes with
    them, and both branches go out at once where that cannot deadlock (see
    :meth:`GlobalTransaction.execute_last`). The event follows the credit in its branch."""
    statements: list[tuple[str, str, tuple[Any, ...]]] = []
    event_at = None
    for step in steps:
        statements.append((step.account.side, *step.change.statement))
        if announce and step.account == transfer.destination:
            event_at = len(statements)
            event = transfer_event(transfer, tx.gtrid, "2pc")
            statements.append((step.account.side, *insert_statement(event)))
    try:
        done = tx.execute_last(statements)
    except UndefinedTable as err:
        if event_at is not None and err.statement == event_at:
            raise _no_outbox(transfer) from None
        raise
    changed = [cursor for n, cursor in enumerate(done) if n != event_at]
    for step, cursor in zip(steps, changed, strict=True):
        assert step.last is not None  # every step is its branch's last change here
        refusal = step.change.refusal(cursor, step.last)
        if refusal is not None:
            raise TransferRejected(refusal)


def _announce(tx: GlobalTransaction, transfer: Transfer) -> None:
    """Write the event in the destination's branch, right after its credit (under the
    account's row lock: the account's events are numbered in commit order)."""
    try:
        announce_transfer(tx.branch(transfer.destination.side), transfer, tx.gtrid, "2pc")
    except UndefinedTable:
        raise _no_outbox(transfer) from None


def _no_outbox(transfer: Transfer) -> TransferRejected:
    return TransferRejected(
        f"{transfer.destination.side} has no outbox table: run `twopc init` (it adds the "
        "missing tables and keeps the data)"
    )


def _enlist(tx: GlobalTransaction, transfer: Transfer) -> None:
    """Start the source's branch first: it is the "first" branch of the protocol."""
    tx.branch(transfer.source.side)
    tx.branch(transfer.destination.side)


def _ordered_steps(transfer: Transfer, coordinator: Coordinator) -> list[_Step]:
    """The debit and the credit, in lock order. Across two databases each ends its branch
    (but for the event after the credit), so each branch prepares with it: one round trip
    fewer per branch, and ``commit()`` finds their votes cast."""
    source, destination = transfer.source, transfer.destination
    cross = source.side != destination.side
    debit_reader = _reader(coordinator, source) if cross else None
    credit_reader = _reader(coordinator, destination) if cross else None
    steps = [
        _Step(source, -transfer.amount, debit_reader),
        _Step(destination, transfer.amount, credit_reader),
    ]
    return sorted(steps, key=lambda s: (SIDES.index(s.account.side), natural_key(s.account.id)))


def _reader(coordinator: Coordinator, account: AccountRef) -> ledger.Reader:
    return coordinator.participant(account.side).local_transaction


@dataclass(frozen=True)
class _Step:
    account: AccountRef
    delta: Decimal
    last: ledger.Reader | None = None  # set: the branch's last statement (see ledger.debit)

    @property
    def change(self) -> ledger.Change:
        return ledger.Change(self.account, self.delta)

    def __call__(self, tx: GlobalTransaction) -> None:
        branch = tx.branch(self.account.side)
        if self.delta < 0:
            refusal = ledger.debit(branch, self.account, -self.delta, last=self.last)
        else:
            refusal = ledger.credit(branch, self.account, self.delta, last=self.last)
        if refusal is not None:  # raised inside the transaction: every branch rolls back
            raise TransferRejected(refusal)


@dataclass(frozen=True)
class Balances:
    """Every account's balance per side, with totals.

    ``pending`` maps side -> account -> the amount unfinished sagas hold out of it: money
    already debited there and still in flight (the saga path's semantic lock). It is part of
    no balance; accounts with nothing pending are left out.
    """

    sides: dict[str, list[tuple[str, Decimal]]]
    pending: dict[str, dict[str, Decimal]] = field(default_factory=dict)

    def total(self, side: str) -> Decimal:
        return sum((balance for _, balance in self.sides[side]), Decimal("0.00"))

    @property
    def overall(self) -> Decimal:
        return sum((self.total(side) for side in self.sides), Decimal("0.00"))

    def pending_total(self, side: str) -> Decimal:
        """What unfinished sagas hold out of ``side``'s accounts."""
        return sum(self.pending.get(side, {}).values(), Decimal("0.00"))

    @property
    def pending_overall(self) -> Decimal:
        return sum((self.pending_total(side) for side in self.sides), Decimal("0.00"))


# One statement, so balance and pending come from the same snapshot on both servers.
_BALANCES_WITH_PENDING = """
    SELECT a.id, a.balance, COALESCE(h.pending, 0)
      FROM accounts a
      LEFT JOIN (SELECT account_id, SUM(amount) AS pending FROM saga_holds GROUP BY account_id) h
        ON h.account_id = a.id
"""
_BALANCES = "SELECT id, balance, 0 FROM accounts"
log = logging.getLogger(__name__)


def read_balances(participants: list[Participant]) -> Balances:
    """Read every account on every participant, with what unfinished sagas hold pending.

    A database without the saga tables (a schema from before them) has nothing pending; one
    whose saga tables this user may not read shows none, with a warning.
    """
    sides, pending = {}, {}
    for participant in participants:
        rows = _balance_rows(participant)
        sides[participant.name] = sorted(
            ((str(i), Decimal(b)) for i, b, _ in rows), key=lambda r: natural_key(r[0])
        )
        pending[participant.name] = {str(i): Decimal(p) for i, _, p in rows if Decimal(p)}
    return Balances(sides, pending)


def _balance_rows(participant: Participant) -> list[tuple[Any, Any, Any]]:
    try:
        with participant.local_transaction() as local:
            return list(local.execute(_BALANCES_WITH_PENDING).fetchall())
    except UndefinedTable:
        pass  # a schema from before the saga tables: nothing can be pending
    except PermissionDenied as err:
        log.warning("pending amounts on %s are unknown: %s", participant.name, err)
    with participant.local_transaction() as local:
        return list(local.execute(_BALANCES).fetchall())
