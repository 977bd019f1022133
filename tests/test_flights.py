"""The flight booking on the real servers, in-process: the saga and the 2PC booking, each
failure named in the issue, the last-seat race in each mode, and a payment call whose answer
is lost after its charge committed.

Every test reads the truth where it lives: ``flight_seats`` (flights, PostgreSQL),
``bookings`` and ``booking_confirmations`` (bookings, MariaDB), ``payments`` (payments,
PostgreSQL), the idempotency keys in each database's ``saga_steps``, and what is prepared.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from flightkit import Trip, trip, trip_tables

from twopc.coordinator import Coordinator, CoordinatorConfig, RetryPolicy
from twopc.flights import (
    BOOKING_SAGA,
    STEP_NUMBERS,
    Booked,
    BookingRefused,
    BookingRequest,
    book_with_2pc,
    booking_params,
    fresh_booking_id,
    payment_key,
)
from twopc.participants import LocalTransaction, Participant
from twopc.saga import (
    ABORTED,
    APPLIED,
    COMPENSATED,
    COMPLETED,
    Orchestrator,
    SagaConfig,
    SagaDefinition,
    SagaOutcome,
    SagaPoint,
    SagaRegistry,
)

__all__ = ["trip", "trip_tables"]  # fixtures

QUICK = RetryPolicy(initial_interval=0.05, maximum_interval=0.2, deadline=20.0)
ALICE = BookingRequest.parse("TP101", "1A", "alice", "129.90")
BOB = BookingRequest.parse("TP101", "1A", "bob", "99.00")


class Seen:
    """Saga hooks that remember the points passed, and what a reader saw at each step."""

    def __init__(self, trip: Trip | None = None) -> None:
        self.trip = trip
        self.points: list[tuple[SagaPoint, int]] = []
        self.read: dict[int, tuple[str, dict[str, str]]] = {}

    def reached(self, point: SagaPoint, saga_id: str, n: int) -> None:
        self.points.append((point, n))
        if self.trip is not None and point is SagaPoint.AFTER_STEP:
            self.read[n] = (self.trip.seat("TP101", "1A")[0], self.trip.bookings())

    def compensations(self) -> list[int]:
        return [n for point, n in self.points if point is SagaPoint.AFTER_COMPENSATION]


def run_saga(
    trip: Trip,
    request: BookingRequest,
    fail_at: str | None = None,
    *,
    definition: SagaDefinition = BOOKING_SAGA,
    saga_id: str | None = None,
    now: float | None = None,
    participants: Sequence[Participant] | None = None,
    **options: Any,
) -> SagaOutcome:
    config = SagaConfig(
        trip.home, retry=QUICK, compensation_retry=QUICK,
        definitions=SagaRegistry([definition]), **options,
    )  # fmt: skip
    both = participants if participants is not None else list(trip.participants().values())
    with Orchestrator.open(both, config) as orchestrator:
        params = booking_params(request, fail_at, now=now)
        return orchestrator.run(definition, params, saga_id or fresh_booking_id())


def run_2pc(trip: Trip, request: BookingRequest, fail_at: str | None = None) -> Booked:
    participants = list(trip.participants().values())
    with Coordinator.open(participants, CoordinatorConfig(trip.home)) as coordinator:
        return book_with_2pc(coordinator, request, fresh_booking_id(), fail_at)


# -- the saga ---------------------------------------------------------------------------------


def test_the_saga_books_with_pending_states_visible_and_replays(trip: Trip) -> None:
    seen = Seen(trip)
    booked = run_saga(trip, ALICE, hooks=seen, saga_id="bk-1")
    again = run_saga(trip, ALICE, saga_id="bk-1")

    assert booked.outcome == COMPLETED
    # What a reader saw after each step: pending, until the pivot confirmed the booking.
    assert seen.read == {
        1: ("pending", {}),
        2: ("pending", {"bk-1": "pending"}),
        3: ("pending", {"bk-1": "pending"}),
        4: ("pending", {"bk-1": "confirmed"}),  # the seat is booked by the release, next
        5: ("booked", {"bk-1": "confirmed"}),
    }
    assert trip.seat("TP101", "1A") == ("booked", "bk-1")
    assert trip.bookings() == {"bk-1": "confirmed"}
    assert trip.payments() == [("bk-1-step-3", "bk-1", "charge", "129.90")]
    assert trip.confirmations() == ["bk-1"]
    assert trip.idempotency_keys() == {
        "flights:bk-1-step-1": APPLIED, "bookings:bk-1-step-2": APPLIED,
        "payments:bk-1-step-3": APPLIED, "bookings:bk-1-step-4": APPLIED,
        "flights:bk-1-release-1": APPLIED, "bookings:bk-1-step-5": APPLIED,
    }  # fmt: skip
    # The same booking id again replays: every step finds its stored result.
    assert again.outcome == COMPLETED and all(r.replayed for r in again.state.results.values())
    assert trip.payments() == [("bk-1-step-3", "bk-1", "charge", "129.90")]
    assert trip.confirmations() == ["bk-1"]
    assert trip.violations() == []


@pytest.mark.parametrize(
    ("fail_at", "compensations", "booking", "payments"),
    [
        ("seat", [], {}, []),
        ("booking", [1], {}, []),
        ("charge", [2, 1], {"bk-f": "cancelled"}, []),
        ("confirm", [3, 2, 1], {"bk-f": "cancelled"}, [("charge", "129.90"), ("refund", "129.90")]),
    ],
)
def test_a_refusal_before_the_pivot_compensates_in_reverse_order(
    trip: Trip,
    fail_at: str,
    compensations: list[int],
    booking: dict[str, str],
    payments: list[tuple[str, str]],
) -> None:
    seen = Seen()
    outcome = run_saga(trip, ALICE, fail_at, hooks=seen, saga_id="bk-f")

    assert outcome.outcome == (ABORTED if fail_at == "seat" else COMPENSATED)
    assert f"(--fail-at {fail_at})" in str(outcome.state.last_error)
    assert seen.compensations() == compensations  # refund, cancel-booking, free-seat
    assert trip.seat("TP101", "1A") == ("available", None)
    assert trip.bookings() == booking  # a cancelled booking keeps its row
    assert [(kind, amount) for _, _, kind, amount in trip.payments()] == payments
    if fail_at == "confirm":  # the refund is a new row; the charge stays
        assert [p for p, _, _, _ in trip.payments()] == ["bk-f-step-3", "bk-f-comp-3"]
    assert trip.confirmations() == []
    assert trip.violations() == []


def test_after_the_pivot_the_notification_is_retried_until_sent(trip: Trip) -> None:
    failures: list[tuple[str, int, str]] = []
    # The notification service is down for about 0.3 s from now.
    began = time.time() - 1.2
    outcome = run_saga(
        trip, ALICE, "notify", saga_id="bk-n", now=began,
        on_retry=lambda saga, what, n, error: failures.append((what, n, error)),
    )  # fmt: skip

    assert outcome.outcome == COMPLETED
    assert failures and {(what, error) for what, _, error in failures} == {
        ("notify alice", "notification service down (--fail-at notify)")
    }
    assert [n for _, n, _ in failures] == list(range(1, len(failures) + 1))
    assert trip.confirmations() == ["bk-n"]
    assert trip.seat("TP101", "1A") == ("booked", "bk-n")
    assert trip.bookings() == {"bk-n": "confirmed"}
    assert not any("comp" in key for key in trip.idempotency_keys())  # never compensated
    assert trip.violations() == []


# -- the payment call that does not answer: retried under the same key, charged once ----------


class LostAnswer:
    """The payments participant, whose first charge commits and then answers only after
    ``delay`` seconds (the answer lost in the network), long after the step's timeout."""

    def __init__(self, real: Participant, delay: float) -> None:
        self.real = real
        self.delay = delay
        self.delayed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    @contextmanager
    def local_transaction(self) -> Iterator[LocalTransaction]:
        charged: list[str] = []
        with self.real.local_transaction() as local:
            execute = local.execute

            def watched(query: str, params: Any = None) -> Any:
                if query.startswith("INSERT INTO payments"):
                    charged.append(query)
                return execute(query, params)

            local.execute = watched  # type: ignore[method-assign]
            yield local
        if charged and not self.delayed.is_set():  # committed; the answer is late
            self.delayed.set()
            time.sleep(self.delay)


