"""`twopc demo`: demonstrations narrated with measured figures."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import click

from twopc.bank import SIDES
from twopc.bank.demo import DemoError, blocking_demo
from twopc.commands.common import Context, emit, json_option, operational_errors, seconds_option


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
