"""`twopc flights init | book | show` from the command line (click's runner, in-process):
bad input is one line and exit 2 with nothing changed; a booking in each mode, a refusal and
a compensation with their exit codes; what `show` reports; a reset refused while a
transaction is prepared.
"""

from __future__ import annotations

import json

import psycopg
from flightkit import Trip, trip, trip_tables

__all__ = ["trip", "trip_tables"]  # fixtures

BOOK = ("flights", "book")
BAD = [
    # arguments, the start of the one-line error
    ((*BOOK, "tp101", "1A", "alice", "10"), "Error: flight 'tp101' must be two capital"),
    ((*BOOK, "TP101", "1Z", "alice", "10"), "Error: seat '1Z' must be a row 1-99"),
    ((*BOOK, "TP101", "1A", "a b", "10"), "Error: customer 'a b' must be 1-64"),
    ((*BOOK, "TP101", "1A", "alice", "0"), "Error: amount '0' must be greater than 0"),
    ((*BOOK, "TP101", "1A", "alice", "1.234"), "Error: amount '1.234' must be a positive"),
    ((*BOOK, "--", "TP101", "1A", "alice", "-5"), "Error: amount '-5' must be a positive"),
    ((*BOOK, "TP101", "1A", "alice", "-5"), "Error: No such option '-5'"),
    ((*BOOK, "TP101", "1A", "alice", "10", "--fail-at", "dessert"),
     "Error: Invalid value for '--fail-at': 'dessert' is not one of 'seat', 'booking'"),
    ((*BOOK, "TP101", "1A", "alice", "10", "--crash-at", "never"),
     "Error: Invalid value for '--crash-at': 'never' is not one of"),
    ((*BOOK, "TP101", "1A", "alice", "10", "--mode", "saga", "--crash-at", "after-decision"),
     "Error: after-decision is a 2PC point: saga points are after-seat,"),
    ((*BOOK, "TP101", "1A", "alice", "10", "--crash-at", "after-seat"),
     "Error: after-seat is a saga point: use it with --mode saga"),
    ((*BOOK, "TP101", "1A", "alice", "10", "--crash-at", "after-prepare", "--pause-at",
      "after-prepare"), "Error: --crash-at and --pause-at cannot be combined"),
    (("flights", "show", "TP1O1"), "Error: flight 'TP1O1' must be two capital"),
    (("flights", "check", "TP1O1"), "Error: flight 'TP1O1' must be two capital"),
]  # fmt: skip


def test_bad_input_is_one_line_exit_2_and_changes_nothing(trip: Trip) -> None:
    for args, error in BAD:
        result = trip.cli(*args)
        assert (result.exit_code, result.stdout) == (2, ""), (args, result.output)
        assert result.stderr.startswith(error), (args, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
    # One of the three databases not configured: named, before anything connects.
    pairs = " ".join(f"{n}={u}" for n, u in trip.urls.items() if n != "payments")
    missing = trip.cli(*BOOK, "TP101", "1A", "alice", "10", TWOPC_PARTICIPANTS=pairs)
    assert missing.exit_code == 2
    assert missing.stderr.startswith("Error: no participant 'payments' configured: give ")
    assert trip.nothing_booked()


def test_book_in_each_mode_then_show(trip: Trip) -> None:
    booked = trip.cli(*BOOK, "TP101", "1A", "alice", "129.90", "--json")
    assert booked.exit_code == 0, booked.output
    document = json.loads(booked.stdout)
    assert (document["mode"], document["outcome"], document["protocol"]) == ("2pc", "booked", "2pc")
    alice = document["booking_id"]

    taken = trip.cli(*BOOK, "TP101", "1A", "bob", "99", "--json")
    assert taken.exit_code == 1
    assert taken.stderr == (
        "Error: booking refused: seat 1A on TP101 is taken (booked); rolled back, nothing "
        "was changed\n"
    )
    assert json.loads(taken.stdout)["outcome"] == "refused"

    declined = trip.cli(*BOOK, "TP101", "1B", "bob", "99", "--mode", "saga", "--fail-at", "charge")
    assert declined.exit_code == 1
    assert "card declined (--fail-at charge); compensated in reverse order" in declined.stderr
    lines = [line.split()[:2] for line in declined.stdout.splitlines()[2:-1]]
    assert lines == [
        ["step", "1"], ["step", "2"], ["step", "3"], ["comp", "2"], ["comp", "1"],
    ]  # fmt: skip
    bob = declined.stdout.splitlines()[1].split()[1]

    carol = trip.cli(*BOOK, "TP101", "2A", "carol", "80", "--mode", "saga")
    assert carol.exit_code == 0, carol.output
    assert carol.stdout.startswith("booked: TP101 2A for carol at 80.00\n")
    carol_id = carol.stdout.splitlines()[1].split()[1]

    shown = json.loads(trip.cli("flights", "show", "TP101", "--json").stdout)
    assert [(s["seat"], s["state"]) for s in shown["seats"] if s["state"] != "available"] == [
        ("1A", "booked"), ("2A", "booked"),
    ]  # fmt: skip
    assert {b["booking_id"]: b["state"] for b in shown["bookings"]} == {
        alice: "confirmed", bob: "cancelled", carol_id: "confirmed",
    }  # fmt: skip
    assert [(p["booking_id"], p["kind"], p["amount"]) for p in shown["payments"]] == [
        (alice, "charge", "129.90"), (carol_id, "charge", "80.00"),
    ]  # fmt: skip
    assert [c["booking_id"] for c in shown["confirmations"]] == [alice, carol_id]
    assert shown["pending"] == {"seats": [], "bookings": []}
    assert (shown["in_doubt"], shown["unfinished_sagas"]) == ([], [])
    text = trip.cli("flights", "show", "TP202").stdout
    assert text.splitlines()[:3] == ["seats:", "  TP202: 12 available; none taken", "bookings:"]


def test_init_is_idempotent_and_a_reset_waits_for_nothing_prepared(trip: Trip) -> None:
    again = trip.cli("flights", "init", "--rows", "2", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["seats_added"] == {"TP101": 0, "TP202": 0}
    assert trip.cli(*BOOK, "TP202", "2F", "dave", "10").exit_code == 0

    with psycopg.connect(trip.urls["payments"], autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO payments VALUES ('held', 'x', 'charge', 1, 0)")
        conn.execute("PREPARE TRANSACTION 'not-ours'")
    refused = trip.cli("flights", "init", "--reset")
    assert refused.exit_code == 1
    assert refused.stderr.startswith(
        "Error: reset refused, nothing dropped: prepared transactions hold locks the reset "
        "would wait for (payments holds 1)"
    )
    assert trip.taken() == {"TP202 2F": "booked"}  # nothing dropped
    trip.clear_prepared()

    reset = trip.cli("flights", "init", "--reset", "--rows", "2")
    assert reset.exit_code == 0, reset.output
    assert trip.taken() == {} and trip.bookings() == {}
