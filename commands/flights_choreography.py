"""`twopc flights book --mode choreography`, `twopc flights serve` and `twopc flights trace`:
the booking as a choreographed saga, its services, and one booking's story read back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import click

from twopc.commands.common import (
    BadInput,
    Context,
    Failure,
    InDoubtRemains,
    emit,
    interruptible,
    json_option,
    operational_errors,
    seconds_option,
)
from twopc.commands.outbox_common import (
    TOPOLOGY,
    broker_url_option,
    outbox_errors,
    resolve_broker_url,
    stop_on_signals,
)
from twopc.flights import DATABASES, BookingRequest, fresh_booking_id
from twopc.flights.booking import is_booking_id
from twopc.flights.choreography import (
    BOOKED,
    CHARGED,
    CREATED,
    REFUSED,
    REQUESTED,
    SEAT_HELD,
    SERVICES,
    UNFINISHED,
    TraceEntry,
    outcome_of,
    request_booking,
)
from twopc.flights.services import BookingTrace, KillBeforeAck, Services, read_trace, trace_entries
from twopc.outbox import ConsumerStats
from twopc.participants import Participant, UndefinedTable

#: Where ``--crash-at`` stops a choreographed booking: the service that has committed its
#: handling of the event (its change, its next event, its trace) and not acknowledged it.
CHOREOGRAPHY_POINTS: Mapping[str, KillBeforeAck] = {
    "after-seat": KillBeforeAck("seats", REQUESTED),
    "after-booking": KillBeforeAck("bookings", SEAT_HELD),
    "after-charge-commit": KillBeforeAck("payments", CREATED),
    "after-confirm": KillBeforeAck("bookings", CHARGED),
}
POLL = 0.01  # seconds between looks at the traces while a booking runs


@contextmanager
def _tables_needed() -> Iterator[None]:
    try:
        yield
    except UndefinedTable as err:
        raise Failure(f"{err}: create the booking's tables with `twopc flights init`") from None


@contextmanager
def _quiet_services() -> Iterator[None]:
    """A one-shot `book` reports its services' outages once, in its error, instead of the
    warnings a long-running relay or consumer logs at each retry."""
    outbox = logging.getLogger("twopc.outbox")
    level = outbox.level
    outbox.setLevel(logging.ERROR)
    try:
        yield
    finally:
        outbox.setLevel(level)


def choreography_kill(point: str | None) -> KillBeforeAck | None:
    """The kill ``--crash-at POINT`` means for a choreographed booking (usage error when
    it means nothing there)."""
    if point is None:
        return None
    if point not in CHOREOGRAPHY_POINTS:
        raise click.UsageError(
            f"{point} is no choreography point: those are {', '.join(CHOREOGRAPHY_POINTS)}"
        )
    return CHOREOGRAPHY_POINTS[point]


def wait_for_outcome(
    participants: Mapping[str, Participant],
    booking_id: str,
    deadline: float,
    failed: Callable[[], list[str]] = list,
) -> tuple[str, str, list[TraceEntry]]:
    """Poll the traces until ``booking_id`` is finished or ``deadline`` (monotonic) passes:
    (outcome, what it waits for, its trace entries)."""
    while True:
        entries = trace_entries(participants, booking_id)
        outcome, waiting = outcome_of(entries)
        if outcome != UNFINISHED or time.monotonic() >= deadline or failed():
            return outcome, waiting, entries
        time.sleep(POLL)


def book_choreography(
    obj: Context,
    participants: dict[str, Participant],
    request: BookingRequest,
    fail_at: str | None,
    broker_url: str | None,
    deadline: float,
    crash_at: str | None,
    as_json: bool,
) -> None:
    """Write ``booking.requested`` and run the services in this process until the booking
    is finished or ``deadline`` seconds pass; print where it stands and exit as it ends
    (0 booked; 1 refused or compensated; 3 unfinished)."""
    kill = choreography_kill(crash_at)
    url = resolve_broker_url(obj, broker_url)
    booking_id = fresh_booking_id()
    details: dict[str, object] = {"mode": "choreography", "booking_id": booking_id}
    urls = {name: p.url for name, p in participants.items()}
    started = time.monotonic()
    with _tables_needed(), interruptible(), _quiet_services():
        services = Services(urls, url, kill=kill, topology=TOPOLOGY)
        try:
            services.start()
            with participants["bookings"].local_transaction() as tx:
                request_booking(tx, booking_id, request, fail_at)
            outcome, waiting, entries = wait_for_outcome(
                participants, booking_id, started + deadline, lambda: services.errors
            )
        except KeyboardInterrupt:
            raise InDoubtRemains(
                f"interrupted: booking {booking_id} may be unfinished; its events wait in the "
                "outboxes and queues: `twopc flights serve --until "
                f"{booking_id}` finishes it",
                details,
                outcome=UNFINISHED,
            ) from None
        finally:
            services.stop()
    elapsed = time.monotonic() - started
    document = _book_document(request, booking_id, outcome, entries, elapsed)
    emit(as_json, document, _book_text(request, booking_id, outcome, entries, elapsed))
    _raise_unless_booked(booking_id, outcome, waiting, entries, details, services.problems())


def _book_document(
    request: BookingRequest,
    booking_id: str,
    outcome: str,
    entries: list[TraceEntry],
    elapsed: float,
) -> dict[str, object]:
    return {
        "mode": "choreography",
        "outcome": outcome,
        "booking_id": booking_id,
        **request.params(),
        "events": [e.to_json() for e in entries],
        "elapsed_ms": round(elapsed * 1000, 3),
    }


def _chain(entries: list[TraceEntry]) -> str:
    return " -> ".join(e.event_type for e in entries if e.direction == "emitted")


def _book_text(
    request: BookingRequest,
    booking_id: str,
    outcome: str,
    entries: list[TraceEntry],
    elapsed: float,
) -> str:
    return "\n".join(
        [
            f"{outcome}: {request}",
            f"booking:   {booking_id} (choreography: no orchestrator)",
            f"events:    {_chain(entries)}",
            f"time:      {elapsed * 1000:.1f} ms",
            f"trace:     twopc flights trace {booking_id}",
        ]
    )


def _raise_unless_booked(
    booking_id: str,
    outcome: str,
    waiting: str,
    entries: list[TraceEntry],
    details: dict[str, object],
    errors: list[str],
) -> None:
    if outcome == BOOKED:
        return
    details = details | {"events": [e.to_json() for e in entries]}
    why = next((e.reason for e in entries if e.reason), "")
    if outcome == REFUSED:
        raise Failure(
            f"booking {booking_id} refused: {why}; nothing to undo ({_chain(entries)})",
            details,
            outcome=outcome,
        )
    if outcome != UNFINISHED:
        raise Failure(
            f"booking {booking_id} {outcome}: {why}; {_chain(entries)}", details, outcome=outcome
        )
    trouble = f"; {'; '.join(errors)}" if errors else ""
    raise InDoubtRemains(
        f"booking {booking_id} unfinished at the deadline: waiting for {waiting}{trouble}; "
        f"its events wait in the outboxes and queues: `twopc flights serve --until {booking_id}` "
        "finishes it",
        details,
        outcome=UNFINISHED,
    )


# -- serve ------------------------------------------------------------------------------------


@click.command("serve")
@click.option(
    "--service",
    "services",
    multiple=True,
    type=click.Choice(SERVICES),
    help="Run only this service's handler (repeatable; default: all four).",
)
@click.option("--no-relay", is_flag=True, help="Do not run a relay in this process.")
@click.option(
    "--until",
    "until",
    metavar="BOOKING",
    help="Stop once this booking is finished (exit as `book` does).",
)
@seconds_option("--deadline", 60.0, "With --until: give up after this long (exit 3).", minimum=0.1)
@seconds_option(
    "--idle-exit",
    None,
    "Without --until: exit once every handler has gone this long without a message.",
    minimum=0.1,
)
@click.option(
    "--crash-at",
    type=click.Choice(list(CHOREOGRAPHY_POINTS)),
    help="SIGKILL this process when its service has committed the handling of an event and "
    "not acknowledged it (as `book --crash-at`).",
)
@broker_url_option
@json_option
@click.pass_obj
@operational_errors
@outbox_errors
def serve(
    obj: Context,
    services: tuple[str, ...],
    no_relay: bool,
    until: str | None,
    deadline: float,
    idle_exit: float | None,
    crash_at: str | None,
    broker_url: str | None,
    as_json: bool,
) -> None:
    """Run the choreographed booking's services — the relay over the three outboxes and the
    handlers of seats, bookings, payments and notifier — until SIGTERM or Ctrl-C, or with
    --until until that booking is finished. Exit 0; with --until as `book`: 1 refused or
    compensated, 3 unfinished at the deadline."""
    if until is not None and not is_booking_id(until):
        raise BadInput(f"booking {until!r} must look like bk-<20 hex digits>")
    participants = {p.name: p for p in obj.participants(DATABASES)}
    url = resolve_broker_url(obj, broker_url)
    urls = {name: p.url for name, p in participants.items()}
    chosen = services or SERVICES
    started = time.monotonic()
    with _tables_needed(), stop_on_signals() as stop:
        running = Services(
            urls,
            url,
            services=chosen,
            relay=not no_relay,
            kill=choreography_kill(crash_at),
            topology=TOPOLOGY,
            idle_exit=None if until else idle_exit,
        ).start()
        try:
            outcome, waiting, entries = _serve_until(
                participants, until, started + deadline, stop, running
            )
        finally:
            running.stop()
    document = {
        "services": list(chosen),
        "relay": not no_relay,
        "until": until,
        "outcome": outcome,
        "errors": running.problems(),
        "handled": {name: _handled(stats) for name, stats in running.stats.items()},
        "seconds": round(time.monotonic() - started, 3),
    }
    if until is not None:
        _raise_unless_booked(
            until, outcome, waiting, entries, {"booking_id": until}, running.problems()
        )
    text = (
        f"served {', '.join(chosen)}{'' if no_relay else ' and the relay'}"
        + (f"; booking {until} {outcome}" if until else "")
        + "".join(
            f"\n{name}: applied {st.applied}, duplicates absorbed {st.duplicates}, "
            f"dead-lettered {st.dead_lettered}"
            for name, st in running.stats.items()
        )
        + "".join(f"\nerror: {e}" for e in running.problems())
    )
    emit(as_json, document, text)


def _serve_until(
    participants: Mapping[str, Participant],
    until: str | None,
    deadline: float,
    stop: Callable[[], bool],
    running: Services,
) -> tuple[str, str, list[TraceEntry]]:
    if until is not None:
        return wait_for_outcome(
            participants, until, deadline, lambda: running.errors if not stop() else ["stopped"]
        )
    while not stop() and running.handlers_running():
        time.sleep(0.1)
    return "", "", []


def _handled(stats: ConsumerStats) -> dict[str, int]:
    return {
        "applied": stats.applied,
        "duplicates": stats.duplicates,
        "dead_lettered": stats.dead_lettered,
    }


# -- trace ------------------------------------------------------------------------------------


@click.command("trace")
@click.argument("booking")
@json_option
@click.pass_obj
@operational_errors
def trace(obj: Context, booking: str, as_json: bool) -> None:
    """Reconstruct one choreographed booking from the three databases: the events each
    service consumed and emitted, in time order, what still waits in an outbox or is
    parked, and the seat, booking, payments and confirmation as they stand."""
    if not is_booking_id(booking):
        raise BadInput(f"booking {booking!r} must look like bk-<20 hex digits>")
    participants = {p.name: p for p in obj.participants(DATABASES)}
    with _tables_needed():
        found = read_trace(participants, booking)
    if not found.found():
        raise Failure(f"no booking {booking} in the flights, bookings or payments database")
    outcome, waiting = outcome_of(found.entries)
    emit(as_json, _trace_document(found, outcome, waiting), _trace_text(found, outcome, waiting))


def _trace_document(found: BookingTrace, outcome: str, waiting: str) -> dict[str, Any]:
    return {
        "booking_id": found.booking_id,
        "outcome": outcome,
        "waiting_for": waiting,
        "events": [e.to_json() for e in found.entries],
        "unpublished": found.unpublished,
        "parked": found.parked,
        "seats": found.seats,
        "bookings": found.bookings,
        "payments": found.payments,
        "confirmations": found.confirmations,
    }


def _trace_text(found: BookingTrace, outcome: str, waiting: str) -> str:
    lines = [
        f"booking {found.booking_id}: {outcome}" + (f", waiting for {waiting}" if waiting else "")
    ]
    start = found.entries[0].at if found.entries else 0.0
    lines.append("events (ms after the first):")
    lines += [
        f"  {(e.at - start) * 1000:9.1f}  {e.service:<9} {e.direction:<9} {e.event_type}"
        + (f" ({e.reason})" if e.reason else "")
        for e in found.entries
    ] or ["  none"]
    lines += [f"  seat:         {s['flight']} {s['seat']} {s['state']}" for s in found.seats]
    lines += [
        f"  booking:      {b['flight']} {b['seat']} {b['customer']} {b['amount']} {b['state']}"
        for b in found.bookings
    ]
    lines += [
        f"  payment:      {p['kind']} {p['amount']} ({p['payment_id']})" for p in found.payments
    ]
    lines += [f"  confirmation: {c['message']}" for c in found.confirmations]
    lines += [
        f"  unpublished:  {u['event_type']} in {u['database']}'s outbox" for u in found.unpublished
    ]
    lines += [
        f"  parked:       {p['event_type']} in {p['database']}: {p['last_error']}"
        for p in found.parked
    ]
    return "\n".join(lines)
