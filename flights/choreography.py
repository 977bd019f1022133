"""The booking as a choreographed saga: no orchestrator, each service reacts to events.

Four services, each an idempotent :class:`~twopc.outbox.Consumer` of its own database. A
handler's local transaction does the service's change, records the event it consumed
(``consumed_events``, by the consumer machinery), emits the next event into its own
outbox (:func:`~twopc.outbox.write_event`) and writes both into ``booking_events``, its
trace — all or nothing. The relay carries the outboxes' events to RabbitMQ; the broker
delivers each to the services bound to its type (the chain's last events, which no service
awaits, are only traced: :data:`FINAL_EVENTS`). Every event's aggregate is the booking id
and its payload the request (and the failure a demonstration injects), so any service can
act on it alone::

    booking.requested ─ seats ─► seat.held ─ bookings ─► booking.created ─ payments ─►
      payment.charged ─ bookings ─► booking.confirmed ─┬ seats ─► seat.booked
                                                       └ notifier ─► booking.notified
    refusals:  seat.refused (nothing to undo)
               booking.refused ─ seats ─► seat.freed
               payment.declined ─ bookings ─► booking.cancelled ─ seats ─► seat.freed
               confirmation.refused ─ payments ─► payment.refunded ─ bookings ─►
                 booking.cancelled ─ seats ─► seat.freed

The end states are the orchestrated saga's (:mod:`flights.saga`): booked (seat booked,
booking confirmed, one charge, one confirmation) or compensated (seat available, booking
cancelled and kept, a refund as a row of its own) — the same changes
(:mod:`flights.changes`) run them. Where the booking stands is read from the services'
traces (:func:`outcome_of`); no single place knows it as it happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twopc.flights import changes
from twopc.flights.booking import (
    BOOKING,
    CONFIRM,
    FAILURES,
    NOTIFY,
    OUTAGE_SECONDS,
    PAY,
    SEAT,
    BookingRequest,
)
from twopc.flights.saga import ServiceUnavailable
from twopc.flights.tables import BOOKINGS, FLIGHTS, PAYMENTS, TRACE_TABLE
from twopc.outbox import (
    Consumer,
    EventRejected,
    OutboxEvent,
    Subscription,
    Topology,
    write_event,
)
from twopc.participants import LocalTransaction
from twopc.saga import CompensationFailed

# -- the events ----------------------------------------------------------------------------------

REQUESTED = "booking.requested"
SEAT_HELD, SEAT_REFUSED, SEAT_BOOKED, SEAT_FREED = (
    "seat.held",
    "seat.refused",
    "seat.booked",
    "seat.freed",
)
CREATED, BOOKING_REFUSED, CONFIRMED_EVENT, CONFIRM_REFUSED, CANCELLED_EVENT = (
    "booking.created",
    "booking.refused",
    "booking.confirmed",
    "confirmation.refused",
    "booking.cancelled",
)
CHARGED, DECLINED, REFUNDED = "payment.charged", "payment.declined", "payment.refunded"
NOTIFIED = "booking.notified"
#: The chain's last events: no service reacts to them, so they are recorded in the trace of
#: the service that reached them and not written to its outbox (the broker refuses a type
#: no queue is bound to). A service that wants them binds a queue and they are published.
FINAL_EVENTS = frozenset({SEAT_REFUSED, SEAT_FREED, SEAT_BOOKED, NOTIFIED})

# Outcomes, as the traces tell them.
BOOKED, REFUSED, COMPENSATED, UNFINISHED = "booked", "refused", "compensated", "unfinished"

#: What a booking waits for after each event, for "unfinished" reports.
_NEXT: Mapping[str, str] = {
    REQUESTED: "the seats service to hold the seat",
    SEAT_HELD: "the bookings service to create the booking",
    CREATED: "the payments service to charge",
    CHARGED: "the bookings service to confirm",
    CONFIRMED_EVENT: "the seats service to book the seat and the notifier to notify",
    SEAT_BOOKED: "the notifier to notify",
    NOTIFIED: "the seats service to book the seat",
    BOOKING_REFUSED: "the seats service to free the seat",
    DECLINED: "the bookings service to cancel the booking",
    CONFIRM_REFUSED: "the payments service to refund",
    REFUNDED: "the bookings service to cancel the booking",
    CANCELLED_EVENT: "the seats service to free the seat",
}

# The services: their consumer's name and the database their handler writes to.
SERVICE_DATABASES: Mapping[str, str] = {
    "front": BOOKINGS,
    "seats": FLIGHTS,
    "bookings": BOOKINGS,
    "payments": PAYMENTS,
    "notifier": BOOKINGS,
}
SERVICES = ("seats", "bookings", "payments", "notifier")

_TRACE_INSERT = (
    f"INSERT INTO {TRACE_TABLE} (booking_id, service, direction, event_id, event_type, cause, "
    "reason, recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
CONSUMED, EMITTED = "consumed", "emitted"


def request_payload(
    request: BookingRequest, fail_at: str | None, *, now: float | None = None
) -> dict[str, object]:
    """What every event of the booking carries: the request, and the failure to inject."""
    payload: dict[str, object] = dict(request.params())
    if fail_at is not None:
        payload["fail_at"] = fail_at
    if fail_at == NOTIFY:
        payload["outage_until"] = (time.time() if now is None else now) + OUTAGE_SECONDS
    return payload


def request_booking(
    tx: LocalTransaction, booking_id: str, request: BookingRequest, fail_at: str | None
) -> OutboxEvent:
    """The front door: ``booking.requested`` into the bookings database's outbox, traced,
    in ``tx``. Nothing else happens until a relay publishes it."""
    event = write_event(tx, booking_id, REQUESTED, request_payload(request, fail_at))
    _trace(tx, booking_id, "front", EMITTED, event, cause=None)
    return event


def _trace(
    tx: LocalTransaction,
    booking_id: str,
    service: str,
    direction: str,
    event: OutboxEvent,
    cause: str | None,
) -> None:
    reason = event.payload.get("reason") if direction == EMITTED else None
    params = (booking_id, service, direction, event.event_id, event.type, cause,
              None if reason is None else str(reason), time.time())  # fmt: skip
    tx.execute(_TRACE_INSERT, params)


# -- the handlers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reaction:
    """What a service's handler did with one event: the event it emits, if any, with extra
    payload."""

    emits: str | None
    extra: Mapping[str, object] | None = None


Reacts = Callable[[LocalTransaction, str, BookingRequest, Mapping[str, Any]], _Reaction]


def _fails_at(payload: Mapping[str, Any], step: str) -> bool:
    return payload.get("fail_at") == step


def _reason(step: str) -> dict[str, object]:
    return {"reason": f"{FAILURES[step]} (--fail-at {step})"}


def _seats(event_type: str) -> Reacts:
    def react(
        tx: LocalTransaction, bid: str, request: BookingRequest, payload: Mapping[str, Any]
    ) -> _Reaction:
        if event_type == REQUESTED:
            if _fails_at(payload, SEAT):
                return _Reaction(SEAT_REFUSED, _reason(SEAT))
            reason = changes.hold_seat(tx, request, bid)
            return _Reaction(SEAT_REFUSED, {"reason": reason}) if reason else _Reaction(SEAT_HELD)
        if event_type == CONFIRMED_EVENT:
            changes.confirm_seat(tx, request, bid)
            return _Reaction(SEAT_BOOKED)
        changes.free_seat(tx, request, bid)  # booking.refused, booking.cancelled
        return _Reaction(SEAT_FREED)

    return react


def _bookings(event_type: str) -> Reacts:
    def react(
        tx: LocalTransaction, bid: str, request: BookingRequest, payload: Mapping[str, Any]
    ) -> _Reaction:
        if event_type == SEAT_HELD:
            if _fails_at(payload, BOOKING):
                return _Reaction(BOOKING_REFUSED, _reason(BOOKING))
            changes.create_booking(tx, request, bid)
            return _Reaction(CREATED)
        if event_type == CHARGED:
            if _fails_at(payload, CONFIRM):
                return _Reaction(CONFIRM_REFUSED, _reason(CONFIRM))
            changes.confirm_booking(tx, bid)
            return _Reaction(CONFIRMED_EVENT)
        changes.cancel_booking(tx, bid)  # payment.declined, payment.refunded
        return _Reaction(CANCELLED_EVENT)

    return react


def payment_ids(booking_id: str) -> tuple[str, str]:
    """The charge's and the refund's payment ids (their idempotency keys)."""
    return f"{booking_id}-charge", f"{booking_id}-refund"


def _payments(event_type: str) -> Reacts:
    def react(
        tx: LocalTransaction, bid: str, request: BookingRequest, payload: Mapping[str, Any]
    ) -> _Reaction:
        charge_id, refund_id = payment_ids(bid)
        if event_type == CREATED:
            if _fails_at(payload, PAY):
                return _Reaction(DECLINED, _reason(PAY))
            changes.charge(tx, bid, request.amount, charge_id)
            return _Reaction(CHARGED, {"payment": charge_id})
        changes.refund(tx, bid, request.amount, refund_id)  # confirmation.refused
        return _Reaction(REFUNDED, {"payment": refund_id})

    return react


def _notifier(event_type: str) -> Reacts:
    def react(
        tx: LocalTransaction, bid: str, request: BookingRequest, payload: Mapping[str, Any]
    ) -> _Reaction:
        if _fails_at(payload, NOTIFY) and time.time() < float(payload["outage_until"]):
            raise ServiceUnavailable(f"{FAILURES[NOTIFY]} (--fail-at {NOTIFY})")  # retried
        changes.record_confirmation(tx, request, bid)
        return _Reaction(NOTIFIED)

    return react


#: service -> (the event types it consumes, its reaction to each type).
_REACTIONS: Mapping[str, tuple[tuple[str, ...], Callable[[str], Reacts]]] = {
    "seats": ((REQUESTED, CONFIRMED_EVENT, BOOKING_REFUSED, CANCELLED_EVENT), _seats),
    "bookings": ((SEAT_HELD, CHARGED, DECLINED, REFUNDED), _bookings),
    "payments": ((CREATED, CONFIRM_REFUSED), _payments),
    "notifier": ((CONFIRMED_EVENT,), _notifier),
}


def _effect(service: str) -> Callable[[LocalTransaction, OutboxEvent], None]:
    types, reactions = _REACTIONS[service]

    def effect(tx: LocalTransaction, event: OutboxEvent) -> None:
        if event.type not in types:
            raise EventRejected(f"{service} does not handle {event.type}")
        try:
            request = BookingRequest.from_params(event.payload)
        except (ValueError, KeyError) as err:
            raise EventRejected(f"{event.type} {event.event_id}: bad request: {err}") from None
        booking_id = event.aggregate
        _trace(tx, booking_id, service, CONSUMED, event, cause=None)
        try:
            reaction = reactions(event.type)(tx, booking_id, request, event.payload)
        except CompensationFailed as err:  # a row not as the booking left it: never applicable
            raise EventRejected(str(err)) from None
        if reaction.emits is None:
            return
        base = {k: v for k, v in event.payload.items() if k not in ("reason", "payment")}
        payload = base | dict(reaction.extra or {})
        if reaction.emits in FINAL_EVENTS:
            emitted = OutboxEvent.new(booking_id, reaction.emits, payload)
        else:
            emitted = write_event(tx, booking_id, reaction.emits, payload)
        _trace(tx, booking_id, service, EMITTED, emitted, cause=event.event_id)

    return effect


def consumer_of(service: str) -> Consumer:
    """The service's consumer: its queue ``twopc.flights-<service>`` and its handler."""
    return Consumer(f"flights-{service}", _REACTIONS[service][0], _effect(service))


