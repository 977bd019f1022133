"""The choreography's pure parts, without servers: where a booking stands from its trace,
which service consumes which event, and the queues a relay must declare for them."""

from __future__ import annotations

import pytest

from twopc.flights.choreography import (
    BOOKED,
    COMPENSATED,
    CONSUMERS,
    FINAL_EVENTS,
    REFUSED,
    TOPOLOGY,
    UNFINISHED,
    TraceEntry,
    outcome_of,
)


def _emitted(*types: str) -> list[TraceEntry]:
    return [
        TraceEntry(float(n), "svc", "emitted", t, f"id-{n}", None) for n, t in enumerate(types)
    ]


HAPPY = ("booking.requested", "seat.held", "booking.created", "payment.charged",
         "booking.confirmed")  # fmt: skip


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ((), (UNFINISHED, "nothing recorded for this booking")),
        (("booking.requested",), (UNFINISHED, "the seats service to hold the seat")),
        (("booking.requested", "seat.refused"), (REFUSED, "")),
        (HAPPY, (UNFINISHED, "the seats service to book the seat and the notifier to notify")),
        ((*HAPPY, "seat.booked"), (UNFINISHED, "the notifier to notify")),
        ((*HAPPY, "booking.notified"), (UNFINISHED, "the seats service to book the seat")),
        ((*HAPPY, "booking.notified", "seat.booked"), (BOOKED, "")),
        ((*HAPPY[:4], "confirmation.refused"), (UNFINISHED, "the payments service to refund")),
        ((*HAPPY[:3], "payment.declined", "booking.cancelled"),
         (UNFINISHED, "the seats service to free the seat")),
        ((*HAPPY[:3], "payment.declined", "booking.cancelled", "seat.freed"), (COMPENSATED, "")),
    ],
)  # fmt: skip
def test_outcome_from_the_trace(types: tuple[str, ...], expected: tuple[str, str]) -> None:
    assert outcome_of(_emitted(*types)) == expected


def test_consumed_events_are_only_counted_as_emitted_ones() -> None:
    consumed = [TraceEntry(0.0, "seats", "consumed", "seat.freed", "x", None)]
    assert outcome_of(consumed) == (UNFINISHED, "nothing recorded for this booking")


def test_every_published_event_has_a_queue_and_final_ones_none() -> None:
    bound = {t for sub in TOPOLOGY.subscriptions for t in sub.bindings}
    published = {"booking.requested", "seat.held", "booking.created", "booking.refused",
                 "payment.charged", "payment.declined", "booking.confirmed",
                 "confirmation.refused", "payment.refunded", "booking.cancelled"}  # fmt: skip
    assert bound == published
    assert not bound & FINAL_EVENTS
    assert {c.subscription.queue for c in CONSUMERS.values()} == {
        "twopc.flights-seats", "twopc.flights-bookings", "twopc.flights-payments",
        "twopc.flights-notifier",
    }  # fmt: skip
