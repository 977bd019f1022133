"""The flight booking's pure rules, in milliseconds: input parsing, the states a seat and a
booking may move between, the saga's shape (pivot, compensations, per-step timeout and
retry), its parameters and the CLI's points."""

from __future__ import annotations

from decimal import Decimal

import pytest

from twopc.commands.sagas import CLI_SAGAS
from twopc.flights import (
    BOOKING_POINTS,
    BOOKING_SAGA,
    BOOKING_STATES,
    PAYMENT_TIMEOUT,
    SEAT_STATES,
    STEP_NUMBERS,
    STEPS,
    BookingRequest,
    InvalidBooking,
    InvalidTransition,
    allowed,
    booking_params,
    fresh_booking_id,
    parse_amount,
    parse_step,
    request_of,
    sources,
)
from twopc.flights.booking import OUTAGE_SECONDS, is_booking_id
from twopc.saga import SagaPoint, check_saga_id


def test_a_request_parses_and_round_trips_through_saga_parameters() -> None:
    request = BookingRequest.parse("TP101", "12C", "alice.b@example.org", "129.9")
    assert request == BookingRequest("TP101", "12C", "alice.b@example.org", Decimal("129.90"))
    assert str(request) == "TP101 12C for alice.b@example.org at 129.90"
    assert request_of(request.params()) == request
    assert BookingRequest.parse("U2001", "1K", "7", "0.01").flight == "U2001"


@pytest.mark.parametrize(
    ("words", "error"),
    [
        (("tp101", "1A", "a", "1"), "flight 'tp101'"),
        (("TP10001", "1A", "a", "1"), "flight 'TP10001'"),
        (("TP", "1A", "a", "1"), "flight 'TP'"),
        (("TP101", "0A", "a", "1"), "seat '0A'"),
        (("TP101", "100A", "a", "1"), "seat '100A'"),
        (("TP101", "1L", "a", "1"), "seat '1L'"),
        (("TP101", "1a", "a", "1"), "seat '1a'"),
        (("TP101", "1A", "", "1"), "customer ''"),
        (("TP101", "1A", "-alice", "1"), "customer '-alice'"),
        (("TP101", "1A", "x" * 65, "1"), "customer 'xxx"),
        (("TP101", "1A", "al ice", "1"), "customer 'al ice'"),
        (("TP101", "1A", "a", "0"), "amount '0' must be greater than 0"),
        (("TP101", "1A", "a", "0.00"), "amount '0.00' must be greater than 0"),
    ],
)
def test_bad_words_are_refused_naming_the_first(words: tuple[str, ...], error: str) -> None:
    with pytest.raises(InvalidBooking, match=f"^{error}"):
        BookingRequest.parse(*words)


@pytest.mark.parametrize("text", ["", "1.234", "-1", "+1", " 1", "1 ", "1e3", "1,5", "١٢", "nan"])
def test_an_amount_is_a_positive_decimal_with_at_most_two_places(text: str) -> None:
    with pytest.raises(InvalidBooking, match="must be a positive decimal with at most 2 places"):
        parse_amount(text)


def test_amounts_are_kept_to_the_cent() -> None:
    assert [parse_amount(t) for t in ("10", "1.5", "0.01")] == [
        Decimal("10.00"), Decimal("1.50"), Decimal("0.01"),
    ]  # fmt: skip


def test_the_states_a_seat_and_a_booking_move_between() -> None:
    assert sources(SEAT_STATES, "pending") == ("available",)  # held
    assert sources(SEAT_STATES, "booked") == ("pending",)  # confirmed: only once held
    assert sources(SEAT_STATES, "available") == ("pending",)  # freed: never once booked
    assert sources(BOOKING_STATES, "confirmed") == ("pending",)
    assert sources(BOOKING_STATES, "cancelled") == ("pending",)
    assert not allowed(SEAT_STATES, "booked", "available")
    assert not allowed(BOOKING_STATES, "cancelled", "confirmed")
    assert not allowed(BOOKING_STATES, "confirmed", "cancelled")
    with pytest.raises(InvalidTransition, match="no state moves to 'pending'"):
        sources(BOOKING_STATES, "pending")  # a booking is made pending, never becomes it
    with pytest.raises(InvalidTransition, match="'lost' is not a state"):
        sources(SEAT_STATES, "lost")


def test_the_saga_pivots_on_the_confirmation_and_compensates_what_came_before() -> None:
    assert BOOKING_SAGA.step_names == STEPS == ("seat", "booking", "charge", "confirm", "notify")
    assert BOOKING_SAGA.pivot == STEP_NUMBERS["confirm"] == 4
    assert BOOKING_SAGA.compensable() == [1, 2, 3]
    assert [BOOKING_SAGA.step(n).undo_name for n in (1, 2, 3)] == [
        "free-seat", "cancel-booking", "refund",
    ]  # fmt: skip
    assert BOOKING_SAGA.releasing() == [1]  # the seat is booked once the pivot has applied
    assert BOOKING_SAGA.after_pivot() == [5]  # the notification: retried, never undone
    charge = BOOKING_SAGA.step(3)
    assert (charge.on, charge.timeout, PAYMENT_TIMEOUT) == ("payments", 5.0, 5.0)
    assert charge.retry is not None and charge.retry.deadline == 30.0
    notify = BOOKING_SAGA.step(5)
    assert notify.retry is not None and notify.retry.deadline >= 600
    assert [BOOKING_SAGA.step(n).on for n in range(1, 6)] == [
        "flights", "bookings", "payments", "bookings", "bookings",
    ]  # fmt: skip


def test_parameters_carry_the_injected_failure() -> None:
    request = BookingRequest.parse("TP101", "1A", "alice", "10")
    assert booking_params(request) == request.params()
    assert booking_params(request, "charge") == {**request.params(), "fail_at": "charge"}
    assert booking_params(request, "notify", now=1000.0)["outage_until"] == 1000 + OUTAGE_SECONDS
    with pytest.raises(InvalidBooking, match="unknown step 'dessert': the steps are seat,"):
        booking_params(request, "dessert")
    with pytest.raises(InvalidBooking):
        request_of({**request.params(), "fail_at": "dessert"})
    assert parse_step(None) is None
    assert BOOKING_SAGA.request(booking_params(request, "charge")) == (
        "book TP101 1A for alice at 10.00 failing at charge"
    )


def test_booking_ids_are_saga_ids_and_the_cli_knows_the_saga() -> None:
    booking_id = fresh_booking_id()
    assert is_booking_id(booking_id) and check_saga_id(booking_id) == booking_id
    assert CLI_SAGAS.get("flight-booking") is BOOKING_SAGA
    assert CLI_SAGAS.names == ["flight-booking", "transfer"]
    assert CLI_SAGAS.get(None) is CLI_SAGAS.get("transfer")  # old logs: the transfer
    steps = {name: point.step for name, point in BOOKING_POINTS.items()}
    assert steps == {
        "after-seat": 1, "after-booking": 2, "after-charge": 3, "after-charge-commit": 3,
        "after-confirm": 4, "after-compensation": None,
    }  # fmt: skip
    assert BOOKING_POINTS["after-charge-commit"].point is SagaPoint.AFTER_STEP_COMMIT