#: The four services' consumers, and the queues a relay publishing their events declares.
CONSUMERS: Mapping[str, Consumer] = {service: consumer_of(service) for service in SERVICES}
SUBSCRIPTIONS: tuple[Subscription, ...] = tuple(c.subscription for c in CONSUMERS.values())
TOPOLOGY = Topology(SUBSCRIPTIONS)


# -- where a booking stands, from the traces ---------------------------------------------------


@dataclass(frozen=True)
class TraceEntry:
    """One row of a service's trace: it consumed or emitted an event at ``at``."""

    at: float
    service: str
    direction: str
    event_type: str
    event_id: str
    cause: str | None
    reason: str | None = None  # why a refusal event was emitted

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at,
            "service": self.service,
            "direction": self.direction,
            "event_type": self.event_type,
            "event_id": self.event_id,
            "cause": self.cause,
            "reason": self.reason,
        }


def outcome_of(entries: list[TraceEntry]) -> tuple[str, str]:
    """The booking's outcome from its trace entries, and for an unfinished one what it
    waits for (``""`` when finished)."""
    emitted = [e.event_type for e in sorted(entries, key=lambda e: e.at) if e.direction == EMITTED]
    done = set(emitted)
    if SEAT_REFUSED in done:
        return REFUSED, ""
    if SEAT_FREED in done:
        return COMPENSATED, ""
    if {SEAT_BOOKED, NOTIFIED} <= done:
        return BOOKED, ""
    if not emitted:
        return UNFINISHED, "nothing recorded for this booking"
    return UNFINISHED, _NEXT.get(emitted[-1], "the next service")
