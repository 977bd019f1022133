"""The booking as one global transaction over the three databases (two-phase commit).

The same changes as the saga's, in the same order, each in its database's branch: the seat
held and booked (``flights``), the booking made and confirmed (``bookings``), the card
charged (``payments``), and the confirmation recorded in the bookings branch — so it exists
only if everything committed. A refusal anywhere raises :class:`BookingRefused` inside the
transaction: every branch rolls back and nothing of the booking is left anywhere. Readers
never see a pending seat or booking: they see the rows as they were until each branch
commits, while the seat's row stays locked to other writers from the first statement to
the commit (and, if the coordinator dies in between, until `twopc recover`).
"""

from __future__ import annotations

from dataclasses import dataclass

from twopc.coordinator import Coordinator, Outcome
from twopc.flights import changes
from twopc.flights.booking import (
    BOOKING,
    CONFIRM,
    FAILURES,
    NOTIFY,
    PAY,
    SEAT,
    BookingRefused,
    BookingRequest,
    parse_step,
)
from twopc.flights.tables import BOOKINGS, DATABASES, FLIGHTS, PAYMENTS


@dataclass(frozen=True)
class Booked:
    """A booking committed under 2PC: its id, the coordinator's outcome, the confirmation."""

    booking_id: str
    outcome: Outcome
    confirmation: str


def payment_key(booking_id: str) -> str:
    """The idempotency key a 2PC booking's payment call carries (and the payment's id)."""
    return f"{booking_id}-charge"


def book_with_2pc(
    coordinator: Coordinator,
    request: BookingRequest,
    booking_id: str,
    fail_at: str | None = None,
) -> Booked:
    """Book ``request`` as one global transaction; :class:`BookingRefused` (everything rolled
    back) when the seat is taken or ``fail_at`` names a step."""
    parse_step(fail_at)

    def refuse_at(step: str) -> None:
        if fail_at == step:
            raise BookingRefused(f"{FAILURES[step]} (--fail-at {step})")

    with coordinator.transaction() as tx:
        for name in DATABASES:  # flights' branch is the first, as the crash points count
            tx.branch(name)
        refuse_at(SEAT)
        reason = changes.hold_seat(tx[FLIGHTS], request, booking_id)
        if reason is not None:
            raise BookingRefused(reason)
        refuse_at(BOOKING)
        changes.create_booking(tx[BOOKINGS], request, booking_id)
        refuse_at(PAY)
        changes.charge(tx[PAYMENTS], booking_id, request.amount, payment_key(booking_id))
        refuse_at(CONFIRM)
        changes.confirm_seat(tx[FLIGHTS], request, booking_id)
        changes.confirm_booking(tx[BOOKINGS], booking_id)
        refuse_at(NOTIFY)
        confirmation = changes.record_confirmation(tx[BOOKINGS], request, booking_id)
    assert tx.outcome is not None  # set by a commit that returned
    return Booked(booking_id, tx.outcome, confirmation)
