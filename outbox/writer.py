"""Writing an event: one INSERT in the caller's own open transaction.

The domain calls :func:`write_event` (or :func:`append`) with the branch of its global transaction
or the local transaction of its saga step that makes the change the event announces. The
event then commits, or rolls back, with that change: never one without the other. Nothing
is sent here; the relay publishes it later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from twopc.outbox.events import OutboxEvent
from twopc.outbox.tables import OUTBOX_TABLE
from twopc.participants import Cursor

_INSERT = (
    f"INSERT INTO {OUTBOX_TABLE} (event_id, aggregate, event_type, payload, created_at) "
    "VALUES (%s, %s, %s, %s, %s)"
)


class Executes(Protocol):
    """A transaction statements run in: a 2PC branch or a local transaction."""

    def execute(self, query: str, params: Sequence[Any] | None = None) -> Cursor: ...


def append(tx: Executes, event: OutboxEvent) -> None:
    """Write ``event`` to the outbox inside ``tx`` (it commits or rolls back with ``tx``)."""
    tx.execute(*insert_statement(event))


def insert_statement(event: OutboxEvent) -> tuple[str, tuple[Any, ...]]:
    """The INSERT that writes ``event``, and its values: for a caller that sends it with
    others (see :meth:`twopc.coordinator.GlobalTransaction.execute_last`)."""
    params = (event.event_id, event.aggregate, event.type, event.payload_json(), event.created_at)
    return _INSERT, params


def write_event(tx: Executes, aggregate: str, type: str, payload: Mapping[str, Any]) -> OutboxEvent:
    """Make a new event and :func:`append` it inside ``tx`` (a 2PC branch or a local
    transaction); returns it, with the id it was given."""
    event = OutboxEvent.new(aggregate, type, payload)
    append(tx, event)
    return event
