"""The booking as a choreographed saga, against real PostgreSQL, MariaDB and RabbitMQ:
booked with every service's trace in causal order; each `--fail-at` step ends in the
orchestrated saga's end states; the payments handler SIGKILLed after committing and before
acknowledging — the whole `book` process, and a payments-only `serve` process while the
other services run in another — then restarted: the booking completes with one charge and
the redelivery is absorbed; a booking unfinished at its deadline (and one accepted while
the broker is unreachable) says what it waits for, and `serve --until` finishes it;
`trace` for one booking; bad input exit 2, nothing changed.
"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from click.testing import Result
from conftest import twopc_executable
from flightkit import Trip, trip, trip_tables
from outbox_kit import prepare_queues

from twopc.flights import BookingRequest, fresh_booking_id
from twopc.flights.choreography import (
    CHARGED,
    CONFIRMED_EVENT,
    CREATED,
    NOTIFIED,
    REQUESTED,
    SEAT_BOOKED,
    SEAT_HELD,
    TOPOLOGY,
    request_booking,
)

__all__ = ["trip", "trip_tables"]  # fixtures

BOOK = ("flights", "book")
CHOREO = ("--mode", "choreography")


@pytest.fixture()
def broker(trip: Trip, broker_url: str) -> str:
    """The session's broker with the services' queues empty."""
    prepare_queues(broker_url, TOPOLOGY)
    return broker_url


def _book(trip: Trip, broker: str, seat: str, *extra: str, mode: str = "choreography") -> Result:
    return trip.cli(*BOOK, "TP101", seat, "alice", "80.00", "--mode", mode, "--json", *extra,
                    TWOPC_BROKER_URL=broker)  # fmt: skip


def _end_state(trip: Trip, booking_id: str, seat: str) -> tuple[object, ...]:
    """What a booking left: its seat's state (and whether it holds it), its booking's state,
    its payments' kinds, its confirmations."""
    state, holder = trip.seat("TP101", seat)
    bookings = trip.bookings()
    kinds = [k for _, b, k, _ in trip.payments() if b == booking_id]
    confirmed = trip.confirmations().count(booking_id)
    return (state, holder == booking_id, bookings.get(booking_id), kinds, confirmed)


def _emitted(events: list[dict[str, object]]) -> list[object]:
    return [e["event_type"] for e in events if e["direction"] == "emitted"]


def test_choreography_books_with_its_events_traced_in_order(trip: Trip, broker: str) -> None:
    result = _book(trip, broker, "1A")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    booking_id = document["booking_id"]
    assert (document["mode"], document["outcome"]) == ("choreography", "booked")
    assert _end_state(trip, booking_id, "1A") == ("booked", True, "confirmed", ["charge"], 1)
    events = document["events"]
    emitted = _emitted(events)
    assert emitted[:5] == [REQUESTED, SEAT_HELD, CREATED, CHARGED, CONFIRMED_EVENT]
    assert sorted(emitted[5:]) == sorted([SEAT_BOOKED, NOTIFIED])  # the two run in parallel
    # Every emitted event (but the request) follows the consumed event that caused it, in
    # the same service, and every event emitted was consumed by some service.
    consumed = {(e["event_id"], e["service"]): i for i, e in enumerate(events)
                if e["direction"] == "consumed"}  # fmt: skip
    for i, entry in enumerate(events):
        if entry["direction"] == "emitted" and entry["event_type"] != REQUESTED:
            assert consumed[entry["cause"], entry["service"]] < i, entry
    # Six deliveries (booking.confirmed to two services; the last events to none), seven
    # events.
    assert len(consumed) == 6 and len(events) == 13


# --fail-at STEP -> what the booking leaves (seat state, held by it, booking, payments, sent).
FAILURES = {
    "seat": ("available", False, None, [], 0),
    "booking": ("available", False, None, [], 0),
    "charge": ("available", False, "cancelled", [], 0),
    "confirm": ("available", False, "cancelled", ["charge", "refund"], 0),
    "notify": ("booked", True, "confirmed", ["charge"], 1),
}


@pytest.mark.parametrize("step", list(FAILURES))
def test_fail_at_ends_as_the_orchestrated_saga_does(trip: Trip, broker: str, step: str) -> None:
    saga = _book(trip, broker, "2A", "--fail-at", step, mode="saga")
    choreo = _book(trip, broker, "2B", "--fail-at", step)
    expected_exit = 0 if step == "notify" else 1
    assert (saga.exit_code, choreo.exit_code) == (expected_exit, expected_exit), choreo.output
    saga_id = json.loads(saga.stdout)["booking_id"]
    document = json.loads(choreo.stdout)
    choreo_id = document["booking_id"]
    assert _end_state(trip, saga_id, "2A") == FAILURES[step]
    assert _end_state(trip, choreo_id, "2B") == FAILURES[step]
    outcome = {"seat": "refused", "notify": "booked"}.get(step, "compensated")
    assert document["outcome"] == outcome
    if step != "notify":  # the refusing service's reason, from its trace
        assert choreo.stderr.startswith(f"Error: booking {choreo_id} {outcome}: "), choreo.stderr
        assert f"(--fail-at {step});" in choreo.stderr
    if step == "confirm":  # compensations walk back in reverse order: refund, cancel, free
        assert _emitted(document["events"])[-4:] == [
            "confirmation.refused", "payment.refunded", "booking.cancelled", "seat.freed",
        ]  # fmt: skip


