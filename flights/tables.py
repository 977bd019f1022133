"""The flight booking's tables, per database, in one place.

- ``flights``: ``flight_seats`` — one row per seat, its state and the booking holding it;
- ``bookings``: ``bookings`` — one row per booking, kept when cancelled — and
  ``booking_confirmations``, the confirmation sent once a booking is confirmed;
- ``payments``: ``payments`` — charges and refunds, each a row of its own, never updated
  or deleted; ``payment_id`` is the idempotency key the payment call carried;
- in each: ``booking_events``, the service's trace of the events it consumed and emitted
  when the booking is choreographed (:mod:`flights.choreography`).

The statements are plain SQL both PostgreSQL and MySQL/MariaDB speak (MySQL gets
``ENGINE=InnoDB``), so any of the three databases may live on either server. Made by
``twopc flights init``, and made sure of before a booking saga's first step on a database.
"""

from __future__ import annotations

from collections.abc import Mapping

from twopc.participants import Participant
from twopc.saga import ensure_tables

FLIGHTS, BOOKINGS, PAYMENTS = "flights", "bookings", "payments"
#: Each service's record of the events it consumed and emitted (the choreography's trace).
TRACE_TABLE = "booking_events"
_TRACE = (
    "booking_id VARCHAR(64) NOT NULL, service VARCHAR(16) NOT NULL, "
    "direction VARCHAR(8) NOT NULL, event_id VARCHAR(36) NOT NULL, "
    "event_type VARCHAR(64) NOT NULL, cause VARCHAR(36), reason TEXT, "
    "recorded_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (booking_id, service, direction, event_id)"
)
#: The participants a booking runs on, in the order a 2PC booking enlists them.
DATABASES = (FLIGHTS, BOOKINGS, PAYMENTS)

_COLUMNS: Mapping[str, Mapping[str, str]] = {
    FLIGHTS: {
        "flight_seats": (
            "flight VARCHAR(8) NOT NULL, seat VARCHAR(4) NOT NULL, state VARCHAR(16) NOT NULL, "
            "booking_id VARCHAR(64), updated_at DOUBLE PRECISION NOT NULL, "
            "PRIMARY KEY (flight, seat)"
        ),
        TRACE_TABLE: _TRACE,
    },
    BOOKINGS: {
        "bookings": (
            "booking_id VARCHAR(64) NOT NULL PRIMARY KEY, flight VARCHAR(8) NOT NULL, "
            "seat VARCHAR(4) NOT NULL, customer VARCHAR(64) NOT NULL, "
            "amount NUMERIC(20, 2) NOT NULL, state VARCHAR(16) NOT NULL, "
            "created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL"
        ),
        "booking_confirmations": (
            "booking_id VARCHAR(64) NOT NULL PRIMARY KEY, message TEXT NOT NULL, "
            "created_at DOUBLE PRECISION NOT NULL"
        ),
        TRACE_TABLE: _TRACE,
    },
    PAYMENTS: {
        "payments": (
            "payment_id VARCHAR(160) NOT NULL PRIMARY KEY, booking_id VARCHAR(64) NOT NULL, "
            "kind VARCHAR(8) NOT NULL, amount NUMERIC(20, 2) NOT NULL, "
            "created_at DOUBLE PRECISION NOT NULL"
        ),
        TRACE_TABLE: _TRACE,
    },
}


def table_names(database: str) -> list[str]:
    """The booking's tables in ``database`` (flights, bookings or payments)."""
    return list(_COLUMNS[database])


def flights_ddl(database: str, backend: str) -> list[str]:
    """The statements creating ``database``'s missing tables on a ``pg`` or ``mysql`` server."""
    engine = "" if backend == "pg" else " ENGINE=InnoDB"
    return [
        f"CREATE TABLE IF NOT EXISTS {table} ({columns}){engine}"
        for table, columns in _COLUMNS[database].items()
    ]


def flights_drop_ddl(database: str) -> str:
    """One statement dropping ``database``'s tables (for ``twopc flights init --reset``)."""
    return f"DROP TABLE IF EXISTS {', '.join(table_names(database))}"


def ensure_flight_tables(participant: Participant) -> None:
    """Create the booking's tables in the database ``participant`` names, if missing (the
    booking saga's ``setup``)."""
    database = participant.name
    probe = f"SELECT 1 FROM {', '.join(table_names(database))} WHERE 1 = 0"
    ensure_tables(participant, probe, flights_ddl(database, participant.url.backend))
