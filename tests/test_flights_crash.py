"""`twopc flights book --crash-at POINT` killed (SIGKILL, like kill -9) at each 2PC and saga
point, then `twopc recover`: the booking is all or nothing — in 2PC booked everywhere or
nowhere, as the log decided; as a saga completed or compensated, never half done.

The booking runs as the installed ``twopc`` in a process of its own (the only honest way to
kill it); recovery runs the same command in this process.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess

import pytest
from conftest import twopc_executable
from flightkit import Trip, trip, trip_tables

__all__ = ["trip", "trip_tables"]  # fixtures

BOOK = ("flights", "book", "TP101", "2C", "carol", "80.00")


def killed(trip: Trip, *args: str) -> None:
    """Run ``twopc flights book … ARGS``, which must die of SIGKILL at its point."""
    done = subprocess.run(
        [twopc_executable(), *BOOK, *args], env=trip.env(), capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)


def booked_once(trip: Trip) -> str:
    """The one booking made, confirmed everywhere; its id."""
    (booking_id,) = trip.bookings()
    assert trip.bookings() == {booking_id: "confirmed"}
    assert trip.seat("TP101", "2C") == ("booked", booking_id)
    assert [(b, kind, amount) for _, b, kind, amount in trip.payments()] == [
        (booking_id, "charge", "80.00")
    ]
    assert trip.confirmations() == [booking_id]
    assert trip.prepared() == []
    return booking_id


def recover(trip: Trip) -> dict[str, object]:
    result = trip.cli("recover", "--json")
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.output)
    return report


# -- two-phase commit -------------------------------------------------------------------------

CRASHES_2PC = [
    # point, branches left prepared, whether the log holds COMMIT
    ("after-first-prepare", 1, False),
    ("after-prepare", 3, False),
    ("after-decision", 3, True),
    ("after-first-commit", 2, True),
    ("before-end", 0, True),
]


@pytest.mark.parametrize(("point", "prepared", "committed"), CRASHES_2PC)
def test_2pc_killed_at_each_point_then_recovered_is_all_or_nothing(
    trip: Trip, point: str, prepared: int, committed: bool
) -> None:
    killed(trip, "--crash-at", point)
    assert len(trip.prepared()) == prepared
    if point == "after-first-prepare":  # the flights branch is the first
        assert trip.prepared()[0].startswith("pg:flights:")
    if point == "after-first-commit":  # a plain reader sees the seat booked, nothing else
        assert (trip.seat("TP101", "2C")[0], trip.bookings(), trip.payments()) == (
            "booked", {}, []
        )  # fmt: skip
    if prepared:  # what `flights show` says meanwhile
        shown = json.loads(trip.cli("flights", "show", "TP101", "--json").output)
        assert len(shown["in_doubt"]) == prepared
        assert {d["decision"] for d in shown["in_doubt"]} == {"commit" if committed else "none"}
        check = trip.cli("flights", "check", "--json")  # the checker sees them
        assert check.exit_code == 1, check.output
        broken = json.loads(check.stdout)["violations"]
        assert [v["detail"] for v in broken if v["rule"] == "settled"] == ["prepared"] * prepared

    report = recover(trip)
    actions = {r["action"] for r in report["resolutions"]}  # type: ignore[attr-defined]
    assert actions == ({"committed" if committed else "rolled back"} if prepared else set())
    if committed:
        booked_once(trip)
    else:
        assert trip.nothing_booked()
    assert trip.cli("audit").exit_code == 0
    assert trip.violations() == []
    check = trip.cli("flights", "check")
    assert (check.exit_code, check.stdout) == (0, "no violations\n"), check.output


# -- the saga -------------------------------------------------------------------------------------

CRASHES_SAGA = [
    # point, --fail-at, what recovery makes of it
    ("after-seat", None, "completed"),
    ("after-booking", None, "completed"),
    ("after-charge", None, "completed"),
    ("after-charge-commit", None, "completed"),  # committed, not logged: replayed by its key
    ("after-confirm", None, "completed"),
    ("after-compensation", "confirm", "compensated"),  # refunded; cancel and free remain
]


@pytest.mark.parametrize(("point", "fail_at", "expected"), CRASHES_SAGA)
def test_saga_killed_at_each_point_then_recovered_completes_or_compensates(
    trip: Trip, point: str, fail_at: str | None, expected: str
) -> None:
    failing = ("--fail-at", fail_at) if fail_at else ()
    killed(trip, "--mode", "saga", "--crash-at", point, *failing)
    state, booking_id = trip.seat("TP101", "2C")  # held at every point: the saga's id
    assert booking_id is not None and state in ("pending", "booked")
    assert f"settled: {booking_id}: booking saga unfinished" in trip.violations()
    if point == "after-booking":  # readers see the pending states meanwhile
        assert trip.seat("TP101", "2C") == ("pending", booking_id)
        assert trip.bookings() == {booking_id: "pending"}
        shown = json.loads(trip.cli("flights", "show", "--json").output)
        assert shown["pending"] == {"seats": ["TP101 2C"], "bookings": [booking_id]}
        (unfinished,) = shown["unfinished_sagas"]
        assert (unfinished["booking_id"], unfinished["orchestrator_alive"]) == (booking_id, False)
        other = trip.cli("flights", "check", "TP202")  # the unfinished saga is TP101's
        assert (other.exit_code, other.stdout) == (0, "no violations\n"), other.output
        mine = trip.cli("flights", "check", "TP101")
        assert mine.exit_code == 1 and mine.stdout.splitlines() == [
            "settled: TP101 2C: seat pending",
            f"settled: {booking_id}: booking pending",
            f"settled: {booking_id}: booking saga unfinished",
        ]  # fmt: skip
        reset = trip.cli("flights", "init", "--reset")  # would drop the saga's rows
        assert reset.exit_code == 1 and "reset refused, nothing dropped: booking saga" in (
            reset.stderr
        )

    report = recover(trip)
    sagas = report["sagas"]["resolutions"]  # type: ignore[index]
    assert [(r["saga_id"], r["action"], r["finished"]) for r in sagas] == [
        (booking_id, expected, True)
    ]
    if expected == "completed":
        assert booked_once(trip) == booking_id
    else:
        assert trip.seat("TP101", "2C") == ("available", None)
        assert trip.bookings() == {booking_id: "cancelled"}
        assert [(p, kind) for p, _, kind, _ in trip.payments()] == [
            (f"{booking_id}-step-3", "charge"), (f"{booking_id}-comp-3", "refund"),
        ]  # fmt: skip
        assert trip.confirmations() == []
    assert recover(trip)["sagas"]["resolutions"] == []  # type: ignore[index]
    assert trip.violations() == []


# -- stopped by SIGTERM (or Ctrl-C) while it holds at a point -------------------------------------


@pytest.mark.parametrize(
    ("mode", "point", "said"),
    [
        ("2pc", "after-decision", "is in doubt; `twopc recover` finishes it"),
        ("saga", "after-booking", "may be unfinished; `twopc recover` finishes it"),
    ],
)
def test_a_booking_stopped_by_sigterm_says_what_it_left_and_recover_finishes_it(
    trip: Trip, mode: str, point: str, said: str
) -> None:
    args = [*BOOK, "--mode", mode, "--pause-at", point, "--pause-seconds", "60"]
    with subprocess.Popen(
        [twopc_executable(), *args], env=trip.env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    ) as booking:  # fmt: skip
        assert booking.stderr is not None
        ready, _, _ = select.select([booking.stderr], [], [], 60)
        assert ready and booking.stderr.readline().startswith(f"paused at {point}: pid ")
        booking.send_signal(signal.SIGTERM)
        _, stderr = booking.communicate(timeout=60)
    assert booking.returncode == 3, stderr
    assert stderr.startswith("Error: interrupted: booking bk-") and said in stderr
    recover(trip)
    booked_once(trip)
    assert trip.violations() == []
