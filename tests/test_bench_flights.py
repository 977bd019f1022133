"""``twopc bench flights``: the flight booking in 2PC and as a saga, side by side on the real
servers, a share of the bookings failing at the charge; the invariants hold after each run."""

from __future__ import annotations

import json

import pytest
from flightkit import Trip, trip, trip_tables

from twopc.benchmarks.bench_flights import seen

__all__ = ["trip", "trip_tables"]  # fixtures


def test_both_modes_book_undo_their_failures_and_keep_the_invariants(trip: Trip) -> None:
    result = trip.cli("bench", "flights", "--bookings", "5", "--workers", "1", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert (figures["bookings"], figures["fail_share"], figures["fail_at"]) == (5, 0.2, "charge")
    runs = {run["mode"]: run for run in figures["runs"]}
    assert sorted(runs) == ["2pc", "saga"] and len(figures["runs"]) == 2
    assert runs["2pc"]["outcomes"] == {"booked": 4, "rolled back": 1}
    assert runs["saga"]["outcomes"] == {"booked": 4, "compensated": 1}
    for run in runs.values():
        assert (run["booked"], run["undone"], run["violations"]) == (4, 1, []), run
        assert run["bookings_per_s"] > 0 and run["p50_ms"] <= run["p99_ms"]
        assert run["reads"] >= run["dirty_reads"] >= 0
        assert run["reads"] >= run["torn_reads"] >= run["seat_first_reads"] >= 0
    # A rolled-back 2PC booking never commits anything a reader could see; a saga books
    # the seat only after its booking is confirmed.
    assert runs["2pc"]["dirty_reads"] == 0 and runs["2pc"]["dirty_bookings"] == 0
    assert runs["saga"]["seat_first_reads"] == 0
    assert runs["2pc"]["flight"] != runs["saga"]["flight"]  # each run its fresh flight
    assert {m["mode"]: m["violations"] for m in figures["modes"]} == {"2pc": 0, "saga": 0}
    # What the databases hold: 8 seats booked, one cancelled booking refunded nothing.
    assert sorted(trip.taken().values()) == ["booked"] * 8
    assert sorted(trip.bookings().values()) == ["cancelled", *["confirmed"] * 8]
    assert trip.violations() == [] and trip.prepared() == []

    text = trip.cli("bench", "flights", "--bookings", "2", "--workers", "1", "--fail-share", "0")
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].startswith("2 bookings per run on a fresh flight, 0% failing at charge")
    assert lines[1].split() == [
        "round", "mode", "workers", "bookings/s", "p50", "ms", "p99", "ms", "booked", "undone",
        "reads", "dirty", "torn", "seat-first", "invariants",
    ]  # fmt: skip
    assert [line.split()[1] for line in lines[2:4]] == ["2pc", "saga"]
    assert [line.split()[-1] for line in lines[2:4]] == ["hold", "hold"]


def test_a_read_is_dirty_or_torn_by_what_it_saw() -> None:
    seats = [("1A", "pending", "bk-1"), ("1B", "booked", "bk-2")]
    bookings = [("bk-1", "1A", "pending"), ("bk-2", "1B", "confirmed"), ("bk-3", "1C", "cancelled")]
    assert seen(seats, bookings) == (frozenset({"bk-1", "bk-2"}), False, False)
    assert seen([("1B", "booked", "bk-2")], [])[1:] == (True, False)  # the booking unseen
    assert seen([("1B", "booked", "bk-2")], [("bk-2", "1B", "pending")])[1:] == (True, False)
    assert seen([], [("bk-2", "1B", "confirmed")])[1:] == (False, True)  # seat not booked
    assert seen([("1B", "pending", "bk-2")], [("bk-2", "1B", "confirmed")])[1:] == (False, True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workers", "0"), "Error: --workers '0' must be comma-separated integers >= 1"),
        (("--workers", "1,x"), "Error: --workers '1,x' must be comma-separated integers >= 1"),
        (
            ("--bookings", "0"),
            "Error: Invalid value for '--bookings': 0 is not in the range 1<=x<=1089. "
            "(see `twopc bench flights --help`)",
        ),
        (
            ("--fail-share", "1.5"),
            "Error: Invalid value for '--fail-share': 1.5 is not in the range 0<=x<=1. "
            "(see `twopc bench flights --help`)",
        ),
        (
            ("--fail-at", "notify"),
            "Error: Invalid value for '--fail-at': 'notify' is not one of 'seat', 'booking', "
            "'charge', 'confirm'. (see `twopc bench flights --help`)",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_books_nothing(
    trip: Trip, args: tuple[str, ...], message: str
) -> None:
    result = trip.cli("bench", "flights", "--bookings", "2", *args)
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    assert result.stderr.strip() == message
    assert result.stderr.count("\n") == 1
    assert trip.nothing_booked()
