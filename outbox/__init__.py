"""The transactional outbox: events that are never lost, a relay to RabbitMQ, idempotent
consumers.

A domain announces a change by writing an event (:class:`OutboxEvent`, written by
:func:`write_event` or :func:`append`) into the ``outbox`` table **in the same transaction
as the change**: the branch of its 2PC global transaction, or its saga step's local
transaction. The :class:`Relay` later publishes each event to the broker
(:class:`Publisher`: persistent messages, in broker transactions it waits for) and deletes
it only once the broker has it on disk, so a committed event is published at least once
and a rolled-back one never. Events of one
aggregate are published in the order they were written; several relays may run at once;
an event the broker keeps refusing is parked (:func:`parked_events`, :func:`retry_parked`).
A :class:`Consumer` applies each event once: its effect and the record of the event's id
commit in one local transaction (:func:`consume`), so a redelivery changes nothing.
Tables: :mod:`twopc.outbox.tables`; the relay's SQL: :mod:`twopc.outbox.store`.
"""

from twopc.outbox.backoff import Backoff
from twopc.outbox.broker import (
    EXCHANGE,
    Delivery,
    Publisher,
    Subscriber,
    Subscription,
    Topology,
    check_url,
    redacted,
)
from twopc.outbox.consumer import (
    Consumer,
    ConsumerConfig,
    ConsumerRunner,
    ConsumerStats,
    EventRejected,
    Outcome,
    consume,
    prepare,
    prune_consumed,
)
from twopc.outbox.errors import BrokerRefused, BrokerUnavailable, InvalidEvent, OutboxError
from twopc.outbox.events import OutboxEvent
from twopc.outbox.relay import Relay, RelayConfig, RelayStats
from twopc.outbox.store import (
    OutboxState,
    ParkedEvent,
    PendingEvent,
    outbox_state,
    parked_events,
    retry_parked,
)
from twopc.outbox.tables import (
    CONSUMED_TABLE,
    OUTBOX_TABLE,
    PARKED_TABLE,
    consumed_ddl,
    ensure_consumed_table,
    ensure_outbox_tables,
    outbox_ddl,
    outbox_drop_ddl,
)
from twopc.outbox.writer import Executes, append, insert_statement, write_event

__all__ = [
    "CONSUMED_TABLE",
    "EXCHANGE",
    "OUTBOX_TABLE",
    "PARKED_TABLE",
    "Backoff",
    "BrokerRefused",
    "BrokerUnavailable",
    "Consumer",
    "ConsumerConfig",
    "ConsumerRunner",
    "ConsumerStats",
    "Delivery",
    "EventRejected",
    "Executes",
    "InvalidEvent",
    "OutboxError",
    "OutboxEvent",
    "OutboxState",
    "Outcome",
    "ParkedEvent",
    "PendingEvent",
    "Publisher",
    "Relay",
    "RelayConfig",
    "RelayStats",
    "Subscriber",
    "Subscription",
    "Topology",
    "append",
    "check_url",
    "consume",
    "consumed_ddl",
    "ensure_consumed_table",
    "ensure_outbox_tables",
    "insert_statement",
    "outbox_ddl",
    "outbox_drop_ddl",
    "outbox_state",
    "parked_events",
    "prepare",
    "prune_consumed",
    "redacted",
    "retry_parked",
    "write_event",
]
