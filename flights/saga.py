"""The booking as a saga definition, run by the saga engine (:mod:`twopc.saga`).

1. **seat** on ``flights``: hold the seat as pending (compensation: **free-seat**). Once the
   pivot has applied, the hold is released by booking the seat.
2. **booking** on ``bookings``: a pending booking (compensation: **cancel-booking**; the row
   stays, cancelled).
3. **charge** on ``payments``: the payment call, keyed by the step's idempotency key, cut off
   after 5 s and retried under the same key (compensation: **refund**, a row of its own).
4. **confirm** on ``bookings``: the booking becomes confirmed — the pivot.
5. **notify** on ``bookings``: the confirmation, irreversible, so last; retried until done.

The saga's id is the booking's id. Its parameters are the request, and the failure a
demonstration injects (``fail_at``, with the notification outage's end), so whoever resumes
the saga sees the same world.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from twopc.coordinator import RetryPolicy
from twopc.flights import changes
from twopc.flights.booking import (
    BOOKING,
    CONFIRM,
    FAILURES,
    NOTIFY,
    OUTAGE_SECONDS,
    PAY,
    SEAT,
    STEPS,
    BookingRequest,
    parse_step,
)
from twopc.flights.tables import BOOKINGS, FLIGHTS, PAYMENTS, ensure_flight_tables
from twopc.participants import LocalTransaction, ParticipantError
from twopc.saga import (
    APPLIED,
    REJECTED,
    Params,
    SagaDefinition,
    SagaPoint,
    SagaRun,
    Step,
    StepResult,
    compensation_key,
    step_key,
)

BOOKING_SAGA_NAME = "flight-booking"
#: Step numbers (from 1), as the engine numbers them.
STEP_NUMBERS = {name: n for n, name in enumerate(STEPS, start=1)}
#: The payments call: an attempt that does not answer in 5 s is cut off and retried under
#: the same idempotency key for up to 30 s, then the booking is compensated.
PAYMENT_TIMEOUT = 5.0
PAYMENT_RETRY = RetryPolicy(initial_interval=0.5, maximum_interval=2.0, deadline=30.0)
#: The confirmation cannot be undone: it is retried for up to 10 minutes, then left
#: unfinished for `twopc recover`, never compensated.
NOTIFY_RETRY = RetryPolicy(initial_interval=0.2, maximum_interval=5.0, deadline=600.0)


class ServiceUnavailable(ParticipantError):
    """A service a step calls did not answer (the notification sender): transient, so the
    step is retried like one whose server did not answer."""


def booking_params(
    request: BookingRequest, fail_at: str | None = None, *, now: float | None = None
) -> dict[str, object]:
    """The saga's parameters: the request and the failure to inject, if any."""
    params: dict[str, object] = dict(request.params())
    if fail_at is not None:
        params["fail_at"] = parse_step(fail_at)
    if fail_at == NOTIFY:
        params["outage_until"] = (time.time() if now is None else now) + OUTAGE_SECONDS
    return params


def request_of(params: Params) -> BookingRequest:
    """The booking saga parameters describe; ``ValueError`` (or ``KeyError``) when bad."""
    parse_step(params.get("fail_at"))
    return BookingRequest.from_params(params)


def _refused_at(run: SagaRun, step: str) -> StepResult | None:
    if run.params.get("fail_at") != step:
        return None
    return StepResult(REJECTED, {"reason": f"{FAILURES[step]} (--fail-at {step})"})


# -- the steps --------------------------------------------------------------------------------


def _hold_seat(tx: LocalTransaction, run: SagaRun) -> StepResult | None:
    refused = _refused_at(run, SEAT)
    if refused is not None:
        return refused
    reason = changes.hold_seat(tx, request_of(run.params), run.saga_id)
    return StepResult(REJECTED, {"reason": reason}) if reason else None


def _free_seat(tx: LocalTransaction, run: SagaRun) -> None:
    changes.free_seat(tx, request_of(run.params), run.saga_id)


def _book_seat(tx: LocalTransaction, run: SagaRun) -> None:
    changes.confirm_seat(tx, request_of(run.params), run.saga_id)


def _create_booking(tx: LocalTransaction, run: SagaRun) -> StepResult | None:
    refused = _refused_at(run, BOOKING)
    if refused is not None:
        return refused
    changes.create_booking(tx, request_of(run.params), run.saga_id)
    return None


