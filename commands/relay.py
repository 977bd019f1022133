"""`twopc relay`: publish the outboxes' events to RabbitMQ; list and retry parked events."""

from __future__ import annotations

import dataclasses
import time
import uuid

import click

from twopc.bank import SIDES
from twopc.commands.common import BadInput, Context, Failure, emit, json_option, operational_errors
from twopc.commands.outbox_common import (
    TOPOLOGY,
    broker_url_option,
    outbox_errors,
    resolve_broker_url,
    stop_on_signals,
)
from twopc.outbox import (
    ParkedEvent,
    Publisher,
    Relay,
    RelayConfig,
    RelayStats,
    ensure_outbox_tables,
    outbox_state,
    parked_events,
    redacted,
    retry_parked,
)


@click.group("relay", invoke_without_command=True)
@click.option("--once", is_flag=True, help="Publish what is publishable now, then exit.")
@click.option(
    "--batch",
    default=100,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Events claimed per database transaction.",
)
@click.option(
    "--max-attempts",
    default=5,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Refusals by the broker before an event is parked.",
)
@click.option(
    "--poll",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0.001, 60),
    help="Seconds between looks at empty outboxes.",
)
@broker_url_option
@json_option
@click.pass_context
@operational_errors
@outbox_errors
def relay(
    ctx: click.Context,
    once: bool,
    batch: int,
    max_attempts: int,
    poll: float,
    broker_url: str | None,
    as_json: bool,
) -> None:
    """Publish the outbox events of both databases to RabbitMQ, deleting each one only after
    the broker confirmed it durably. Runs until SIGTERM or Ctrl-C (then finishes its batch),
    or with --once until nothing is left to publish. Several relays may run at once."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Context = ctx.obj
    url = resolve_broker_url(obj, broker_url)
    sources = obj.participants(SIDES)
    for source in sources:
        ensure_outbox_tables(source)
    config = RelayConfig(batch=batch, max_attempts=max_attempts, poll=poll)
    started = time.monotonic()
    with stop_on_signals() as stop:
        worker = Relay(sources, Publisher(url, TOPOLOGY), config)
        try:
            stats = worker.drain(stop) if once else worker.run(stop)
        finally:
            worker.publisher.close()
    elapsed = time.monotonic() - started
    document = {**dataclasses.asdict(stats), "seconds": round(elapsed, 3), "broker": redacted(url)}
    emit(as_json, document, _stats_text(stats, elapsed))


def _stats_text(stats: RelayStats, elapsed: float) -> str:
    sources = ", ".join(f"{name} {n}" for name, n in sorted(stats.by_source.items())) or "none"
    line = (
        f"published {stats.published} events ({sources}) in {elapsed:.1f}s; "
        f"refused {stats.refused}, parked {stats.parked}, broker outages {stats.outages}"
    )
    return line + (f"\nlast error: {stats.last_error}" if stats.last_error else "")


@relay.command("status")
@json_option
@click.pass_obj
@operational_errors
def relay_status(obj: Context, as_json: bool) -> None:
    """How many events wait in each outbox to be published, the oldest one's age, and how
    many are parked."""
    now = time.time()
    document: dict[str, object] = {}
    lines = []
    for side, participant in zip(SIDES, obj.participants(SIDES), strict=True):
        state, parked = outbox_state(participant), len(parked_events(participant))
        age = None if state.oldest_created_at is None else round(now - state.oldest_created_at, 3)
        document[side] = {"pending": state.pending, "oldest_age_s": age, "parked": parked}
        oldest = "" if age is None else f", the oldest {age:.1f}s old"
        lines.append(f"{side:<6} {state.pending} to publish{oldest}; {parked} parked")
    emit(as_json, document, "\n".join(lines))


@relay.command("parked")
@json_option
@click.pass_obj
@operational_errors
def relay_parked(obj: Context, as_json: bool) -> None:
    """Events the broker refused --max-attempts times, set aside (retry with `twopc relay
    retry EVENT_ID`)."""
    found = {side: parked_events(p) for side, p in zip(SIDES, obj.participants(SIDES), strict=True)}
    document = {side: [_parked_document(e) for e in events] for side, events in found.items()}
    lines = [_parked_line(side, e) for side, events in found.items() for e in events]
    emit(as_json, document, "\n".join(lines) or "no parked events")


def _parked_document(parked: ParkedEvent) -> dict[str, object]:
    event = parked.event
    return {
        "event_id": event.event_id,
        "aggregate": event.aggregate,
        "type": event.type,
        "payload": dict(event.payload),
        "created_at": event.created_at,
        "attempts": parked.attempts,
        "last_error": parked.last_error,
        "parked_at": parked.parked_at,
    }


def _parked_line(side: str, parked: ParkedEvent) -> str:
    event = parked.event
    return (
        f"{side:<6} {event.event_id}  {event.type:<20} {event.aggregate:<12} "
        f"{parked.attempts} attempts: {parked.last_error}"
    )


@relay.command("retry")
@click.argument("event_id")
@click.pass_obj
@operational_errors
def relay_retry(obj: Context, event_id: str) -> None:
    """Put a parked event back in its outbox (the relay publishes it again)."""
    try:
        uuid.UUID(event_id)
    except ValueError:
        raise BadInput(f"{event_id!r} is not an event id (a UUID)") from None
    for side, participant in zip(SIDES, obj.participants(SIDES), strict=True):
        if retry_parked(participant, event_id):
            click.echo(f"event {event_id} is back in the {side} outbox")
            return
    raise Failure(f"no parked event {event_id!r}: see `twopc relay parked`")
