"""A flight booking's request and the states its records go through: the pure rules.

A :class:`BookingRequest` is one customer's request for one seat on one flight at a price,
parsed and validated before anything connects. The states a seat and a booking may move
between are tables (:data:`SEAT_STATES`, :data:`BOOKING_STATES`); every change of state in
the databases is an ``UPDATE … WHERE state IN (<the states it may come from>)``, so a row in
any other state is left alone and the change says so by touching no row.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

# Explicit ASCII classes: \d would also match other scripts' digits.
_FLIGHT = re.compile(r"[A-Z0-9]{2}[0-9]{1,4}")
_SEAT = re.compile(r"[1-9][0-9]?[A-K]")
_CUSTOMER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_AMOUNT = re.compile(r"[0-9]{1,18}(\.[0-9]{1,2})?")
_BOOKING_ID = re.compile(r"bk-[0-9a-f]{20}")

# A seat: free, held for a booking that is not confirmed yet (the saga's semantic lock),
# or booked. A booking: pending until confirmed, or cancelled (the row is kept as a record).
AVAILABLE, PENDING, BOOKED = "available", "pending", "booked"
CONFIRMED, CANCELLED = "confirmed", "cancelled"
#: state -> the states it may move to.
SEAT_STATES: Mapping[str, frozenset[str]] = {
    AVAILABLE: frozenset({PENDING}),
    PENDING: frozenset({BOOKED, AVAILABLE}),
    BOOKED: frozenset(),
}
BOOKING_STATES: Mapping[str, frozenset[str]] = {
    PENDING: frozenset({CONFIRMED, CANCELLED}),
    CONFIRMED: frozenset(),
    CANCELLED: frozenset(),
}
# Payments are never updated or deleted: a charge, and a refund as a row of its own.
CHARGE, REFUND = "charge", "refund"

# The steps of a booking, in order, in both modes; --fail-at names one of them.
SEAT, BOOKING, PAY, CONFIRM, NOTIFY = "seat", "booking", "charge", "confirm", "notify"
STEPS = (SEAT, BOOKING, PAY, CONFIRM, NOTIFY)
#: The steps up to the saga's pivot: a failure there is undone (rolled back, compensated).
BEFORE_PIVOT = (SEAT, BOOKING, PAY, CONFIRM)
#: What a failure injected at each step stands for.
FAILURES = {
    SEAT: "seat taken",
    BOOKING: "booking refused: the customer may not book",
    PAY: "card declined",
    CONFIRM: "the fare expired before the booking was confirmed",
    NOTIFY: "notification service down",
}
#: How long the notification service stays down when a saga is told to fail there: its
#: retries are watched failing, then succeeding (the step is after the pivot).
OUTAGE_SECONDS = 1.5


class InvalidBooking(ValueError):
    """Malformed booking input (flight, seat, customer, amount, step): nothing attempted."""


class BookingRefused(Exception):
    """A business rule refused the booking (the seat is taken, the card declined). Raised
    inside a 2PC global transaction, so every branch rolls back."""


class InvalidTransition(ValueError):
    """A state change the tables do not allow."""


@dataclass(frozen=True)
class BookingRequest:
    """One seat on one flight for one customer at ``amount``, validated."""

    flight: str
    seat: str
    customer: str
    amount: Decimal

    @classmethod
    def parse(cls, flight: str, seat: str, customer: str, amount: str) -> BookingRequest:
        """The request the four words describe; :class:`InvalidBooking` naming the first
        bad one."""
        if not _FLIGHT.fullmatch(flight):
            raise InvalidBooking(
                f"flight {flight!r} must be two capital letters or digits and 1-4 digits, "
                "like TP101"
            )
        if not _SEAT.fullmatch(seat):
            raise InvalidBooking(f"seat {seat!r} must be a row 1-99 and a letter A-K, like 12C")
        if not _CUSTOMER.fullmatch(customer):
            raise InvalidBooking(
                f"customer {customer!r} must be 1-64 of [A-Za-z0-9._@+-], starting with a "
                "letter or digit"
            )
        return cls(flight, seat, customer, parse_amount(amount))

    def params(self) -> dict[str, str]:
        """As saga parameters (JSON values)."""
        return {
            "flight": self.flight,
            "seat": self.seat,
            "customer": self.customer,
            "amount": str(self.amount),
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BookingRequest:
        """The request saga parameters hold; :class:`InvalidBooking` (or ``KeyError``)."""
        return cls.parse(
            str(params["flight"]), str(params["seat"]), str(params["customer"]),
            str(params["amount"]),
        )  # fmt: skip

    def __str__(self) -> str:
        return f"{self.flight} {self.seat} for {self.customer} at {self.amount}"


def parse_amount(text: str) -> Decimal:
    """An exact decimal amount > 0 with at most 2 places: ASCII digits only, nothing
    around them (no spaces, sign or exponent)."""
    if not _AMOUNT.fullmatch(text):
        raise InvalidBooking(
            f"amount {text!r} must be a positive decimal with at most 2 places, like 129.90"
        )
    amount = Decimal(text)
    if amount <= 0:
        raise InvalidBooking(f"amount {text!r} must be greater than 0")
    return amount.quantize(Decimal("0.01"))


def parse_step(text: str | None) -> str | None:
    """The step ``--fail-at`` names (None for none); :class:`InvalidBooking` when unknown."""
    if text is None or text in STEPS:
        return text
    raise InvalidBooking(f"unknown step {text!r}: the steps are {', '.join(STEPS)}")


def fresh_booking_id() -> str:
    """A new booking id, ``bk-<20 hex digits>`` (also the saga id of a booking saga)."""
    return f"bk-{secrets.token_hex(10)}"


def is_booking_id(text: str) -> bool:
    return _BOOKING_ID.fullmatch(text) is not None


def is_flight(text: str) -> bool:
    return _FLIGHT.fullmatch(text) is not None


def sources(states: Mapping[str, frozenset[str]], target: str) -> tuple[str, ...]:
    """The states a record may move to ``target`` from (sorted); :class:`InvalidTransition`
    when none may, or ``target`` is no state of the table."""
    if target not in states:
        raise InvalidTransition(f"{target!r} is not a state (states: {', '.join(states)})")
    found = tuple(sorted(s for s, targets in states.items() if target in targets))
    if not found:
        raise InvalidTransition(f"no state moves to {target!r}")
    return found


def allowed(states: Mapping[str, frozenset[str]], current: str, target: str) -> bool:
    """Whether a record in ``current`` may move to ``target``."""
    return target in states.get(current, frozenset())
