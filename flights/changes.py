"""A booking's changes to each database, written once for both engines.

Each function runs its statements through whatever executes them: a branch of a 2PC global
transaction or a saga step's local transaction. A business refusal (the seat is taken) is
returned as its reason, and the engine decides what it means (a rollback of everything, or a
refused step); a change that finds a row not as the booking left it raises
:class:`twopc.saga.CompensationFailed`, which the saga retries and dead-letters.

Every change of state names the states it may come from (:func:`booking.sources`), so it
touches nothing in any other state. Values are always bound parameters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Protocol

from twopc.flights.booking import (
    AVAILABLE,
    BOOKED,
    BOOKING_STATES,
    CANCELLED,
    CHARGE,
    CONFIRMED,
    PENDING,
    REFUND,
    SEAT_STATES,
    BookingRequest,
    sources,
)
from twopc.participants import Cursor
from twopc.saga import CompensationFailed


class Executes(Protocol):
    """A transaction statements run in: a 2PC branch or a local transaction."""

    def execute(self, query: str, params: Sequence[Any] | None = None) -> Cursor: ...


def _in(states: Sequence[str]) -> str:
    return ", ".join(["%s"] * len(states))  # placeholders only; the states are bound


# -- flights: the seat --------------------------------------------------------------------------


def _move_seat(tx: Executes, request: BookingRequest, target: str, booking_id: str | None,
               held_by: str | None) -> int:  # fmt: skip
    """Move the seat to ``target`` from the states allowed, held by ``held_by`` (None: by
    nobody, for a free seat); how many rows moved (0 or 1)."""
    froms = sources(SEAT_STATES, target)
    holder = "booking_id IS NULL" if held_by is None else "booking_id = %s"
    query = (
        "UPDATE flight_seats SET state = %s, booking_id = %s, updated_at = %s "
        f"WHERE flight = %s AND seat = %s AND {holder} AND state IN ({_in(froms)})"
    )
    where = [request.flight, request.seat, *([] if held_by is None else [held_by]), *froms]
    return tx.execute(query, [target, booking_id, time.time(), *where]).rowcount


def hold_seat(tx: Executes, request: BookingRequest, booking_id: str) -> str | None:
    """Hold the seat for ``booking_id`` as pending; the refusal's reason (no such seat, the
    seat taken) when it cannot be held, with nothing changed."""
    if _move_seat(tx, request, PENDING, booking_id, held_by=None) == 1:
        return None
    row = tx.execute(
        "SELECT state FROM flight_seats WHERE flight = %s AND seat = %s",
        (request.flight, request.seat),
    ).fetchone()
    if row is None:
        return f"flight {request.flight} has no seat {request.seat}"
    return f"seat {request.seat} on {request.flight} is taken ({row[0]})"


def confirm_seat(tx: Executes, request: BookingRequest, booking_id: str) -> None:
    """The pending seat becomes booked."""
    if _move_seat(tx, request, BOOKED, booking_id, held_by=booking_id) != 1:
        raise CompensationFailed(
            f"seat {request.seat} on {request.flight} is not pending for booking {booking_id}"
        )


def free_seat(tx: Executes, request: BookingRequest, booking_id: str) -> None:
    """The seat held for ``booking_id`` is available again."""
    if _move_seat(tx, request, AVAILABLE, None, held_by=booking_id) != 1:
        raise CompensationFailed(
            f"cannot free seat {request.seat} on {request.flight}: it is not pending for "
            f"booking {booking_id}"
        )


# -- bookings: the booking and its confirmation ----------------------------------------------


def create_booking(tx: Executes, request: BookingRequest, booking_id: str) -> None:
    """A new booking, pending."""
    now = time.time()
    tx.execute(
        "INSERT INTO bookings (booking_id, flight, seat, customer, amount, state, created_at, "
        "updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (booking_id, request.flight, request.seat, request.customer, request.amount, PENDING,
         now, now),
    )  # fmt: skip


def _move_booking(tx: Executes, booking_id: str, target: str) -> None:
    froms = sources(BOOKING_STATES, target)
    moved = tx.execute(
        f"UPDATE bookings SET state = %s, updated_at = %s "
        f"WHERE booking_id = %s AND state IN ({_in(froms)})",
        [target, time.time(), booking_id, *froms],
    ).rowcount
    if moved != 1:
        raise CompensationFailed(f"booking {booking_id} cannot become {target}: not {froms[0]}")


def confirm_booking(tx: Executes, booking_id: str) -> None:
    """The pending booking becomes confirmed."""
    _move_booking(tx, booking_id, CONFIRMED)


def cancel_booking(tx: Executes, booking_id: str) -> None:
    """The pending booking becomes cancelled; its row stays, as a record."""
    _move_booking(tx, booking_id, CANCELLED)


def record_confirmation(tx: Executes, request: BookingRequest, booking_id: str) -> str:
    """Record the booking's confirmation, to be sent to the customer; returns its message.

    The one place a confirmed booking is announced: in 2PC it runs inside the bookings
    branch (so it exists only if everything committed), in the saga as the last step.
    """
    message = f"booking {booking_id} confirmed: {request}"
    tx.execute(
        "INSERT INTO booking_confirmations (booking_id, message, created_at) VALUES (%s, %s, %s)",
        (booking_id, message, time.time()),
    )
    return message


# -- payments: charges and refunds, each a row of its own ------------------------------------


def charge(tx: Executes, booking_id: str, amount: Decimal, idempotency_key: str) -> None:
    """Charge ``amount`` for the booking; the payment's id is the call's idempotency key."""
    _payment(tx, idempotency_key, booking_id, CHARGE, amount)


def refund(tx: Executes, booking_id: str, amount: Decimal, idempotency_key: str) -> None:
    """Refund ``amount`` to the booking's customer: a new row, the charge stays."""
    _payment(tx, idempotency_key, booking_id, REFUND, amount)


def _payment(tx: Executes, payment_id: str, booking_id: str, kind: str, amount: Decimal) -> None:
    tx.execute(
        "INSERT INTO payments (payment_id, booking_id, kind, amount, created_at) "
        "VALUES (%s, %s, %s, %s, %s)",
        (payment_id, booking_id, kind, amount, time.time()),
    )
