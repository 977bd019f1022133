"""Making the booking's tables (``twopc flights init``) and reading them back (``show``).

``init`` creates each database's missing tables (:mod:`flights.tables`), the saga engine's
``saga_steps``, the coordinator's outcome markers, the outbox and the consumers' record,
and seeds the demo flights' seats; with ``reset`` it first drops the booking's tables,
refused (nothing dropped) while any of the three databases holds a prepared transaction,
whose locks the drop would wait for.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from twopc.flights.booking import AVAILABLE, PENDING
from twopc.flights.tables import (
    BOOKINGS,
    FLIGHTS,
    PAYMENTS,
    flights_ddl,
    flights_drop_ddl,
)
from twopc.outbox import ensure_consumed_table, ensure_outbox_tables
from twopc.participants import Participant, ParticipantError
from twopc.saga import ensure_saga_tables

DEMO_FLIGHTS = ("TP101", "TP202")
SEAT_LETTERS = "ABCDEF"


class ResetRefused(ParticipantError):
    """A reset was refused: prepared transactions hold locks on these databases."""


def seats_of(flights: Sequence[str], rows: int) -> list[tuple[str, str]]:
    """Every (flight, seat) of ``flights`` with ``rows`` rows of A-F."""
    return [
        (flight, f"{row}{letter}")
        for flight in flights
        for row in range(1, rows + 1)
        for letter in SEAT_LETTERS
    ]


def init_flights(participants: dict[str, Participant], *, rows: int, reset: bool) -> dict[str, int]:
    """Create the tables in the three databases and seed the demo flights' missing seats;
    returns how many seats were added per flight."""
    if reset:  # all three checked before any is dropped: a refusal leaves all as they were
        refuse_while_prepared(participants.values())
    for name, participant in participants.items():
        with participant.local_transaction() as local:
            if reset:
                local.execute(flights_drop_ddl(name))
            for statement in flights_ddl(name, participant.url.backend):
                local.execute(statement)
        ensure_saga_tables(participant)
        participant.ensure_outcome_table()
        ensure_outbox_tables(participant)  # the choreography's events and their consumers
        ensure_consumed_table(participant)
    return seed_seats(participants[FLIGHTS], seats_of(DEMO_FLIGHTS, rows))


def seed_seats(participant: Participant, seats: list[tuple[str, str]]) -> dict[str, int]:
    """Add the missing ones of ``seats`` (flight, seat), available; how many per flight."""
    added = dict.fromkeys(sorted({flight for flight, _ in seats}), 0)
    with participant.local_transaction() as local:
        found = local.execute("SELECT flight, seat FROM flight_seats").fetchall()
        existing = {(str(flight), str(seat)) for flight, seat in found}
        missing = [seat for seat in seats if seat not in existing]
        if missing:
            values = ", ".join(["(%s, %s, %s, %s)"] * len(missing))
            now = time.time()
            local.execute(
                f"INSERT INTO flight_seats (flight, seat, state, updated_at) VALUES {values}",
                [v for flight, seat in missing for v in (flight, seat, AVAILABLE, now)],
            )
    for flight, _ in missing:
        added[flight] += 1
    return added


def refuse_while_prepared(participants: Iterable[Participant]) -> None:
    """:class:`ResetRefused` when any of ``participants`` holds a prepared transaction."""
    held = {p.name: len(p.prepared_branches()) for p in participants}
    found = {name: n for name, n in held.items() if n}
    if found:
        where = ", ".join(f"{name} holds {n}" for name, n in found.items())
        raise ResetRefused(
            f"reset refused, nothing dropped: prepared transactions hold locks the reset "
            f"would wait for ({where}); see them with `twopc in-doubt`, finish them with "
            "`twopc recover`, then retry"
        )


# -- reading the three databases ----------------------------------------------------------------


@dataclass
class FlightsView:
    """What the three databases hold for one flight (or all): seats, bookings, payments,
    confirmations, each row as a dict."""

    seats: list[dict[str, Any]] = field(default_factory=list)
    bookings: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)
    confirmations: list[dict[str, Any]] = field(default_factory=list)

    def pending(self) -> dict[str, list[str]]:
        """Seats and bookings readers see as pending (an unfinished saga's)."""
        return {
            "seats": [f"{s['flight']} {s['seat']}" for s in self.seats if s["state"] == PENDING],
            "bookings": [b["booking_id"] for b in self.bookings if b["state"] == PENDING],
        }

    def to_json(self) -> dict[str, Any]:
        def plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: _plain(v) for k, v in row.items()} for row in rows]

        return {
            "seats": plain(self.seats),
            "bookings": plain(self.bookings),
            "payments": plain(self.payments),
            "confirmations": plain(self.confirmations),
            "pending": self.pending(),
        }


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def _rows(
    participant: Participant, table: str, columns: Sequence[str], where: str, params: Sequence[Any]
) -> list[dict[str, Any]]:
    """``columns`` of ``table``'s rows matching ``where`` (bound ``params``), as dicts."""
    query = f"SELECT {', '.join(columns)} FROM {table} {where}"
    with participant.local_transaction() as local:
        found = local.execute(query, params).fetchall()
    return [dict(zip(columns, row, strict=True)) for row in found]


def read_flights(participants: dict[str, Participant], flight: str | None = None) -> FlightsView:
    """The seats, bookings, payments and confirmations of ``flight`` (None: every flight)."""
    where, params = ("WHERE flight = %s", [flight]) if flight else ("", [])
    seat_columns = ("flight", "seat", "state", "booking_id")
    seats = _rows(participants[FLIGHTS], "flight_seats", seat_columns, where, params)
    seats.sort(key=lambda s: (s["flight"], int(s["seat"][:-1]), s["seat"][-1]))
    booking_columns = ("booking_id", "flight", "seat", "customer", "amount", "state")
    bookings = _rows(
        participants[BOOKINGS], "bookings", booking_columns,
        f"{where} ORDER BY created_at, booking_id", params,
    )  # fmt: skip
    view = FlightsView(seats, bookings)
    ids = [b["booking_id"] for b in bookings]
    if flight and not ids:
        return view
    # Payments and confirmations of this flight's bookings (placeholders only; ids bound).
    of = f"WHERE booking_id IN ({', '.join(['%s'] * len(ids))})" if flight else ""
    keys = ids if flight else []
    view.payments = _rows(
        participants[PAYMENTS], "payments", ("payment_id", "booking_id", "kind", "amount"),
        f"{of} ORDER BY created_at, payment_id", keys,
    )  # fmt: skip
    view.confirmations = _rows(
        participants[BOOKINGS], "booking_confirmations", ("booking_id", "message"),
        f"{of} ORDER BY created_at, booking_id", keys,
    )  # fmt: skip
    return view
