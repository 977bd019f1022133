"""`twopc flights init | book | show | check | serve | trace`: the flight booking over three
databases, in 2PC, as an orchestrated saga or as a choreographed one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from twopc.commands.common import (
    BadInput,
    Context,
    Failure,
    InDoubtRemains,
    Refused,
    emit,
    interruptible,
    json_failures,
    json_option,
    lock_wait_option,
    operational_errors,
    seconds_option,
)
from twopc.commands.flights_choreography import (
    CHOREOGRAPHY_POINTS,
    book_choreography,
    serve,
    trace,
)
from twopc.commands.outbox_common import broker_url_option, outbox_errors
from twopc.commands.sagas import saga_config
from twopc.coordinator import (
    CRASH_POINT_HELP,
    Coordinator,
    CoordinatorConfig,
    CrashPoint,
    KillAt,
    PauseAt,
    ProtocolHooks,
)
from twopc.coordinator.listing import find_in_doubt
from twopc.flights import (
    BOOKING_POINTS,
    BOOKING_SAGA,
    BOOKING_SAGA_NAME,
    DATABASES,
    DEMO_FLIGHTS,
    FAILURES,
    STEPS,
    Booked,
    BookingRefused,
    BookingRequest,
    InvalidBooking,
    book_with_2pc,
    booking_params,
    fresh_booking_id,
    init_flights,
    read_flights,
)
from twopc.flights.booking import is_flight
from twopc.flights.invariants import SETTLED, check_flights
from twopc.outbox import outbox_state
from twopc.participants import Participant, UndefinedTable
from twopc.saga import (
    COMPENSATED,
    COMPLETED,
    Orchestrator,
    SagaHooks,
    SagaOutcome,
    all_orchestrators,
    outcome_of,
    step_reports,
)

_POINTS = [point.value for point in CrashPoint]
_POINTS_HELP = "; ".join(f"{p.value}: {text}" for p, text in CRASH_POINT_HELP.items())
_SAGA_POINTS_HELP = "; ".join(f"{name}: {p.help}" for name, p in BOOKING_POINTS.items())
_STEPS_HELP = "; ".join(f"{step}: {FAILURES[step]}" for step in STEPS)
_CHOREOGRAPHY_HELP = "; ".join(
    f"{name}: {kill.service} committed its handling of {kill.event_type}, not acknowledged"
    for name, kill in CHOREOGRAPHY_POINTS.items()
)


def _participants(obj: Context, lock_wait: float = 30.0) -> dict[str, Participant]:
    """flights, bookings and payments, as configured: exit 2 naming the first missing."""
    return {p.name: p for p in obj.participants(DATABASES, lock_wait)}


@click.group()
def flights() -> None:
    """A flight booking over three databases: the seat (flights), the booking (bookings)
    and the payment (payments), plus a confirmation that cannot be undone.

    Configure them with --participant NAME=URL (or TWOPC_PARTICIPANTS, as `twopc dev env`
    exports them); with nothing configured, the dev servers' databases are used.
    """


# -- init -----------------------------------------------------------------------------------------


@flights.command("init")
@click.option(
    "--rows",
    default=10,
    show_default=True,
    type=click.IntRange(1, 99),
    help=f"Rows of seats A-F to seed on each demo flight ({', '.join(DEMO_FLIGHTS)}).",
)
@click.option("--reset", is_flag=True, help="Drop and recreate the tables first (destroys data).")
@json_option
@click.pass_obj
@operational_errors
def init_command(obj: Context, rows: int, reset: bool, as_json: bool) -> None:
    """Create the booking's tables in the three databases (idempotent) and seed the seats.

    --reset is refused, with nothing dropped, while any of them holds a prepared
    transaction (see `twopc in-doubt`), a booking saga is unfinished (see `twopc sagas`) or
    a choreographed booking's events wait in an outbox.
    """
    participants = _participants(obj, lock_wait=10.0)
    unfinished = [str(u["booking_id"]) for u in _unfinished_bookings(obj)]
    if reset and unfinished:
        raise Failure(
            f"reset refused, nothing dropped: booking saga(s) {', '.join(unfinished)} are "
            "unfinished and would lose their rows; finish them with `twopc recover`, then retry"
        )
    if reset:
        _refuse_while_events_wait(participants)
    added = init_flights(participants, rows=rows, reset=reset)
    text = "\n".join(
        [f"{name:<9} {p.url.location()}: tables ready" for name, p in participants.items()]
        + [f"{flight}: {n} seats added" for flight, n in added.items()]
    )
    emit(as_json, {"seats_added": added, "rows": rows, "reset": reset}, text)


def _refuse_while_events_wait(participants: dict[str, Participant]) -> None:
    """A choreographed booking in flight has events in an outbox: a reset would leave its
    services acting on rows that are gone. (Events already in the broker's queues are not
    seen from here.)"""
    waiting = {}
    for name, participant in participants.items():
        try:
            waiting[name] = outbox_state(participant).pending
        except UndefinedTable:  # never made: nothing waits there
            continue
    found = ", ".join(f"{name} holds {n}" for name, n in waiting.items() if n)
    if found:
        raise Failure(
            f"reset refused, nothing dropped: choreographed bookings' events wait in the "
            f"outboxes ({found}); let `twopc flights serve` finish them, then retry"
        )


# -- book -----------------------------------------------------------------------------------------


@flights.command(
    "book",
    epilog=f"Steps (--fail-at): {_STEPS_HELP}.\n\nCrash/pause points, 2pc: {_POINTS_HELP}."
    f"\n\nCrash/pause points, saga: {_SAGA_POINTS_HELP}.\n\nCrash points, choreography: "
    f"{_CHOREOGRAPHY_HELP}.\n\nExit status: 0 booked; 1 refused, rolled back or compensated; "
    "2 bad input; 3 in doubt or unfinished (`twopc recover`; choreography: `twopc flights "
    "serve`).",
)
@click.argument("flight")
@click.argument("seat")
@click.argument("customer")
@click.argument("amount")
@click.option(
    "--mode",
    type=click.Choice(["2pc", "saga", "choreography"]),
    default="2pc",
    show_default=True,
    help="One global transaction over the three databases, a saga of local ones run by an "
    "orchestrator, or one whose services react to each other's events (no orchestrator).",
)
@click.option("--fail-at", type=click.Choice(STEPS), help="Make this step fail (see below).")
@click.option(
    "--crash-at",
    type=click.Choice(_POINTS + list(BOOKING_POINTS)),
    help="SIGKILL this process at POINT (see below), like kill -9.",
)
@click.option(
    "--pause-at",
    type=click.Choice(_POINTS + list(BOOKING_POINTS)),
    help="Print pid and gtrid (saga id) at POINT and hold there.",
)
@seconds_option("--pause-seconds", 60.0, "How long --pause-at holds.")
@seconds_option(
    "--deadline", 30.0, "Choreography: how long to run the services for the booking.", minimum=0.1
)
@broker_url_option
@lock_wait_option(30.0)
@json_option
@click.pass_obj
@json_failures
@operational_errors
@outbox_errors
def book(
    obj: Context,
    flight: str,
    seat: str,
    customer: str,
    amount: str,
    mode: str,
    fail_at: str | None,
    crash_at: str | None,
    pause_at: str | None,
    pause_seconds: float,
    deadline: float,
    broker_url: str | None,
    lock_wait: float,
    as_json: bool,
) -> None:
    """Book SEAT on FLIGHT for CUSTOMER at AMOUNT (like: TP101 3C alice 129.90).

    2pc: the seat, the booking, the charge and the confirmation commit together in the
    three databases, or none of them does. saga: seat and booking pending, the charge, the
    booking confirmed (the pivot), the seat booked and the confirmation sent; a refusal
    before the pivot is compensated in reverse order (refund, cancel the booking, free the
    seat), a failure after it retried until done.
    """
    try:
        request = BookingRequest.parse(flight, seat, customer, amount)
    except InvalidBooking as err:
        raise BadInput(str(err)) from None
    if crash_at and pause_at:
        raise click.UsageError("--crash-at and --pause-at cannot be combined")
    point, crash = crash_at or pause_at, bool(crash_at)
    participants = _participants(obj, lock_wait)  # nothing connects before the first step
    if mode == "choreography":
        if pause_at:
            raise click.UsageError("--pause-at is not available with --mode choreography")
        book_choreography(
            obj, participants, request, fail_at, broker_url, deadline, crash_at, as_json
        )
        return
    if mode == "saga":
        hooks = _saga_hooks(point, crash=crash, seconds=pause_seconds)
        outcome = _book_saga(obj, participants, request, fail_at, hooks)
        emit(as_json, _saga_document(request, outcome), _saga_text(request, outcome))
        _saga_exit(outcome)
        return
    config = CoordinatorConfig(obj.home, hooks=_hooks(point, crash=crash, seconds=pause_seconds))
    booked = _book_2pc(config, participants, request, fail_at)
    emit(as_json, _booked_document(request, booked), _booked_text(request, booked))


def _book_2pc(
    config: CoordinatorConfig,
    participants: dict[str, Participant],
    request: BookingRequest,
    fail_at: str | None,
) -> Booked:
    booking_id = fresh_booking_id()
    details: dict[str, object] = {"mode": "2pc", "booking_id": booking_id}
    with (
        interruptible(),
        _tables_needed(),
        Coordinator.open(list(participants.values()), config) as coordinator,
    ):
        try:
            return book_with_2pc(coordinator, request, booking_id, fail_at)
        except BookingRefused as err:
            raise Refused(
                f"booking refused: {err}; rolled back, nothing was changed", details
            ) from None
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: say what it left
            if coordinator.unsettled():
                raise InDoubtRemains(
                    f"interrupted: booking {booking_id} is in doubt; `twopc recover` "
                    "finishes it from its coordinator's log",
                    details,
                ) from None
            raise Failure(
                "interrupted: the booking was rolled back; nothing changed",
                details,
                outcome="aborted",
            ) from None


@contextmanager
def _tables_needed() -> Iterator[None]:
    """A missing table means `twopc flights init` was not run: say so."""
    try:
        yield
    except UndefinedTable as err:
        raise Failure(f"{err}: create the booking's tables with `twopc flights init`") from None


def _hooks(point: str | None, *, crash: bool, seconds: float) -> ProtocolHooks | None:
    if point is None:
        return None
    if point not in _POINTS:
        raise click.UsageError(f"{point} is a saga point: use it with --mode saga")
    return KillAt(CrashPoint(point)) if crash else PauseAt(CrashPoint(point), seconds)


def _saga_hooks(point: str | None, *, crash: bool, seconds: float) -> SagaHooks | None:
    if point is None:
        return None
    if point not in BOOKING_POINTS:
        raise click.UsageError(
            f"{point} is a 2PC point: saga points are {', '.join(BOOKING_POINTS)}"
        )
    found = BOOKING_POINTS[point]
    if crash:
        return KillAt(found.point, found.step)
    return PauseAt(found.point, seconds, found.step, name=point)


def _booked_document(request: BookingRequest, booked: Booked) -> dict[str, object]:
    outcome = booked.outcome
    return {
        "mode": "2pc",
        "outcome": "booked",
        "booking_id": booked.booking_id,
        **request.params(),
        "gtrid": outcome.gtrid,
        "protocol": outcome.protocol,
        "branches": outcome.branches,
        "confirmation": booked.confirmation,
        "elapsed_ms": round(outcome.elapsed * 1000, 3),
    }


def _booked_text(request: BookingRequest, booked: Booked) -> str:
    return "\n".join(
        [
            f"booked: {request}",
            f"booking:  {booked.booking_id}",
            f"gtrid:    {booked.outcome.gtrid} ({booked.outcome.protocol})",
            f"sent:     {booked.confirmation}",
            f"time:     {booked.outcome.elapsed * 1000:.1f} ms",
        ]
    )


def _book_saga(
    obj: Context,
    participants: dict[str, Participant],
    request: BookingRequest,
    fail_at: str | None,
    hooks: SagaHooks | None,
) -> SagaOutcome:
    booking_id = fresh_booking_id()  # the saga's id
    config = saga_config(obj, None, None, hooks)
    try:
        with (
            interruptible(),
            Orchestrator.open(list(participants.values()), config) as orchestrator,
        ):
            return orchestrator.run(BOOKING_SAGA, booking_params(request, fail_at), booking_id)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the log says where the saga stands
        raise InDoubtRemains(
            f"interrupted: booking {booking_id} may be unfinished; `twopc recover` finishes "
            "it, forward or backward (see `twopc sagas`)",
            {"mode": "saga", "booking_id": booking_id},
            outcome="unfinished",
        ) from None


def _saga_document(request: BookingRequest, outcome: SagaOutcome) -> dict[str, object]:
    state = outcome.state
    return {
        "mode": "saga",
        "outcome": "booked" if outcome.outcome == COMPLETED else outcome.outcome,
        "booking_id": outcome.saga_id,
        **request.params(),
        "orchestrator": outcome.orchestrator,
        "steps": [step.to_json() for step in step_reports(state, BOOKING_SAGA)],
        "last_error": state.last_error,
        "problems": list(state.problems),
        "elapsed_ms": round(outcome.elapsed * 1000, 3),
    }


def _saga_text(request: BookingRequest, outcome: SagaOutcome) -> str:
    state = outcome.state
    word = "booked" if outcome.outcome == COMPLETED else outcome.outcome
    lines = [
        f"{word}: {request}",
        f"booking:   {outcome.saga_id} (saga; orchestrator {outcome.orchestrator})",
        *(step.line() for step in step_reports(state, BOOKING_SAGA)),
    ]
    if not state.finished and state.last_error:
        lines.append(f"waiting:   {state.last_error}")
    lines.append(f"time:      {outcome.elapsed * 1000:.1f} ms")
    return "\n".join(lines)


def _saga_exit(outcome: SagaOutcome) -> None:
    """0 booked; 1 compensated or aborted; 3 unfinished or dead-lettered."""
    state = outcome.state
    details: dict[str, object] = {"mode": "saga", "booking_id": outcome.saga_id}
    if outcome.outcome == COMPLETED:
        return
    if state.finished:
        undone = "compensated in reverse order" if outcome.outcome == COMPENSATED else (
            "nothing had applied"
        )  # fmt: skip
        raise Failure(
            f"booking {outcome.saga_id} {outcome.outcome}: {state.last_error}; {undone}",
            details,
            outcome=outcome.outcome,
        )
    raise InDoubtRemains(
        f"booking {outcome.saga_id} is {outcome.outcome}: "
        f"{state.last_error or '; '.join(state.problems)}; `twopc recover` finishes it "
        "(see `twopc sagas`)",
        details,
        outcome=outcome.outcome,
    )


flights.add_command(serve)
flights.add_command(trace)


# -- show -----------------------------------------------------------------------------------------


@flights.command("show")
@click.argument("flight", required=False)
@json_option
@click.pass_obj
@operational_errors
def show(obj: Context, flight: str | None, as_json: bool) -> None:
    """Seats, bookings, payments and confirmations (of FLIGHT, default all), with what is
    pending (unfinished sagas) or in doubt (prepared 2PC branches)."""
    if flight is not None and not is_flight(flight):
        raise BadInput(f"flight {flight!r} must be two capital letters or digits and 1-4 digits")
    participants = _participants(obj)
    with _tables_needed():
        view = read_flights(participants, flight)
        in_doubt = find_in_doubt(list(participants.values()), obj.home, with_blocking=False)
    doubtful = [
        {"gtrid": b.gtrid, "participant": b.participant, "decision": b.decision}
        for b in in_doubt.branches
    ]
    unfinished = _unfinished_bookings(obj)
    document = view.to_json() | {"in_doubt": doubtful, "unfinished_sagas": unfinished}
    emit(as_json, document, _show_text(document))


def _unfinished_bookings(obj: Context) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    for log in all_orchestrators(obj.home):
        for state in log.sagas:
            if state.definition == BOOKING_SAGA_NAME:
                found.append(
                    {
                        "booking_id": state.saga_id,
                        "status": outcome_of(state),
                        "direction": "backward" if state.backward else "forward",
                        "orchestrator": log.orchestrator,
                        "orchestrator_alive": log.alive,
                        "last_error": state.last_error,
                    }
                )
    return found


def _show_text(document: dict[str, Any]) -> str:
    lines = ["seats:"]
    for flight in sorted({s["flight"] for s in document["seats"]}):
        seats = [s for s in document["seats"] if s["flight"] == flight]
        free = sum(s["state"] == "available" for s in seats)
        taken = [f"{s['seat']} {s['state']}" for s in seats if s["state"] != "available"]
        lines.append(f"  {flight}: {free} available; " + (", ".join(taken) or "none taken"))
    lines.append("bookings:")
    lines += [
        f"  {b['booking_id']}  {b['flight']} {b['seat']}  {b['customer']}  {b['amount']}"
        f"  {b['state']}"
        for b in document["bookings"]
    ] or ["  none"]
    lines.append("payments:")
    lines += [
        f"  {p['payment_id']}  {p['booking_id']}  {p['kind']}  {p['amount']}"
        for p in document["payments"]
    ] or ["  none"]
    lines.append("confirmations:")
    lines += [f"  {c['message']}" for c in document["confirmations"]] or ["  none"]
    pending = document["pending"]
    lines.append(
        "pending: "
        + (", ".join([*pending["seats"], *pending["bookings"]]) or "nothing")
        + " (unfinished sagas)"
    )
    lines += [
        f"unfinished saga {u['booking_id']}: {u['status']}, going {u['direction']}"
        f" (orchestrator {u['orchestrator']}, {'alive' if u['orchestrator_alive'] else 'dead'})"
        + (f": {u['last_error']}" if u["last_error"] else "")
        for u in document["unfinished_sagas"]
    ]
    lines += [
        f"in doubt: {d['gtrid']} prepared on {d['participant']} (decision {d['decision']});"
        " `twopc recover` finishes it"
        for d in document["in_doubt"]
    ]
    return "\n".join(lines)


# -- check ----------------------------------------------------------------------------------------


@flights.command("check")
@click.argument("flight", required=False)
@json_option
@click.pass_obj
@json_failures
@operational_errors
def check(obj: Context, flight: str | None, as_json: bool) -> None:
    """Check what must hold once every booking has finished (of FLIGHT, default all): a
    seat booked by at most one confirmed booking, which holds it; a confirmed booking's net
    charge its amount, a cancelled one's zero; a confirmation exactly for the confirmed
    bookings; nothing pending, prepared or unfinished (run `twopc recover` first).

    Exit status: 0 none broken; 1 violations (one line each, or in the JSON document).
    """
    if flight is not None and not is_flight(flight):
        raise BadInput(f"flight {flight!r} must be two capital letters or digits and 1-4 digits")
    participants = _participants(obj)
    with _tables_needed():
        found = check_flights(participants, flight, home=obj.home)
    document = {"flight": flight, "violations": [v.to_json() for v in found]}
    emit(as_json, document, "\n".join(str(v) for v in found) or "no violations")
    if found:
        after = (
            "; prepared, pending or unfinished ones: run `twopc recover`, then check again"
            if any(v.rule == SETTLED for v in found)
            else "; see `twopc flights show` and `twopc audit`"
        )
        raise Failure(
            f"{len(found)} violation(s) of the booking's rules{after}", outcome="violations"
        )
