"""The bank's consumer of its own events: a confirmation sent once per transfer.

``notifications`` receives ``transfer.committed`` and writes one row per transfer into
``transfer_confirmations`` (the stand-in for the e-mail it would send), in the consumer's
database. The outbox's consumer machinery records the event id in the same local
transaction, so however often the event arrives, one confirmation exists; the table's key,
the transfer id, would refuse a second one outright.
"""

from __future__ import annotations

import time

from twopc.bank.events import TRANSFER_COMMITTED
from twopc.outbox import Consumer, EventRejected, OutboxEvent, Topology
from twopc.participants import LocalTransaction, Participant
from twopc.saga import ensure_tables

CONFIRMATIONS_TABLE = "transfer_confirmations"
_CONFIRMATIONS = (
    "transfer_id VARCHAR(150) NOT NULL PRIMARY KEY, event_id VARCHAR(36) NOT NULL, "
    "message TEXT NOT NULL, event_created_at DOUBLE PRECISION NOT NULL, "
    "sent_at DOUBLE PRECISION NOT NULL"
)
_INSERT = (
    f"INSERT INTO {CONFIRMATIONS_TABLE} "
    "(transfer_id, event_id, message, event_created_at, sent_at) VALUES (%s, %s, %s, %s, %s)"
)
_PROBE = f"SELECT sent_at FROM {CONFIRMATIONS_TABLE} WHERE 1 = 0"


def confirmations_ddl(backend: str) -> list[str]:
    """The statement creating the confirmations table if it is missing."""
    engine = "" if backend == "pg" else " ENGINE=InnoDB"
    return [f"CREATE TABLE IF NOT EXISTS {CONFIRMATIONS_TABLE} ({_CONFIRMATIONS}){engine}"]


def confirmations_drop_ddl() -> str:
    """The statement dropping it (``twopc init --reset``)."""
    return f"DROP TABLE IF EXISTS {CONFIRMATIONS_TABLE}"


def ensure_confirmations_table(participant: Participant) -> None:
    """Create the confirmations table on ``participant`` if missing."""
    ensure_tables(participant, _PROBE, confirmations_ddl(participant.url.backend))


def confirm_transfer(tx: LocalTransaction, event: OutboxEvent) -> None:
    """The effect: one confirmation for the transfer ``event`` announces."""
    try:
        payload = event.payload
        transfer_id = str(payload["transfer_id"])
        message = (
            f"{payload['amount']} moved from {payload['source']} to {payload['destination']} "
            f"({payload['mode']} {transfer_id})"
        )
    except KeyError as err:
        raise EventRejected(f"{event.type} {event.event_id} lacks {err}") from None
    tx.execute(_INSERT, (transfer_id, event.event_id, message, event.created_at, time.time()))


#: ``twopc consume notifications``.
NOTIFICATIONS = Consumer(
    "notifications", (TRANSFER_COMMITTED,), confirm_transfer, setup=ensure_confirmations_table
)
#: The bank's consumers by name, and the queues the relay declares for them.
CONSUMERS = {consumer.name: consumer for consumer in (NOTIFICATIONS,)}
TOPOLOGY = Topology(tuple(consumer.subscription for consumer in CONSUMERS.values()))
