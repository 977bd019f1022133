"""The flight booking's test servers: the dev servers' flights, payments (PostgreSQL) and
bookings (MariaDB) databases as participants, and readers of what each database holds.

The tables are made once per test module (``init_flights``); each test starts from every
seat available, no bookings, payments, confirmations or idempotency keys, and nothing
prepared in the three databases.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from twopc.cli import main
from twopc.devserver import DevServers, DevState
from twopc.flights import BOOKINGS, DATABASES, FLIGHTS, PAYMENTS, init_flights
from twopc.flights.invariants import check_flights
from twopc.participants import DatabaseURL, Participant, participant_for

ROWS = 2  # seats 1A-2F on TP101 and TP202
# The choreography's trace, outboxes and consumers' records, in each of the three databases.
_EVENTS = [
    "DELETE FROM booking_events",
    "DELETE FROM outbox",
    "DELETE FROM outbox_parked",
    "DELETE FROM consumed_events",
]
_CLEAR = {
    FLIGHTS: [
        "UPDATE flight_seats SET state = 'available', booking_id = NULL",
        "DELETE FROM saga_steps",
        "DELETE FROM twopc_outcomes",
        *_EVENTS,
    ],
    BOOKINGS: [
        "DELETE FROM bookings",
        "DELETE FROM booking_confirmations",
        "DELETE FROM saga_steps",
        "DELETE FROM twopc_outcomes",
        *_EVENTS,
    ],
    PAYMENTS: [
        "DELETE FROM payments",
        "DELETE FROM saga_steps",
        "DELETE FROM twopc_outcomes",
        *_EVENTS,
    ],
}


@dataclass
class Trip:
    """Handles on the three databases, and what they hold."""

    servers: DevServers
    state: DevState
    home: Path
    connections: dict[str, Any] = field(default_factory=dict)

    @property
    def urls(self) -> dict[str, str]:
        return {
            FLIGHTS: self.state.pg.url_of("flights"),
            BOOKINGS: self.state.mysql.url_of("bookings"),
            PAYMENTS: self.state.pg.url_of("payments"),
        }

    def participants(self, lock_wait: float = 5.0) -> dict[str, Participant]:
        return {
            name: participant_for(name, DatabaseURL.parse(url), lock_wait=lock_wait)
            for name, url in self.urls.items()
        }

    def query(self, name: str, text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``text`` in database ``name``, autocommit (on one connection per database,
        kept for the test)."""
        conn = self._connection(name)
        if name != BOOKINGS:
            cursor = conn.execute(text, params)
            return cursor.fetchall() if cursor.description else []
        with conn.cursor() as cursor:
            cursor.execute(text, params)
            return list(cursor.fetchall())

    def _connection(self, name: str) -> Any:
        if name not in self.connections:
            if name != BOOKINGS:
                self.connections[name] = psycopg.connect(self.urls[name], autocommit=True)
            else:
                info = self.state.mysql
                self.connections[name] = pymysql.connect(
                    host=info.host, port=info.port, user=info.user, database="bookings",
                    autocommit=True,
                )  # fmt: skip
        return self.connections[name]

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()
        self.connections.clear()

    # -- what the databases hold ------------------------------------------------------------

    def seat(self, flight: str, seat: str) -> tuple[str, str | None]:
        """(state, booking id) of one seat."""
        rows = self.query(
            FLIGHTS,
            "SELECT state, booking_id FROM flight_seats WHERE flight = %s AND seat = %s",
            (flight, seat),
        )
        return rows[0][0], rows[0][1]

    def taken(self) -> dict[str, str]:
        """Every seat not available: 'TP101 1A' -> state."""
        rows = self.query(FLIGHTS, "SELECT flight, seat, state FROM flight_seats")
        return {f"{f} {s}": state for f, s, state in rows if state != "available"}

    def bookings(self) -> dict[str, str]:
        """booking id -> state."""
        return dict(self.query(BOOKINGS, "SELECT booking_id, state FROM bookings"))

    def payments(self) -> list[tuple[str, str, str, str]]:
        """(payment id, booking id, kind, amount), in the order they were made."""
        rows = self.query(
            PAYMENTS,
            "SELECT payment_id, booking_id, kind, amount FROM payments ORDER BY created_at",
        )
        return [(p, b, k, str(a)) for p, b, k, a in rows]

    def confirmations(self) -> list[str]:
        return [b for (b,) in self.query(BOOKINGS, "SELECT booking_id FROM booking_confirmations")]

    def idempotency_keys(self) -> dict[str, str]:
        """database:key -> stored status, in the three databases."""
        found = {}
        for name in DATABASES:
            for key, result in self.query(name, "SELECT idempotency_key, result FROM saga_steps"):
                found[f"{name}:{key}"] = json.loads(result)["status"]
        return found

    def nothing_booked(self) -> bool:
        """No trace of any booking anywhere, and nothing prepared."""
        return (
            self.taken() == {} and self.bookings() == {} and self.payments() == []
            and self.confirmations() == [] and self.prepared() == []
        )  # fmt: skip

    def violations(self) -> list[str]:
        """The booking's invariants broken in the three databases (every rule, ``settled``
        included: nothing pending, prepared or unfinished in this test's home)."""
        participants = self.participants()
        try:
            return [str(v) for v in check_flights(participants, home=self.home)]
        finally:
            for participant in participants.values():
                participant.close()

    def prepared(self) -> list[str]:
        """Prepared transactions in the flights and payments databases and on MariaDB."""
        found = [
            f"pg:{database}:{gid}"
            for gid, database in self.query(FLIGHTS, "SELECT gid, database FROM pg_prepared_xacts")
        ]
        return found + [f"mysql:{row[3]!r}" for row in self.query(BOOKINGS, "XA RECOVER")]

    # -- the CLI -----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The three databases as TWOPC_PARTICIPANTS, and this test's home; nothing else."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOPC_")}
        pairs = " ".join(f"{name}={url}" for name, url in self.urls.items())
        return env | {"TWOPC_HOME": str(self.home), "TWOPC_PARTICIPANTS": pairs}

    def cli(self, *args: str, **env: str) -> Result:
        """``twopc ARGS`` run in this process (click's runner), configured by :meth:`env`
        (and ``env``)."""
        unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("TWOPC_")}
        ours = {k: v for k, v in self.env().items() if k.startswith("TWOPC_")} | env
        return CliRunner().invoke(main, list(args), env=unset | ours, catch_exceptions=False)

    # -- a clean slate -----------------------------------------------------------------------

    def clear(self) -> None:
        self.clear_prepared()
        for name, statements in _CLEAR.items():
            for statement in statements:
                self.query(name, statement)

    def clear_prepared(self) -> None:
        """Roll back whatever a test left prepared in the three databases."""
        for name in (FLIGHTS, PAYMENTS):
            gids = self.query(
                name, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
            )
            for (gid,) in gids:
                self.query(name, sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while rows := self.query(BOOKINGS, "XA RECOVER"):
            for fmt, glen, _, data in rows:
                xid = f"X'{data[: int(glen)].hex()}',X'{data[int(glen) :].hex()}',{int(fmt)}"
                try:
                    self.query(BOOKINGS, f"XA ROLLBACK {xid}")
                except pymysql.err.OperationalError as err:
                    if err.args[0] != 1397 or time.monotonic() > deadline:
                        raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def trip_tables(dev_servers: DevServers, tmp_path_factory: pytest.TempPathFactory) -> DevState:
    """The booking's tables, made once per module."""
    state = dev_servers.up()
    handle = Trip(dev_servers, state, tmp_path_factory.mktemp("trip"))
    handle.clear_prepared()
    participants = handle.participants()
    init_flights(participants, rows=ROWS, reset=True)
    for participant in participants.values():
        participant.close()
    handle.close()
    return state


@pytest.fixture()
def trip(dev_servers: DevServers, trip_tables: DevState, tmp_path: Path) -> Iterator[Trip]:
    handle = Trip(dev_servers, dev_servers.up(), tmp_path / "home")
    handle.clear()
    yield handle
    handle.state = dev_servers.up()
    handle.clear_prepared()
    handle.close()
