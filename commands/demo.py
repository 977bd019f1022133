"""`twopc demo`: demonstrations narrated with measured figures."""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal
from typing import TYPE_CHECKING

import click

from twopc.bank import SIDES
from twopc.bank.demo import DemoError, blocking_demo
from twopc.commands.common import Context, emit, json_option, operational_errors, seconds_option
from twopc.commands.outbox_common import broker_url_option, outbox_errors, resolve_broker_url

if TYPE_CHECKING:
    from twopc.bank.dual_write import DualWriteFigures


@click.group()
def demo() -> None:
    """Demonstrations on the configured servers, narrated with measured figures."""


@demo.command("blocking")
@seconds_option(
    "--hold",
    3.0,
    "Seconds to leave the second transfer blocked before recovering.",
    maximum=60.0,  # the blocked transfer waits 120 s for its lock (bank/demo.py)
)
@json_option
@click.pass_obj
@operational_errors
def demo_blocking(obj: Context, hold: float, as_json: bool) -> None:
    """Kill a coordinator after prepare, watch a transfer block, recover, check balances.

    Uses accounts a1 and a2 on both sides (created with 1000.00 if missing).
    """
    from twopc.bank.schema import init_schema

    participants = obj.participants(SIDES)
    for participant in participants:
        init_schema(participant.url, accounts_count=2, balance=Decimal("1000.00"), reset=False)
    say = (lambda line: None) if as_json else click.echo
    try:
        figures = blocking_demo(participants, obj.home, say, hold=hold)
    except DemoError as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        emit(True, dataclasses.asdict(figures), "")


@demo.command("dual-write")
@click.option(
    "--operations",
    default=40,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Operations per mode (each moves 0.01 from pg:a1 to pg:a2).",
)
@click.option(
    "--kill-chance",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0.0, 0.9),
    help="Chance, per operation, that the worker is SIGKILLed between write and publish.",
)
@click.option("--seed", type=click.IntRange(0), help="Replay a run (default: a random seed).")
@broker_url_option
@json_option
@click.pass_obj
@operational_errors
@outbox_errors
def demo_dual_write(
    obj: Context,
    operations: int,
    kill_chance: float,
    seed: int | None,
    broker_url: str | None,
    as_json: bool,
) -> None:
    """Publish events straight to the broker (after the commit, then before it) while the
    worker is killed at random moments, then through the outbox; count lost events
    (committed, never delivered), phantom events (delivered, never committed) and duplicates
    the consumer absorbed.

    Uses accounts a1 and a2 on PostgreSQL (created with 1000.00 if missing) and the queue
    twopc.dual-write.
    """
    from twopc.bank.dual_write import DualWriteError, run_dual_write
    from twopc.bank.schema import init_schema

    url = resolve_broker_url(obj, broker_url)
    (pg,) = obj.participants(["pg"])
    init_schema(pg.url, accounts_count=2, balance=Decimal("1000.00"), reset=False)
    chosen = random.SystemRandom().randrange(2**31) if seed is None else seed
    say = (lambda line: None) if as_json else click.echo
    try:
        figures = run_dual_write(pg.url, url, operations, kill_chance, chosen, say)
    except DualWriteError as err:
        raise click.ClickException(str(err)) from None
    emit(as_json, dataclasses.asdict(figures), _dual_write_table(figures))


def _dual_write_table(figures: DualWriteFigures) -> str:
    lines = [
        f"{figures.operations} operations per mode, kill chance {figures.kill_chance}, "
        f"seed {figures.seed}",
        f"{'mode':<14}{'committed':>10}{'delivered':>10}{'lost':>6}{'phantom':>8}"
        f"{'duplicates':>11}{'kills':>7}",
    ]
    for m in figures.modes:
        kills = m.worker_kills + m.relay_kills
        lines.append(
            f"{m.mode:<14}{m.committed:>10}{m.delivered:>10}{m.lost:>6}{m.phantom:>8}"
            f"{m.duplicates:>11}{kills:>7}"
        )
    return "\n".join(lines)
