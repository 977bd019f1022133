"""`twopc consume NAME`: run one of the bank's idempotent consumers against its queue."""

from __future__ import annotations

import dataclasses
import time

import click

from twopc.bank import SIDES
from twopc.bank.notifications import CONSUMERS
from twopc.commands.common import BadInput, Context, emit, json_option, operational_errors
from twopc.commands.outbox_common import (
    TOPOLOGY,
    broker_url_option,
    outbox_errors,
    resolve_broker_url,
    stop_on_signals,
)
from twopc.outbox import ConsumerConfig, ConsumerRunner, ConsumerStats, redacted
from twopc.saga import parse_duration


@click.command("consume")
@click.argument("name", type=click.Choice(sorted(CONSUMERS)))
@click.option(
    "--on",
    "side",
    type=click.Choice(SIDES),
    default="pg",
    show_default=True,
    help="The database the consumer's effect and its record of event ids are written to.",
)
@click.option(
    "--idle-exit",
    type=click.FloatRange(0.1, 86400),
    help="Exit after this many seconds without a message (default: run until SIGTERM/Ctrl-C).",
)
@click.option(
    "--prefetch",
    default=50,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Messages in flight to this consumer.",
)
@click.option(
    "--retention",
    default="7d",
    show_default=True,
    help="How long applied event ids are remembered (redeliveries come sooner).",
)
@broker_url_option
@json_option
@click.pass_obj
@operational_errors
@outbox_errors
def consume(
    obj: Context,
    name: str,
    side: str,
    idle_exit: float | None,
    prefetch: int,
    retention: str,
    broker_url: str | None,
    as_json: bool,
) -> None:
    """Run consumer NAME: each event's effect and the record of its id commit in one local
    transaction, so an event delivered twice changes nothing the second time.

    notifications: one confirmation per committed transfer (table transfer_confirmations).
    """
    try:
        keep = parse_duration(retention)
    except ValueError as err:
        raise BadInput(f"--retention: {err}") from None
    url = resolve_broker_url(obj, broker_url)
    (participant,) = obj.participants((side,))
    config = ConsumerConfig(prefetch=prefetch, retention=keep)
    runner = ConsumerRunner.open(CONSUMERS[name], participant, url, TOPOLOGY, config)
    started = time.monotonic()
    with stop_on_signals() as stop:
        stats = runner.run(stop, idle_exit=idle_exit)
    elapsed = time.monotonic() - started
    document = {
        **dataclasses.asdict(stats),
        "consumer": name,
        "seconds": round(elapsed, 3),
        "broker": redacted(url),
    }
    document.pop("applied_ids")
    emit(as_json, document, _stats_text(name, stats, elapsed))


def _stats_text(name: str, stats: ConsumerStats, elapsed: float) -> str:
    line = (
        f"{name}: applied {stats.applied} events in {elapsed:.1f}s; duplicates absorbed "
        f"{stats.duplicates}, dead-lettered {stats.dead_lettered}, outages {stats.outages}"
    )
    return line + (f"\nlast error: {stats.last_error}" if stats.last_error else "")