def _cancel_booking(tx: LocalTransaction, run: SagaRun) -> None:
    changes.cancel_booking(tx, run.saga_id)


def _charge(tx: LocalTransaction, run: SagaRun) -> StepResult:
    refused = _refused_at(run, PAY)
    if refused is not None:
        return refused
    key = step_key(run.saga_id, STEP_NUMBERS[PAY])  # the same on every retry
    amount = request_of(run.params).amount
    changes.charge(tx, run.saga_id, amount, key)
    return StepResult(APPLIED, {"payment": key, "amount": str(amount)})


def _refund(tx: LocalTransaction, run: SagaRun) -> StepResult:
    key = compensation_key(run.saga_id, STEP_NUMBERS[PAY])
    amount = request_of(run.params).amount
    changes.refund(tx, run.saga_id, amount, key)
    return StepResult(APPLIED, {"payment": key, "amount": str(amount)})


def _confirm(tx: LocalTransaction, run: SagaRun) -> StepResult | None:
    refused = _refused_at(run, CONFIRM)
    if refused is not None:
        return refused
    changes.confirm_booking(tx, run.saga_id)
    return None


def _notify(tx: LocalTransaction, run: SagaRun) -> StepResult:
    if run.params.get("fail_at") == NOTIFY and time.time() < float(run.params["outage_until"]):
        raise ServiceUnavailable(f"{FAILURES[NOTIFY]} (--fail-at {NOTIFY})")
    message = changes.record_confirmation(tx, request_of(run.params), run.saga_id)
    return StepResult(APPLIED, {"message": message})


def _seat(params: Params) -> str:
    return f"{params['flight']} {params['seat']}"


def _customer(params: Params) -> str:
    return str(params["customer"])


def _amount(params: Params) -> str:
    return str(params["amount"])


def _describe(params: Params) -> str:
    fail_at = params.get("fail_at")
    return f"book {request_of(params)}" + (f" failing at {fail_at}" if fail_at else "")


#: The booking saga. A refusal up to the pivot compensates in reverse order (refund,
#: cancel-booking, free-seat); after the pivot, the seat is booked and the confirmation
#: written, each retried until done.
BOOKING_SAGA = SagaDefinition(
    BOOKING_SAGA_NAME,
    [
        Step(SEAT, on=FLIGHTS, action=_hold_seat, compensation=_free_seat,
             compensation_name="free-seat", release=_book_seat, subject=_seat),
        Step(BOOKING, on=BOOKINGS, action=_create_booking, compensation=_cancel_booking,
             compensation_name="cancel-booking", subject=_customer),
        Step(PAY, on=PAYMENTS, action=_charge, compensation=_refund, compensation_name="refund",
             subject=_amount, retry=PAYMENT_RETRY, compensation_retry=PAYMENT_RETRY,
             timeout=PAYMENT_TIMEOUT),
        Step(CONFIRM, on=BOOKINGS, action=_confirm, pivot=True, subject=lambda _: "booking"),
        Step(NOTIFY, on=BOOKINGS, action=_notify, retry=NOTIFY_RETRY, subject=_customer),
    ],
    describe=_describe,
    check=request_of,
    setup=ensure_flight_tables,
)  # fmt: skip


# -- where `twopc flights book --mode saga` can stop -------------------------------------------


@dataclass(frozen=True)
class BookingPoint:
    """A point of the booking saga by its CLI name: the engine's point and its step."""

    point: SagaPoint
    step: int | None
    help: str


BOOKING_POINTS = {
    "after-seat": BookingPoint(SagaPoint.AFTER_STEP, 1, "the seat held as pending, logged"),
    "after-booking": BookingPoint(SagaPoint.AFTER_STEP, 2, "the pending booking made, logged"),
    "after-charge": BookingPoint(SagaPoint.AFTER_STEP, 3, "the card charged, logged"),
    "after-charge-commit": BookingPoint(
        SagaPoint.AFTER_STEP_COMMIT,
        3,
        "the charge committed, the orchestrator has not logged it (the dual-write gap)",
    ),
    "after-confirm": BookingPoint(
        SagaPoint.AFTER_STEP, 4, "the booking confirmed (the pivot), seat still pending"
    ),
    "after-compensation": BookingPoint(
        SagaPoint.AFTER_COMPENSATION, None, "a compensation committed and logged, no END record"
    ),
}
