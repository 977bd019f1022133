"""Running the choreographed booking's services, and reading one booking's trace.

:class:`Services` runs a relay over the three databases' outboxes and the four services'
consumers (:mod:`flights.choreography`), each on a thread of its own with its own
connections, until told to stop. ``twopc flights book --mode choreography`` runs them in
its process until its booking is finished or its deadline passes; ``twopc flights serve``
runs them until SIGTERM. Several processes may run them at once: the relay's claims skip
each other's rows and a queue's messages go to one consumer each.

:func:`read_trace` gathers one booking's story from the three databases: every service's
trace rows in time order, the outboxes' unpublished and parked events of the booking, and
the services' rows as they stand.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from twopc.flights.choreography import (
    CONSUMERS,
    SERVICE_DATABASES,
    SERVICES,
    TOPOLOGY,
    TraceEntry,
)
from twopc.flights.tables import BOOKINGS, DATABASES, FLIGHTS, PAYMENTS, TRACE_TABLE
from twopc.outbox import (
    ConsumerConfig,
    ConsumerRunner,
    ConsumerStats,
    Delivery,
    OutboxEvent,
    Publisher,
    Relay,
    RelayConfig,
    Subscriber,
    Topology,
    prepare,
)
from twopc.outbox.backoff import Backoff
from twopc.participants import DatabaseURL, Participant, participant_for

#: The handlers' consumers: a failing effect (the notification service down) is retried
#: with back-off up to 0.5 s for 20 attempts before its event is dead-lettered.
HANDLER_CONFIG = ConsumerConfig(prefetch=20, backoff=Backoff(0.05, 2.0, 0.5), failures_allowed=20)
RELAY_CONFIG = RelayConfig(poll=0.01)


@dataclass(frozen=True)
class KillBeforeAck:
    """SIGKILL this process when ``service`` has committed its handling of an event of
    ``event_type`` and not yet acknowledged it (the broker redelivers it to whoever runs
    the service next)."""

    service: str
    event_type: str


class _KillingSubscriber(Subscriber):
    def __init__(self, kill: KillBeforeAck, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kill = kill

    def ack(self, delivery: Delivery) -> None:
        if OutboxEvent.from_message(delivery.body).type == self._kill.event_type:
            os.kill(os.getpid(), signal.SIGKILL)
        super().ack(delivery)


@dataclass
class Services:
    """The relay and the four handlers, on threads, over the databases at ``urls``."""

    urls: Mapping[str, DatabaseURL]
    broker_url: str
    services: tuple[str, ...] = SERVICES
    relay: bool = True
    kill: KillBeforeAck | None = None
    topology: Topology = TOPOLOGY  # the queues the relay and the consumers declare
    idle_exit: float | None = None  # a handler stops after this long without a message
    errors: list[str] = field(default_factory=list)
    stats: dict[str, ConsumerStats] = field(default_factory=dict)  # per service
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _made: list[Participant] = field(default_factory=list)
    _relay: Relay | None = None

    def _participant(self, database: str) -> Participant:
        made = participant_for(database, self.urls[database], lock_wait=10.0)
        self._made.append(made)
        return made

    def start(self) -> Services:
        """Make sure of the consumers' tables, then start every thread."""
        runners = {service: self._runner(service) for service in self.services}
        for service, runner in runners.items():
            self.stats[service] = runner.stats
            self._spawn(f"handler {runner.consumer.name}", self._running(runner))
        if self.relay:
            sources = [self._participant(name) for name in DATABASES]
            relay = Relay(sources, Publisher(self.broker_url, self.topology), RELAY_CONFIG)
            self._relay = relay
            self._spawn("relay", lambda: relay.run(self._stop.is_set))
        return self

    def _running(self, runner: ConsumerRunner) -> Callable[[], object]:
        return lambda: runner.run(self._stop.is_set, idle_exit=self.idle_exit)

    def problems(self) -> list[str]:
        """What went wrong so far: threads that died, and the last outage each handler and
        the relay rode out (a broker or database away; credentials never included)."""
        last = {f"handler {name}": stats.last_error for name, stats in self.stats.items()}
        if self._relay is not None:
            last["relay"] = self._relay.stats.last_error
        by_error: dict[str, list[str]] = {}
        for name, error in last.items():
            if error:
                by_error.setdefault(error, []).append(name)
        return self.errors + [f"{error} ({', '.join(names)})" for error, names in by_error.items()]

    def handlers_running(self) -> bool:
        """Whether a handler is still running (with ``idle_exit``, they end when idle)."""
        return any(t.is_alive() for t in self._threads if t.name.startswith("handler "))

    def _runner(self, service: str) -> ConsumerRunner:
        consumer, participant = CONSUMERS[service], self._participant(SERVICE_DATABASES[service])
        prepare(participant, consumer)
        args = (self.broker_url, self.topology, consumer.subscription)
        if self.kill is not None and self.kill.service == service:
            subscriber: Subscriber = _KillingSubscriber(self.kill, *args, prefetch=20)
        else:
            subscriber = Subscriber(*args, prefetch=20)
        return ConsumerRunner(consumer, participant, subscriber, HANDLER_CONFIG)

    def _spawn(self, name: str, work: Callable[[], object]) -> None:
        def run() -> None:
            try:
                work()
            except Exception as err:  # reported by stop(); the others go on
                self.errors.append(f"{name}: {err}")

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every thread (each finishes the message or batch in hand), bounded."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for participant in self._made:
            participant.close()

    def __enter__(self) -> Services:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- reading one booking back ------------------------------------------------------------------