def test_handlers_killed_after_the_charge_commit_then_restarted_book_once(
    trip: Trip, broker: str
) -> None:
    killed = subprocess.run(
        [twopc_executable(), *BOOK, "TP101", "1C", "carol", "80.00", *CHOREO,
         "--crash-at", "after-charge-commit"],
        env=trip.env() | {"TWOPC_BROKER_URL": broker}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (booking_id,) = trip.bookings()
    # The charge and its event committed; the delivery that caused them was never acked.
    assert _end_state(trip, booking_id, "1C") == ("pending", True, "pending", ["charge"], 0)
    served = trip.cli("flights", "serve", "--until", booking_id, "--deadline", "30",
                      TWOPC_BROKER_URL=broker)  # fmt: skip
    assert served.exit_code == 0, served.output
    assert _end_state(trip, booking_id, "1C") == ("booked", True, "confirmed", ["charge"], 1)
    traced = json.loads(trip.cli("flights", "trace", booking_id, "--json").stdout)
    assert traced["outcome"] == "booked"
    payments = [(e["direction"], e["event_type"]) for e in traced["events"]
                if e["service"] == "payments"]  # fmt: skip
    assert payments == [("consumed", CREATED), ("emitted", CHARGED)]  # redelivery absorbed


def test_the_payments_handler_killed_in_its_own_process_then_restarted_charges_once(
    trip: Trip, broker: str
) -> None:
    """The other services and the relay keep running in one process; the payments handler
    runs in another, SIGKILLed after committing the charge and before acknowledging."""
    env = trip.env() | {"TWOPC_BROKER_URL": broker}
    serve = [twopc_executable(), "flights", "serve"]
    others = subprocess.Popen(
        [*serve, "--service", "seats", "--service", "bookings", "--service", "notifier"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    payments = subprocess.Popen(
        [*serve, "--service", "payments", "--no-relay", "--crash-at", "after-charge-commit"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    participants = trip.participants()
    try:
        booking_id = fresh_booking_id()
        with participants["bookings"].local_transaction() as tx:
            request_booking(tx, booking_id, BookingRequest.parse("TP101", "2C", "dana", "80.00"),
                            None)  # fmt: skip
        assert payments.wait(timeout=60) == -signal.SIGKILL, payments.communicate()
        assert [k for _, b, k, _ in trip.payments() if b == booking_id] == ["charge"]
        # Restarted: it runs until the booking is finished, then until its queue is idle.
        until = trip.cli("flights", "serve", "--service", "payments", "--no-relay", "--until",
                         booking_id, "--json", TWOPC_BROKER_URL=broker)  # fmt: skip
        assert until.exit_code == 0, until.output
        idle = trip.cli("flights", "serve", "--service", "payments", "--no-relay",
                        "--idle-exit", "1", "--json", TWOPC_BROKER_URL=broker)  # fmt: skip
        assert idle.exit_code == 0, idle.output
        handled = [json.loads(r.stdout)["handled"]["payments"] for r in (until, idle)]
        assert sum(h["applied"] for h in handled) == 0, handled  # nothing new to charge
        assert sum(h["duplicates"] for h in handled) == 1, handled  # the redelivery
        assert _end_state(trip, booking_id, "2C") == ("booked", True, "confirmed", ["charge"], 1)
    finally:
        others.send_signal(signal.SIGTERM)
        assert others.wait(timeout=30) == 0, others.communicate()
        if payments.poll() is None:
            payments.kill()
            payments.wait(timeout=10)
        for participant in participants.values():
            participant.close()


def test_unfinished_at_the_deadline_says_what_waits_then_serve_finishes_it(
    trip: Trip, broker: str
) -> None:
    cut = _book(trip, broker, "1F", "--deadline", "0.1")
    assert cut.exit_code == 3, cut.output
    (booking_id,) = [b for (b,) in trip.query("bookings", "SELECT DISTINCT booking_id FROM "
                                              "booking_events")]  # fmt: skip
    assert cut.stderr.startswith(f"Error: booking {booking_id} unfinished at the deadline: "
                                 "waiting for the ")  # fmt: skip
    assert f"`twopc flights serve --until {booking_id}` finishes it" in cut.stderr
    assert json.loads(cut.stdout)["outcome"] == "unfinished"
    # The broker unreachable: the request is accepted into the outbox all the same; the
    # error says so once, in its one line, without the URL's password.
    away = trip.cli(*BOOK, "TP101", "2D", "eve", "80.00", *CHOREO, "--deadline", "1", "--json",
                    "--broker-url", "amqp://user:s3cret@127.0.0.1:1/")  # fmt: skip
    assert away.exit_code == 3, away.output
    assert away.stderr.count("\n") == 1 and "s3cret" not in away.output, away.stderr
    assert "waiting for the seats service to hold the seat; broker amqp://***@127.0.0.1:1/ " \
           "unavailable" in away.stderr  # fmt: skip
    assert "(handler seats, handler bookings, handler payments, handler notifier, relay)" \
           in away.stderr  # fmt: skip
    eve = json.loads(away.stdout)["booking_id"]
    reset = trip.cli("flights", "init", "--reset")  # would pull the rows from under them
    assert reset.exit_code == 1, reset.output
    assert reset.stderr.startswith("Error: reset refused, nothing dropped: choreographed "
                                   "bookings' events wait in the outboxes (")  # fmt: skip
    assert "bookings holds" in reset.stderr
    for pending in (booking_id, eve):
        served = trip.cli("flights", "serve", "--until", pending, "--json",
                          TWOPC_BROKER_URL=broker)  # fmt: skip
        assert served.exit_code == 0, served.output
        assert json.loads(served.stdout)["outcome"] == "booked"
    assert _end_state(trip, booking_id, "1F") == ("booked", True, "confirmed", ["charge"], 1)
    assert _end_state(trip, eve, "2D") == ("booked", True, "confirmed", ["charge"], 1)


def test_trace_tells_one_booking_from_the_three_databases(trip: Trip, broker: str) -> None:
    booking_id = json.loads(_book(trip, broker, "1D", "--fail-at", "charge").stdout)["booking_id"]
    other = _book(trip, broker, "1E")
    assert other.exit_code == 0, other.output
    result = trip.cli("flights", "trace", booking_id)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"booking {booking_id}: compensated"
    steps = [line.split(maxsplit=4)[1:] for line in lines[2:12]]
    assert steps == [
        ["front", "emitted", "booking.requested"],
        ["seats", "consumed", "booking.requested"],
        ["seats", "emitted", "seat.held"],
        ["bookings", "consumed", "seat.held"],
        ["bookings", "emitted", "booking.created"],
        ["payments", "consumed", "booking.created"],
        ["payments", "emitted", "payment.declined", "(card declined (--fail-at charge))"],
        ["bookings", "consumed", "payment.declined"],
        ["bookings", "emitted", "booking.cancelled"],
        ["seats", "consumed", "booking.cancelled"],
    ]
    assert lines[12].split()[1:] == ["seats", "emitted", "seat.freed"]
    assert lines[13:] == [
        "  seat:         TP101 1D available",
        "  booking:      TP101 1D alice 80.00 cancelled",
    ]
    document = json.loads(trip.cli("flights", "trace", booking_id, "--json").stdout)
    assert (document["unpublished"], document["parked"], document["payments"]) == ([], [], [])
    missing = trip.cli("flights", "trace", "bk-" + "0" * 20)
    assert missing.exit_code == 1
    assert missing.stderr.startswith("Error: no booking bk-00000000000000000000 in the flights")


BAD = [
    ((*BOOK, "TP101", "1A", "alice", "x", *CHOREO), "Error: amount 'x' must be a positive"),
    ((*BOOK, "TP101", "1A", "alice", "10", *CHOREO, "--pause-at", "after-seat"),
     "Error: --pause-at is not available with --mode choreography"),
    ((*BOOK, "TP101", "1A", "alice", "10", *CHOREO, "--crash-at", "after-compensation"),
     "Error: after-compensation is no choreography point: those are after-seat,"),
    ((*BOOK, "TP101", "1A", "alice", "10", *CHOREO, "--broker-url", "http://h/"),
     "Error: broker URL 'http://h/' must start with amqp://"),
    ((*BOOK, "TP101", "1A", "alice", "10", *CHOREO, "--deadline", "0"),
     "Error: Invalid value for '--deadline'"),
    (("flights", "trace", "bk-1"), "Error: booking 'bk-1' must look like bk-<20 hex digits>"),
    (("flights", "serve", "--until", "x"), "Error: booking 'x' must look like bk-<20 hex"),
]  # fmt: skip


def test_bad_input_is_one_line_exit_2_and_changes_nothing(trip: Trip, broker: str) -> None:
    for args, error in BAD:
        result = trip.cli(*args, TWOPC_BROKER_URL=broker)
        assert (result.exit_code, result.stdout) == (2, ""), (args, result.output)
        assert result.stderr.startswith(error), (args, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
    no_broker = trip.cli(*BOOK, "TP101", "1A", "alice", "10", *CHOREO)
    assert no_broker.exit_code == 2
    assert no_broker.stderr.startswith("Error: no broker configured: set --broker-url")
    assert trip.nothing_booked()
    assert trip.query("bookings", "SELECT COUNT(*) FROM outbox") == [(0,)]
