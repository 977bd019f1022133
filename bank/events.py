"""What the bank announces through the outbox: a committed transfer.

The event is written by the transfer's own change on the destination's side: in the
destination's branch under 2PC, in the credit step (the saga's pivot) under the saga. Its
aggregate is the destination account, whose row lock the writer holds while it writes, so
the events of one account are numbered in the order its transfers committed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twopc.outbox import Executes, OutboxEvent, append

if TYPE_CHECKING:  # bank.transfer writes these events
    from twopc.bank.transfer import Transfer

TRANSFER_COMMITTED = "transfer.committed"


def announce_transfer(tx: Executes, transfer: Transfer, transfer_id: str, mode: str) -> OutboxEvent:
    """Write the ``transfer.committed`` event of ``transfer`` inside ``tx`` (the branch or
    local transaction that credits the destination). ``transfer_id``: the gtrid or saga id."""
    event = transfer_event(transfer, transfer_id, mode)
    append(tx, event)
    return event


def transfer_event(transfer: Transfer, transfer_id: str, mode: str) -> OutboxEvent:
    """The ``transfer.committed`` event of ``transfer`` (not written yet)."""
    payload = {
        "transfer_id": transfer_id,
        "source": str(transfer.source),
        "destination": str(transfer.destination),
        "amount": str(transfer.amount),
        "mode": mode,
    }
    return OutboxEvent.new(str(transfer.destination), TRANSFER_COMMITTED, payload)