def test_a_charge_whose_answer_is_lost_is_retried_with_the_same_key_and_charged_once(
    trip: Trip,
) -> None:
    n = STEP_NUMBERS["charge"]
    quick_charge = replace(BOOKING_SAGA.steps[n - 1], timeout=0.3, retry=QUICK)
    steps = [*BOOKING_SAGA.steps[: n - 1], quick_charge, *BOOKING_SAGA.steps[n:]]
    timed = replace(BOOKING_SAGA, steps=steps)
    participants = trip.participants()
    payments = LostAnswer(participants["payments"], delay=1.0)
    failures: list[str] = []
    outcome = run_saga(
        trip, ALICE, saga_id="bk-t", definition=timed,
        participants=[participants["flights"], participants["bookings"], payments],  # type: ignore[list-item]
        on_retry=lambda saga, what, attempt, error: failures.append(error),
    )  # fmt: skip

    assert payments.delayed.is_set()
    assert outcome.outcome == COMPLETED
    cut_off = "charge 129.90: no answer within 0.3s (cut off; retried under the same key)"
    assert failures == [cut_off]
    assert outcome.state.results[n].replayed  # the retry found the first attempt's result
    assert trip.payments() == [("bk-t-step-3", "bk-t", "charge", "129.90")]  # charged once
    assert trip.idempotency_keys()["payments:bk-t-step-3"] == APPLIED
    assert trip.bookings() == {"bk-t": "confirmed"}
    assert trip.violations() == []


