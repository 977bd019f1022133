"""Idempotent consumers: an event's effect and the record of its id commit together.

A :class:`Consumer` names its queue's bindings and the effect of one event, a function run
inside a local transaction of the consumer's own database. :func:`consume` first records
``(consumer, event_id)`` in ``consumed_events`` — a primary key — then applies the effect,
in that one transaction. An event delivered again (the relay published it twice, or the
broker redelivered it after a lost acknowledgement) finds its id recorded and changes
nothing; two consumers racing on the same event serialize on the key, and one of them
finds it recorded. The message is acknowledged only after the commit.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from twopc.outbox.backoff import Backoff
from twopc.outbox.broker import Delivery, Subscriber, Subscription, Topology
from twopc.outbox.errors import BrokerUnavailable, InvalidEvent, OutboxError
from twopc.outbox.events import OutboxEvent
from twopc.outbox.tables import CONSUMED_TABLE, ensure_consumed_table
from twopc.participants import (
    DuplicateKey,
    LocalTransaction,
    Participant,
    ParticipantError,
    ParticipantUnavailable,
)

log = logging.getLogger(__name__)

#: An event's effect, run in the consumer's local transaction. Raising
#: :class:`EventRejected` means "never applicable" (the message is dead-lettered); any other
#: error rolls the transaction back and the event is delivered again.
Effect = Callable[[LocalTransaction, OutboxEvent], None]

_RECORD = f"INSERT INTO {CONSUMED_TABLE} (consumer, event_id, consumed_at) VALUES (%s, %s, %s)"
_PRUNE = f"DELETE FROM {CONSUMED_TABLE} WHERE consumer = %s AND consumed_at < %s"


class EventRejected(Exception):
    """The consumer can never apply this event (malformed for it): dead-letter it."""


@dataclass(frozen=True)
class Consumer:
    """A named consumer: the event types it binds to, its effect, and the tables its
    effect needs (``setup``, run once before it consumes)."""

    name: str
    bindings: tuple[str, ...]
    effect: Effect
    setup: Callable[[Participant], None] | None = None

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ValueError(f"consumer name {self.name!r} must be letters, digits, - or _")
        if not self.bindings:
            raise ValueError(f"consumer {self.name!r} binds to no event type")

    @property
    def subscription(self) -> Subscription:
        return Subscription(self.name, self.bindings)


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"


class _AlreadyConsumed(Exception):
    pass


def prepare(participant: Participant, consumer: Consumer) -> None:
    """Make sure of the consumer's tables (its record of ids and its effect's)."""
    ensure_consumed_table(participant)
    if consumer.setup is not None:
        consumer.setup(participant)


def consume(participant: Participant, consumer: Consumer, event: OutboxEvent) -> Outcome:
    """Apply ``event`` once: its effect and its id's record in one local transaction.
    Returns DUPLICATE, changing nothing, when the id is already recorded."""
    try:
        with participant.local_transaction() as tx:
            try:
                tx.execute(_RECORD, (consumer.name, event.event_id, time.time()))
            except DuplicateKey:
                raise _AlreadyConsumed from None  # the transaction rolls back
            consumer.effect(tx, event)
    except _AlreadyConsumed:
        return Outcome.DUPLICATE
    return Outcome.APPLIED


def prune_consumed(participant: Participant, consumer: str, retention: float) -> int:
    """Forget the ids ``consumer`` applied more than ``retention`` seconds ago. A redelivery
    comes minutes after the first delivery at most, unless a relay stayed down with
    published rows longer than ``retention``: keep it well above any outage."""
    with participant.local_transaction() as tx:
        return tx.execute(_PRUNE, (consumer, time.time() - retention)).rowcount


@dataclass
class ConsumerStats:
    """What a consumer saw: events applied, duplicates absorbed, messages dead-lettered."""

    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    outages: int = 0
    last_error: str = ""
    applied_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConsumerConfig:
    """``prefetch``: messages in flight; ``retention``: how long applied ids are kept;
    ``backoff``: pauses while the broker or the database is away."""

    prefetch: int = 50
    retention: float = 7 * 86400.0
    backoff: Backoff = field(default_factory=lambda: Backoff(0.2, 2.0, 5.0))
    failures_allowed: int = 5  # an effect failing this often in a row: dead-letter the event
    keep_ids: bool = False  # remember applied ids in the stats (tests, the demo)


class ConsumerRunner:
    """Runs one consumer against its queue until told to stop."""

    def __init__(
        self,
        consumer: Consumer,
        participant: Participant,
        subscriber: Subscriber,
        config: ConsumerConfig | None = None,
    ) -> None:
        self.consumer = consumer
        self.participant = participant
        self.subscriber = subscriber
        self.config = config or ConsumerConfig()
        self.stats = ConsumerStats()
        self._failures: dict[bytes, int] = {}  # effect failures in a row, per message
        self._next_prune = 0.0  # time.monotonic() of the next prune: the first delivery's

    @classmethod
    def open(
        cls,
        consumer: Consumer,
        participant: Participant,
        broker_url: str,
        topology: Topology,
        config: ConsumerConfig | None = None,
    ) -> ConsumerRunner:
        """A runner for ``consumer`` on ``participant``'s database, its tables made sure of."""
        config = config or ConsumerConfig()
        prepare(participant, consumer)
        subscriber = Subscriber(
            broker_url, topology, consumer.subscription, prefetch=config.prefetch
        )
        return cls(consumer, participant, subscriber, config)

    def run(self, stop: Callable[[], bool], idle_exit: float | None = None) -> ConsumerStats:
        """Consume until ``stop()``, or until ``idle_exit`` seconds pass with no message.

        Outages of the broker or the database are ridden out (bounded back-off); they count
        as idle time, and an ``idle_exit`` reached in the middle of one raises its error."""
        failures, idle_since = 0, time.monotonic()
        outage: OutboxError | ParticipantUnavailable | None = None
        try:
            while not stop():
                try:
                    idle_since = self._consume_some(stop, idle_exit, idle_since)
                    failures, outage = 0, None
                except (BrokerUnavailable, ParticipantUnavailable) as err:
                    failures, outage = failures + 1, err
                    self._outage(err, failures)
                if idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                    if outage is not None:
                        raise outage
                    break
        finally:
            self.subscriber.close()
        return self.stats

    def _consume_some(
        self, stop: Callable[[], bool], idle_exit: float | None, idle_since: float
    ) -> float:
        wait = 0.2 if idle_exit is None else min(0.2, idle_exit)
        for delivery in self.subscriber.deliveries(inactivity=wait):
            self._prune_when_due()
            if delivery is None:
                if stop() or (idle_exit is not None and time.monotonic() - idle_since >= idle_exit):
                    return idle_since
                continue
            self.handle(delivery)
            idle_since = time.monotonic()
            if stop():
                break
        return idle_since

    def _prune_when_due(self) -> None:
        """Forget applied ids older than the retention: at start, then every tenth of the
        retention (at most hourly), so the record stays bounded under endless load."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        prune_consumed(self.participant, self.consumer.name, self.config.retention)
        self._next_prune = now + min(self.config.retention / 10, 3600.0)

    def handle(self, delivery: Delivery) -> None:
        """Apply one delivery and settle it with the broker (acknowledged after commit)."""
        try:
            event = OutboxEvent.from_message(delivery.body)
            outcome = consume(self.participant, self.consumer, event)
        except (InvalidEvent, EventRejected) as err:
            log.warning("consumer %s: dead-lettering a message: %s", self.consumer.name, err)
            self.subscriber.dead_letter(delivery)
            self.stats.dead_lettered += 1
            return
        except ParticipantUnavailable:
            self.subscriber.give_back([delivery])
            raise
        except ParticipantError as err:
            self._failed(delivery, err)
            return
        self._failures.pop(delivery.body, None)
        self.subscriber.ack(delivery)
        self._count(event, outcome)

    def _failed(self, delivery: Delivery, err: ParticipantError) -> None:
        # Rolled back: nothing applied. Retried a few times (a deadlock, a lock wait), then
        # set aside rather than retried for ever ahead of the events behind it.
        failures = self._failures.get(delivery.body, 0) + 1
        if failures >= self.config.failures_allowed:
            log.warning("consumer %s: dead-lettering an event: %s", self.consumer.name, err)
            self._failures.pop(delivery.body, None)
            self.subscriber.dead_letter(delivery)
            self.stats.dead_lettered += 1
            return
        self._failures[delivery.body] = failures
        log.warning("consumer %s: will retry an event: %s", self.consumer.name, err)
        time.sleep(self.config.backoff.delay(failures))
        self.subscriber.give_back([delivery])

    def _count(self, event: OutboxEvent, outcome: Outcome) -> None:
        if outcome is Outcome.DUPLICATE:
            self.stats.duplicates += 1
            return
        self.stats.applied += 1
        if self.config.keep_ids:
            self.stats.applied_ids.append(event.event_id)

    def _outage(self, err: Exception, failures: int) -> None:
        self.stats.outages += failures == 1
        self.stats.last_error = str(err)
        pause = self.config.backoff.delay(failures)
        log.warning("consumer %s: %s; retrying in %.1fs", self.consumer.name, err, pause)
        self.subscriber.close()
        time.sleep(pause)