@dataclass
class BookingTrace:
    """One booking as the three databases hold it."""

    booking_id: str
    entries: list[TraceEntry]
    unpublished: list[dict[str, Any]]
    parked: list[dict[str, Any]]
    seats: list[dict[str, Any]]
    bookings: list[dict[str, Any]]
    payments: list[dict[str, Any]]
    confirmations: list[dict[str, Any]]

    def found(self) -> bool:
        return bool(self.entries or self.bookings or self.seats or self.payments)


def _rows(
    participant: Participant, query: str, columns: tuple[str, ...], params: tuple[Any, ...]
) -> list[dict[str, Any]]:
    with participant.local_transaction() as tx:
        found = tx.execute(query, params).fetchall()
    return [
        {c: str(v) if isinstance(v, Decimal) else v for c, v in zip(columns, row, strict=True)}
        for row in found
    ]


def read_trace(participants: Mapping[str, Participant], booking_id: str) -> BookingTrace:
    """``booking_id``'s trace entries from the three databases, in time order, its events
    still in an outbox or parked, and its seat, booking, payments and confirmation."""
    entries = trace_entries(participants, booking_id)
    unpublished: list[dict[str, Any]] = []
    parked: list[dict[str, Any]] = []
    for name in DATABASES:
        for table, into in (("outbox", unpublished), ("outbox_parked", parked)):
            into += [
                {"database": name, **row}
                for row in _rows(
                    participants[name],
                    f"SELECT event_id, event_type, attempts, last_error FROM {table} "
                    "WHERE aggregate = %s ORDER BY seq",
                    ("event_id", "event_type", "attempts", "last_error"),
                    (booking_id,),
                )
            ]
    one = (booking_id,)
    bookings = _rows(
        participants[BOOKINGS],
        "SELECT flight, seat, customer, amount, state FROM bookings WHERE booking_id = %s",
        ("flight", "seat", "customer", "amount", "state"),
        one,
    )
    seat_columns = ("flight", "seat", "state")
    seats = _rows(
        participants[FLIGHTS],
        "SELECT flight, seat, state FROM flight_seats WHERE booking_id = %s",
        seat_columns,
        one,
    )
    if not seats and bookings:  # freed: the booking's seat, whoever holds it now
        seats = _rows(
            participants[FLIGHTS],
            "SELECT flight, seat, state FROM flight_seats WHERE flight = %s AND seat = %s",
            seat_columns,
            (bookings[0]["flight"], bookings[0]["seat"]),
        )
    return BookingTrace(
        booking_id,
        entries,
        unpublished,
        parked,
        seats=seats,
        bookings=bookings,
        payments=_rows(
            participants[PAYMENTS],
            "SELECT payment_id, kind, amount FROM payments "
            "WHERE booking_id = %s ORDER BY created_at",
            ("payment_id", "kind", "amount"),
            one,
        ),
        confirmations=_rows(
            participants[BOOKINGS],
            "SELECT message FROM booking_confirmations WHERE booking_id = %s",
            ("message",),
            one,
        ),
    )


def trace_entries(participants: Mapping[str, Participant], booking_id: str) -> list[TraceEntry]:
    """The services' trace rows of ``booking_id`` from the three databases, in time order
    (a consumed event before what its handler emitted)."""
    columns = ("recorded_at", "service", "direction", "event_type", "event_id", "cause", "reason")
    query = f"SELECT {', '.join(columns)} FROM {TRACE_TABLE} WHERE booking_id = %s"
    entries = [
        TraceEntry(
            float(r["recorded_at"]),
            r["service"],
            r["direction"],
            r["event_type"],
            r["event_id"],
            r["cause"],
            r["reason"],
        )
        for name in DATABASES
        for r in _rows(participants[name], query, columns, (booking_id,))
    ]
    entries.sort(key=lambda e: (e.at, e.direction != "consumed"))
    return entries
