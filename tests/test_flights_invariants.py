"""The booking's invariants over fake rows, in milliseconds: a consistent set of rows breaks
none, and each rule reports the rows that break it (so the checks in the servers' tests can
fail)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from twopc.flights import FlightsView
from twopc.flights.invariants import (
    CONFIRMATION,
    NET_CHARGE,
    RULES,
    SEAT_HELD,
    SEAT_ONCE,
    SETTLED,
    Unsettled,
    Violation,
    violations,
)


def seat(name: str, state: str = "available", booking_id: str | None = None) -> dict[str, Any]:
    return {"flight": "TP101", "seat": name, "state": state, "booking_id": booking_id}


def booking(booking_id: str, name: str, state: str, amount: str = "80.00") -> dict[str, Any]:
    return {"booking_id": booking_id, "flight": "TP101", "seat": name, "customer": "c",
            "amount": Decimal(amount), "state": state}  # fmt: skip


def payment(booking_id: str, kind: str, amount: str = "80.00") -> dict[str, Any]:
    suffix = "step-3" if kind == "charge" else "comp-3"
    return {"payment_id": f"{booking_id}-{suffix}", "booking_id": booking_id, "kind": kind,
            "amount": Decimal(amount)}  # fmt: skip


def consistent() -> FlightsView:
    """bk-a confirmed on 1A; bk-b compensated after its charge; bk-c cancelled before it;
    1C free."""
    return FlightsView(
        seats=[seat("1A", "booked", "bk-a"), seat("1B"), seat("1C")],
        bookings=[booking("bk-a", "1A", "confirmed"), booking("bk-b", "1B", "cancelled"),
                  booking("bk-c", "1B", "cancelled")],
        payments=[payment("bk-a", "charge"), payment("bk-b", "charge"),
                  payment("bk-b", "refund")],
        confirmations=[{"booking_id": "bk-a", "message": "sent"}],
    )  # fmt: skip


def rules(view: FlightsView, unsettled: Unsettled | None = None) -> list[tuple[str, str]]:
    return [(v.rule, v.subject) for v in violations(view, unsettled)]


def test_consistent_rows_break_no_rule() -> None:
    assert violations(consistent(), Unsettled()) == []


def test_a_saga_between_its_pivot_and_the_release_breaks_only_settled() -> None:
    view = consistent()
    view.seats[2] = seat("1C", "pending", "bk-d")
    view.bookings.append(booking("bk-d", "1C", "confirmed"))
    view.payments.append(payment("bk-d", "charge"))
    view.confirmations.append({"booking_id": "bk-d", "message": "sent"})
    assert rules(view) == []
    assert rules(view, Unsettled()) == [(SETTLED, "TP101 1C")]


def test_two_confirmed_bookings_of_one_seat_are_reported() -> None:
    view = consistent()
    view.bookings.append(booking("bk-x", "1A", "confirmed"))
    view.payments.append(payment("bk-x", "charge"))
    view.confirmations.append({"booking_id": "bk-x", "message": "sent"})
    assert rules(view) == [(SEAT_ONCE, "TP101 1A"), (SEAT_HELD, "bk-x")]
    assert "confirmed for 2 bookings: bk-a, bk-x" in str(violations(view)[0])


@pytest.mark.parametrize(
    ("seat_row", "expected"),
    [
        (seat("1A"), [(SEAT_HELD, "bk-a")]),  # confirmed, its seat available
        (seat("1A", "booked", "bk-z"), [(SEAT_HELD, "bk-a"), (SEAT_HELD, "TP101 1A")]),
    ],
)
def test_a_confirmed_booking_whose_seat_it_does_not_hold_is_reported(
    seat_row: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    view = consistent()
    view.seats[0] = seat_row
    assert rules(view) == expected


def test_a_seat_booked_for_a_booking_not_confirmed_is_reported() -> None:
    view = consistent()
    view.seats[1] = seat("1B", "booked", "bk-b")  # bk-b was cancelled
    view.seats[2] = seat("1C", "booked", "bk-nobody")
    assert rules(view) == [(SEAT_HELD, "TP101 1B"), (SEAT_HELD, "TP101 1C")]
    assert str(violations(view)[1]) == "seat-held: TP101 1C: booked for bk-nobody (no such booking)"


@pytest.mark.parametrize(
    ("payments", "subject"),
    [
        ([], "bk-a"),  # confirmed, never charged
        ([payment("bk-a", "charge"), payment("bk-a", "charge")], "bk-a"),  # charged twice
        ([payment("bk-a", "charge"), payment("bk-a", "refund")], "bk-a"),  # confirmed, refunded
        ([payment("bk-a", "charge", "79.99")], "bk-a"),  # the wrong amount
        ([payment("bk-a", "charge"), payment("bk-b", "charge")], "bk-b"),  # cancelled, kept
        ([payment("bk-a", "charge"), payment("bk-c", "refund")], "bk-c"),  # refunded, not paid
        ([payment("bk-a", "charge"), payment("bk-ghost", "charge")], "bk-ghost"),  # no booking
    ],
)
def test_a_net_charge_that_is_not_the_bookings_is_reported(
    payments: list[dict[str, Any]], subject: str
) -> None:
    view = consistent()
    view.payments = payments
    assert rules(view) == [(NET_CHARGE, subject)]


def test_a_charge_and_a_refund_of_a_booking_that_does_not_exist_net_zero() -> None:
    view = consistent()
    view.payments += [payment("bk-ghost", "charge"), payment("bk-ghost", "refund")]
    assert rules(view) == []


def test_a_missing_or_stray_confirmation_is_reported() -> None:
    view = consistent()
    view.confirmations = [{"booking_id": "bk-b", "message": "sent"}]
    assert rules(view) == [(CONFIRMATION, "bk-a"), (CONFIRMATION, "bk-b")]


def test_pending_prepared_and_unfinished_break_settled_only_when_asked() -> None:
    view = consistent()
    view.seats[2] = seat("1C", "pending", "bk-p")
    view.bookings.append(booking("bk-p", "1C", "pending"))
    unsettled = Unsettled(prepared=["bookings:x"], sagas=["bk-p"])
    assert rules(view) == []
    assert rules(view, unsettled) == [
        (SETTLED, "TP101 1C"), (SETTLED, "bk-p"), (SETTLED, "bookings:x"), (SETTLED, "bk-p"),
    ]  # fmt: skip
    assert [v.detail for v in violations(view, unsettled)] == [
        "seat pending", "booking pending", "prepared", "booking saga unfinished",
    ]  # fmt: skip


def test_every_rule_is_named_and_a_violation_is_plain_json() -> None:
    assert RULES == (SEAT_ONCE, SEAT_HELD, NET_CHARGE, CONFIRMATION, SETTLED)
    found = Violation(NET_CHARGE, "bk-a", "confirmed; net 0.00")
    assert found.to_json() == {
        "rule": "net-charge",
        "subject": "bk-a",
        "detail": "confirmed; net 0.00",
    }
