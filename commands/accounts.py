"""`twopc init` and `twopc balances`: the demo bank's schema and accounts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import click

from twopc.bank import SIDES, AccountRef, Balances, parse_amount, read_balances
from twopc.commands.common import Context, emit, json_option, operational_errors
from twopc.coordinator import CoordinatorError
from twopc.coordinator.recovery import RecoveryError, find_in_doubt
from twopc.participants import Participant, ParticipantError


@click.command()
@click.option(
    "--accounts",
    "accounts_count",
    default=100,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Seed accounts a1…aN on each side.",
)
@click.option(
    "--balance", default="1000.00", show_default=True, help="Opening balance of seeded accounts."
)
@click.option("--reset", is_flag=True, help="Drop and recreate the tables first (destroys data).")
@json_option
@click.pass_obj
@operational_errors
def init(obj: Context, accounts_count: int, balance: str, reset: bool, as_json: bool) -> None:
    """Create the schema on both servers (idempotent) and seed accounts."""
    # SQLAlchemy's DDL is slow to import; only init needs it.
    from twopc.bank.schema import check_reset_allowed, init_schema

    opening = parse_amount(balance)
    urls = {side: obj.url(side) for side in SIDES}
    if reset:  # both sides before either: a refusal leaves both as they were
        check_reset_allowed(urls.values())
    added = {
        side: init_schema(url, accounts_count=accounts_count, balance=opening, reset=reset)
        for side, url in urls.items()
    }
    for participant in obj.participants(SIDES):
        participant.ensure_outcome_table()  # what the coordinator needs, made by the owner
    text = "\n".join(
        f"{side:<6} {urls[side].location()}: schema ready, {n} accounts added"
        for side, n in added.items()
    )
    emit(as_json, {"added": added, "accounts": accounts_count, "balance": str(opening)}, text)


@click.command()
@click.argument("accounts", nargs=-1)
@json_option
@click.pass_obj
@operational_errors
def balances(obj: Context, accounts: tuple[str, ...], as_json: bool) -> None:
    """Balances of ACCOUNTS (default: all), with totals per side and overall.

    Totals always cover every account.
    """
    wanted = {AccountRef.parse(text) for text in accounts}
    participants = obj.participants(SIDES)
    result = read_balances(participants)
    rows = {
        side: [(i, b) for i, b in side_rows if not wanted or AccountRef(side, i) in wanted]
        for side, side_rows in result.sides.items()
    }
    missing = wanted - {
        AccountRef(side, i) for side, side_rows in rows.items() for i, _ in side_rows
    }
    if missing:
        raise click.ClickException(f"unknown account {', '.join(sorted(map(str, missing)))}")
    in_doubt = _in_doubt(obj, participants)
    if in_doubt:
        click.echo(_in_doubt_warning(in_doubt), err=True)
    document = _balances_document(result, rows) | {"in_doubt": in_doubt}
    emit(as_json, document, _balances_text(result, rows))


def _in_doubt(obj: Context, participants: list[Participant]) -> list[dict[str, object]] | None:
    """Our prepared transactions, read after the balances; ``None`` if they cannot be read.

    Plain reads do not wait for a prepared branch's row locks: they see the rows as they were
    before it. Once one branch of a transfer has committed and the other is still prepared,
    the balances show that transfer half applied.
    """
    try:
        report = find_in_doubt(participants, obj.home, with_blocking=False)
    except (ParticipantError, CoordinatorError, RecoveryError) as err:
        click.echo(f"warning: in-doubt transactions unknown: {err}", err=True)
        return None
    found: dict[str, dict[str, Any]] = {}
    for branch in report.branches:
        entry = found.setdefault(
            branch.gtrid, {"gtrid": branch.gtrid, "prepared_on": [], "decision": branch.decision}
        )
        entry["prepared_on"].append(branch.participant)
    return list(found.values())


def _in_doubt_warning(in_doubt: list[dict[str, object]]) -> str:
    return (
        f"warning: {len(in_doubt)} transaction(s) in doubt; until `twopc recover` finishes them "
        "these balances can show a transfer half applied (committed on one server, prepared "
        "on the other): see `twopc in-doubt`"
    )


def _balances_document(
    result: Balances, rows: dict[str, list[tuple[str, Decimal]]]
) -> dict[str, object]:
    return {
        "accounts": {side: {i: str(b) for i, b in side_rows} for side, side_rows in rows.items()},
        "totals": {side: str(result.total(side)) for side in result.sides},
        "overall": str(result.overall),
        "pending": {
            side: _pending_shown(result, side, side_rows) for side, side_rows in rows.items()
        },
        "pending_totals": {side: str(result.pending_total(side)) for side in result.sides},
        "pending_overall": str(result.pending_overall),
    }


def _pending_shown(
    result: Balances, side: str, side_rows: list[tuple[str, Decimal]]
) -> dict[str, str]:
    held = result.pending.get(side, {})
    return {i: str(held[i]) for i, _ in side_rows if i in held}


def _balances_text(result: Balances, rows: dict[str, list[tuple[str, Decimal]]]) -> str:
    """Pending amounts (money unfinished sagas have in flight) follow the balance they left."""
    lines = []
    for side, side_rows in rows.items():
        held = result.pending.get(side, {})
        lines += [
            f"{side + ':' + account:<16} {balance:>16}{_pending_note(held.get(account))}"
            for account, balance in side_rows
        ]
        total = result.total(side)
        lines.append(
            f"{'total ' + side:<16} {total:>16}{_pending_note(result.pending_total(side))}"
        )
    lines.append(f"{'total':<16} {result.overall:>16}{_pending_note(result.pending_overall)}")
    return "\n".join(lines)


def _pending_note(amount: Decimal | None) -> str:
    return f"  + {amount} pending (unfinished sagas)" if amount else ""