# -- two-phase commit ---------------------------------------------------------------------------


def test_2pc_books_everything_or_nothing(trip: Trip) -> None:
    booked = run_2pc(trip, ALICE)
    bid = booked.booking_id
    assert booked.outcome.protocol == "2pc"
    assert sorted(booked.outcome.branches) == ["bookings", "flights", "payments"]
    assert trip.seat("TP101", "1A") == ("booked", bid)
    assert trip.bookings() == {bid: "confirmed"}
    assert trip.payments() == [(payment_key(bid), bid, "charge", "129.90")]
    assert trip.confirmations() == [bid]
    assert trip.prepared() == [] and trip.idempotency_keys() == {}
    assert trip.violations() == []


@pytest.mark.parametrize("fail_at", ["seat", "booking", "charge", "confirm", "notify"])
def test_2pc_failing_at_any_step_leaves_nothing_anywhere(trip: Trip, fail_at: str) -> None:
    with pytest.raises(BookingRefused, match=rf"\(--fail-at {fail_at}\)"):
        run_2pc(trip, ALICE, fail_at)
    assert trip.nothing_booked()
    assert trip.violations() == []


# -- the last seat, two customers at once -------------------------------------------------------


def race(*bookings: Callable[[], Any]) -> list[Any]:
    """Run the bookings at the same moment; each one's result or exception."""
    start = threading.Barrier(len(bookings))
    results: list[Any] = [None] * len(bookings)

    def run(i: int) -> None:
        start.wait(timeout=10)
        try:
            results[i] = bookings[i]()
        except Exception as err:  # the loser's refusal, reported below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bookings))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    return results


def test_2pc_race_for_the_last_seat_books_it_once(trip: Trip) -> None:
    results = race(lambda: run_2pc(trip, ALICE), lambda: run_2pc(trip, BOB))
    won = [r for r in results if isinstance(r, Booked)]
    lost = [r for r in results if isinstance(r, BookingRefused)]
    assert len(won) == 1 and len(lost) == 1, results
    assert "seat 1A on TP101 is taken" in str(lost[0])
    winner = won[0].booking_id
    assert trip.seat("TP101", "1A") == ("booked", winner)
    assert trip.bookings() == {winner: "confirmed"}
    assert [b for _, b, _, _ in trip.payments()] == [winner]
    assert trip.confirmations() == [winner] and trip.prepared() == []
    assert trip.violations() == []


def test_saga_race_for_the_last_seat_books_it_once(trip: Trip) -> None:
    results = race(
        lambda: run_saga(trip, ALICE, saga_id="bk-alice"),
        lambda: run_saga(trip, BOB, saga_id="bk-bob"),
    )
    outcomes = {r.saga_id: r.outcome for r in results}
    assert sorted(outcomes.values()) == [ABORTED, COMPLETED], results
    winner = next(s for s, o in outcomes.items() if o == COMPLETED)
    loser = next(r for r in results if r.outcome == ABORTED)
    assert loser.state.last_error == "seat 1A on TP101 is taken (pending)" or (
        loser.state.last_error == "seat 1A on TP101 is taken (booked)"
    )
    assert trip.seat("TP101", "1A") == ("booked", winner)
    assert trip.bookings() == {winner: "confirmed"}
    assert [b for _, b, _, _ in trip.payments()] == [winner]
    assert trip.confirmations() == [winner]
    assert trip.violations() == []
