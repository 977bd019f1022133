"""The flight booking: a seat (``flights``), a booking (``bookings``) and a payment
(``payments``) in three databases, and a confirmation that cannot be undone — on both engines.

:func:`book_with_2pc` books as one global transaction over the three databases (the
confirmation recorded inside the bookings branch, so it exists only if everything
committed); :data:`BOOKING_SAGA` books as a saga (seat and booking pending, the charge keyed
and retried under one idempotency key, confirmation as the pivot, the notification last),
compensated in reverse order when a step before the pivot is refused;
:mod:`flights.choreography` books it with no orchestrator, each service's handler reacting
to the event before it (:mod:`flights.services` runs them and reads a booking's trace). All
run the same changes (:mod:`flights.changes`); the request and the states' rules are pure
(:mod:`flights.booking`); each database's tables are in :mod:`flights.tables`; what must
hold of the three databases once every booking has finished is :mod:`flights.invariants`.
"""

from twopc.flights.booking import (
    AVAILABLE,
    BOOKED,
    BOOKING_STATES,
    CANCELLED,
    CHARGE,
    CONFIRMED,
    FAILURES,
    PENDING,
    REFUND,
    SEAT_STATES,
    STEPS,
    BookingRefused,
    BookingRequest,
    InvalidBooking,
    InvalidTransition,
    allowed,
    fresh_booking_id,
    parse_amount,
    parse_step,
    sources,
)
from twopc.flights.changes import record_confirmation
from twopc.flights.invariants import RULES, Violation, check_flights, violations
from twopc.flights.saga import (
    BOOKING_POINTS,
    BOOKING_SAGA,
    BOOKING_SAGA_NAME,
    PAYMENT_TIMEOUT,
    STEP_NUMBERS,
    BookingPoint,
    ServiceUnavailable,
    booking_params,
    request_of,
)
from twopc.flights.schema import (
    DEMO_FLIGHTS,
    FlightsView,
    ResetRefused,
    init_flights,
    read_flights,
    seats_of,
)
from twopc.flights.tables import (
    BOOKINGS,
    DATABASES,
    FLIGHTS,
    PAYMENTS,
    ensure_flight_tables,
    flights_ddl,
    flights_drop_ddl,
    table_names,
)
from twopc.flights.two_phase import Booked, book_with_2pc, payment_key

__all__ = [
    "AVAILABLE",
    "BOOKED",
    "BOOKINGS",
    "BOOKING_POINTS",
    "BOOKING_SAGA",
    "BOOKING_SAGA_NAME",
    "BOOKING_STATES",
    "CANCELLED",
    "CHARGE",
    "CONFIRMED",
    "DATABASES",
    "DEMO_FLIGHTS",
    "FAILURES",
    "FLIGHTS",
    "PAYMENTS",
    "PAYMENT_TIMEOUT",
    "PENDING",
    "REFUND",
    "RULES",
    "SEAT_STATES",
    "STEPS",
    "STEP_NUMBERS",
    "Booked",
    "BookingPoint",
    "BookingRefused",
    "BookingRequest",
    "FlightsView",
    "InvalidBooking",
    "InvalidTransition",
    "ResetRefused",
    "ServiceUnavailable",
    "Violation",
    "allowed",
    "book_with_2pc",
    "booking_params",
    "check_flights",
    "ensure_flight_tables",
    "flights_ddl",
    "flights_drop_ddl",
    "fresh_booking_id",
    "init_flights",
    "parse_amount",
    "parse_step",
    "payment_key",
    "read_flights",
    "record_confirmation",
    "request_of",
    "seats_of",
    "sources",
    "table_names",
    "violations",
]
