"""The ``twopc`` command line: thin — it parses, calls the library, and prints.

Exit codes: 0 success; 1 operational failure (refused transfer, unreachable server, a saga
compensated, …); 2 misuse (bad arguments); 3 in-doubt transactions or unfinished sagas remain
(run ``twopc recover``, or ``twopc sagas`` to see them).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import click

from bank import (
    SIDES,
    AccountRef,
    Balances,
    InvalidInput,
    Transfer,
    TransferRejected,
    parse_amount,
    read_balances,
    run_transfer,
)
from bank.demo import DemoError, blocking_demo
from coordinator import (
    CRASH_POINT_HELP,
    Coordinator,
    CoordinatorConfig,
    CoordinatorError,
    CrashPoint,
    InDoubt,
    InvalidCoordinatorId,
    KillAt,
    Outcome,
    PauseAt,
    ProtocolHooks,
    RetryPolicy,
    check_coordinator_id,
    coordinator_of,
)
from coordinator.audit import ATOMIC, IN_DOUBT, VIOLATION
from coordinator.audit import audit as run_audit
from coordinator.recovery import (
    DECISION_NONE,
    InDoubtBranch,
    InDoubtReport,
    RecoveryError,
    RecoveryReport,
    find_in_doubt,
)
from coordinator.recovery import recover as run_recovery
from coordinator.recovery import resolve as resolve_by_hand
from devserver import DevServerError, DevServers, DevState
from participants import (
    DatabaseURL,
    InvalidURL,
    LockWaitTimeout,
    Participant,
    ParticipantError,
    participant_for,
)
from participants.lockwaits import LockWait
from saga import (
    ABORTED,
    COMPENSATED,
    COMPLETED,
    SAGA_POINT_HELP,
    InvalidSagaId,
    KillSagaAt,
    Orchestrator,
    PauseSagaAt,
    SagaConfig,
    SagaError,
    SagaHooks,
    SagaOutcome,
    SagaPoint,
    SagaRecoveryReport,
    SagaState,
    all_orchestrators,
    amount_held,
    check_saga_id,
    outcome_of,
    parse_duration,
    prune,
    recover_sagas,
    retry_saga,
    step_reports,
)
from saga import DEFAULT_RETENTION as DEFAULT_SAGA_RETENTION
from txlog import LogError, Record, is_locked, read_log, verify_log

EXIT_IN_DOUBT = 3
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass
class Context:
    """What every command gets: the home directory and the configured database URLs."""

    home: Path
    urls: dict[str, str | None]

    @property
    def dev(self) -> DevServers:
        return DevServers(self.home / "dev")

    def url(self, side: str) -> DatabaseURL:
        """The URL for ``side`` from its option/env var, else the running dev servers."""
        text = self.urls[side] or self._dev_url(side)
        if text is None:
            option = "--pg-url / TWOPC_PG_URL" if side == "pg" else "--mysql-url / TWOPC_MYSQL_URL"
            raise click.UsageError(
                f"no {side} database configured: set {option} or run `twopc dev up`"
            )
        try:
            return DatabaseURL.parse(text, expect="pg" if side == "pg" else "mysql")
        except InvalidURL as err:
            raise click.UsageError(f"{side} URL: {err}") from None

    def participants(
        self, sides: Iterator[str] | tuple[str, ...], lock_wait: float = 30.0
    ) -> list[Participant]:
        return [participant_for(side, self.url(side), lock_wait=lock_wait) for side in sides]

    def _dev_url(self, side: str) -> str | None:
        try:
            state = self.dev.status()
        except DevServerError:
            return None
        if state is None:
            return None
        info = state.pg if side == "pg" else state.mysql
        return info.url if info.running else None


class BadInput(click.ClickException):
    """Malformed input: one line on stderr, exit 2, nothing attempted."""

    exit_code = 2


def json_option(command: _F) -> _F:
    """The shared ``--json`` flag: one JSON document on stdout instead of text for people."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(command)


def operational_errors(command: _F) -> _F:
    """Turn library errors into one-line messages and exit codes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (InvalidInput, InvalidSagaId) as err:
            raise BadInput(str(err)) from None
        except LockWaitTimeout as err:
            raise click.ClickException(f"{err}; rolled back, nothing was changed") from None
        except TransferRejected as err:
            raise click.ClickException(f"transfer refused: {err}; nothing was changed") from None
        except InDoubt as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(EXIT_IN_DOUBT)
        except (
            CoordinatorError,
            ParticipantError,
            DevServerError,
            RecoveryError,
            SagaError,
        ) as err:
            raise click.ClickException(str(err)) from None

    return wrapper  # type: ignore[return-value]


def emit(as_json: bool, document: object, text: str) -> None:
    click.echo(json.dumps(document, indent=2, default=str) if as_json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    envvar="TWOPC_HOME",
    default=".twopc",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Holds coordinator logs and dev servers. Env: TWOPC_HOME.",
)
@click.option(
    "--pg-url", envvar="TWOPC_PG_URL", help="postgresql://user@host:port/db. Env: TWOPC_PG_URL."
)
@click.option(
    "--mysql-url", envvar="TWOPC_MYSQL_URL", help="mysql://user@host:port/db. Env: TWOPC_MYSQL_URL."
)
@click.pass_context
def main(ctx: click.Context, home: Path, pg_url: str | None, mysql_url: str | None) -> None:
    """Atomic transfers across PostgreSQL and MySQL/MariaDB with two-phase commit.

    With no URL configured, the servers started by `twopc dev up` are used.
    Exit codes: 0 ok, 1 failure, 2 misuse, 3 in-doubt transactions or unfinished sagas remain.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    ctx.obj = Context(home, {"pg": pg_url, "mysql": mysql_url})


# -- dev servers ------------------------------------------------------------------------------


@main.group()
def dev() -> None:
    """Throwaway PostgreSQL and MariaDB servers under HOME/dev."""


@dev.command("up")
@click.pass_obj
@operational_errors
def dev_up(obj: Context) -> None:
    """Start both servers (harmless when already running)."""
    state = obj.dev.up()
    click.echo(_dev_status_text(state))
    click.echo('Use them from another shell with: eval "$(twopc dev env)"')


@dev.command("down")
@click.pass_obj
@operational_errors
def dev_down(obj: Context) -> None:
    """Stop both servers cleanly (data is kept)."""
    obj.dev.down()
    click.echo("dev servers stopped")


@dev.command("status")
@json_option
@click.pass_obj
@operational_errors
def dev_status(obj: Context, as_json: bool) -> None:
    """Show where the servers are and whether they run."""
    state = obj.dev.status()
    if state is None:
        raise click.ClickException(f"no dev servers under {obj.home / 'dev'}: run `twopc dev up`")
    document = {kind: _server_document(state, kind) for kind in SIDES}
    emit(as_json, document, _dev_status_text(state))


@dev.command("env")
@click.pass_obj
@operational_errors
def dev_env(obj: Context) -> None:
    """Print export lines for the servers' URLs: eval "$(twopc dev env)"."""
    state = obj.dev.status()
    if state is None:
        raise click.ClickException(f"no dev servers under {obj.home / 'dev'}: run `twopc dev up`")
    click.echo("\n".join(state.env_lines()))


def _server_document(state: DevState, kind: str) -> dict[str, object]:
    info = state.pg if kind == "pg" else state.mysql
    return {
        "url": info.url,
        "running": info.running,
        "pid": info.pid,
        "port": info.port,
        "datadir": str(info.datadir),
        "log": str(info.logfile),
    }


def _dev_status_text(state: DevState) -> str:
    lines = []
    for info in (state.pg, state.mysql):
        running = f"running (pid {info.pid})" if info.running else "stopped"
        lines.append(f"{info.kind:<6} {info.url:<45} {running}  log: {info.logfile}")
    return "\n".join(lines)


# -- schema and balances ----------------------------------------------------------------------


@main.command()
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
    from bank.schema import init_schema  # SQLAlchemy's DDL is slow to import; only init needs it

    opening = parse_amount(balance)
    urls = {side: obj.url(side) for side in SIDES}
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


@main.command()
@click.argument("accounts", nargs=-1)
@json_option
@click.pass_obj
@operational_errors
def balances(obj: Context, accounts: tuple[str, ...], as_json: bool) -> None:
    """Balances of ACCOUNTS (default: all), with totals per side and overall.

    Totals always cover every account.
    """
    wanted = {AccountRef.parse(text) for text in accounts}
    result = read_balances(obj.participants(SIDES))
    rows = {
        side: [(i, b) for i, b in side_rows if not wanted or AccountRef(side, i) in wanted]
        for side, side_rows in result.sides.items()
    }
    missing = wanted - {
        AccountRef(side, i) for side, side_rows in rows.items() for i, _ in side_rows
    }
    if missing:
        raise click.ClickException(f"unknown account {', '.join(sorted(map(str, missing)))}")
    emit(as_json, _balances_document(result, rows), _balances_text(result, rows))


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


# -- transfer ---------------------------------------------------------------------------------

_POINTS = [point.value for point in CrashPoint]
_SAGA_POINTS = [point.value for point in SagaPoint]
_POINTS_HELP = "; ".join(f"{p.value}: {text}" for p, text in CRASH_POINT_HELP.items())
_SAGA_POINTS_HELP = "; ".join(f"{p.value}: {text}" for p, text in SAGA_POINT_HELP.items())
_MODES_HELP = (
    "2pc (default): one atomic global transaction; locks are held until both servers "
    "commit, and a dead coordinator can leave them held (in doubt). saga: a debit and a "
    "credit that each commit at once, undone by a compensating refund if the credit fails; "
    "nothing blocks, but readers can see the money in flight (as pending)."
)


def _seconds_option(name: str, default: float, text: str) -> Callable[[_F], _F]:
    return click.option(
        name, default=default, show_default=True, type=click.FloatRange(min=0), help=text
    )


def _retention(value: str | None) -> float | None:
    try:
        return None if value is None else parse_duration(value)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--retention") from None


@main.command(
    epilog=f"Modes: {_MODES_HELP}\n\nCrash/pause points, 2pc: {_POINTS_HELP}.\n\n"
    f"Crash/pause points, saga: {_SAGA_POINTS_HELP}."
)
@click.argument("source")
@click.argument("destination")
@click.argument("amount")
@click.option(
    "--mode",
    type=click.Choice(["2pc", "saga"]),
    default="2pc",
    show_default=True,
    help="Two-phase commit, or a saga of local transactions (see below).",
)
@click.option(
    "--coordinator-id",
    envvar="TWOPC_COORDINATOR_ID",
    help="Stable coordinator (or saga orchestrator) id (default: a fresh one). "
    "Env: TWOPC_COORDINATOR_ID.",
)
@click.option(
    "--saga-id",
    help="Saga mode: the saga's id, 1-64 of [A-Za-z0-9._:-] (default: a fresh one). Running "
    "an id again replays it: every step finds its stored result and no money moves twice.",
)
@click.option(
    "--lock-wait",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Seconds to wait for a row lock before aborting.",
)
@click.option(
    "--retry-deadline",
    type=click.FloatRange(min=0),
    help="Saga mode: seconds to keep retrying a failing step or compensation [default: 30].",
)
@click.option(
    "--retention",
    help="Saga mode: keep idempotency records this long, then prune them (90s, 15m, 12h, 7d) "
    "[default: 7d].",
)
@click.option(
    "--crash-at",
    type=click.Choice(_POINTS + _SAGA_POINTS),
    help="SIGKILL this process at POINT (see below), like kill -9.",
)
@click.option(
    "--pause-at",
    type=click.Choice(_POINTS + _SAGA_POINTS),
    help="Print pid and gtrid (saga id) at POINT and hold there.",
)
@click.option(
    "--at-step",
    type=click.IntRange(1, 3),
    help="Saga mode, with after-step-commit: the step to stop after (default: the first).",
)
@_seconds_option("--pause-seconds", 60.0, "How long --pause-at holds.")
@json_option
@click.pass_obj
@operational_errors
def transfer(
    obj: Context,
    source: str,
    destination: str,
    amount: str,
    mode: str,
    coordinator_id: str | None,
    saga_id: str | None,
    lock_wait: float,
    retry_deadline: float | None,
    retention: str | None,
    crash_at: str | None,
    pause_at: str | None,
    at_step: int | None,
    pause_seconds: float,
    as_json: bool,
) -> None:
    """Move AMOUNT from SOURCE to DEST (pg:<id> or mysql:<id>).

    2pc: atomically — across databases with two-phase commit, within one database in one
    local transaction. saga: a debit and a credit as separate local transactions, the debit
    compensated if the credit fails; the output says which steps ran.
    """
    request = Transfer(
        AccountRef.parse(source), AccountRef.parse(destination), parse_amount(amount)
    )
    points = Points(crash_at, pause_at, at_step, pause_seconds)
    if mode == "saga":
        checked = None if saga_id is None else check_saga_id(saga_id)  # before any connection
        options = SagaOptions(checked, retry_deadline, _retention(retention))
        orchestrator_id = _coordinator_id(coordinator_id)
        _transfer_saga(obj, request, orchestrator_id, lock_wait, points, options, as_json)
        return
    extra = {"--saga-id": saga_id, "--retry-deadline": retry_deadline, "--retention": retention}
    if given := [name for name, value in extra.items() if value is not None]:
        raise click.UsageError(f"{', '.join(given)} only apply with --mode saga")
    config = CoordinatorConfig(obj.home, _coordinator_id(coordinator_id), hooks=_hooks(points))
    sides = tuple(dict.fromkeys((request.source.side, request.destination.side)))
    participants = obj.participants(sides, lock_wait)
    for participant in participants:
        participant.on_lock_wait = functools.partial(_say_blocked, obj.home)
    with Coordinator.open(participants, config) as coordinator:
        _report_recovery(coordinator)
        _warn_in_doubt(obj.home, participants)
        outcome = run_transfer(coordinator, request)
    emit(as_json, _outcome_document(request, outcome), _outcome_text(request, outcome))


@dataclass(frozen=True)
class Points:
    """Where ``--crash-at`` / ``--pause-at`` stop the process."""

    crash_at: str | None
    pause_at: str | None
    step: int | None
    seconds: float

    @property
    def point(self) -> str | None:
        if self.crash_at and self.pause_at:
            raise click.UsageError("--crash-at and --pause-at cannot be combined")
        return self.crash_at or self.pause_at


@dataclass(frozen=True)
class SagaOptions:
    saga_id: str | None
    retry_deadline: float | None
    retention: float | None


def _report_recovery(coordinator: Coordinator) -> None:
    """A named coordinator resolved its own in-doubt branches at start: say so."""
    report = coordinator.recovered
    for resolution in report.resolutions if report else []:
        click.echo(
            f"recovered {resolution.gtrid} {resolution.participant}: {resolution.action}", err=True
        )


def _warn_in_doubt(home: Path, participants: list[Participant]) -> None:
    """One line when dead coordinators left branches in doubt: they hold locks we may hit."""
    report = find_in_doubt(participants, home, with_blocking=False)
    dead = {b.gtrid for b in report.branches if not b.coordinator_alive}
    if dead:
        click.echo(
            f"warning: {len(dead)} in-doubt transaction(s) of dead coordinators hold "
            "locks on these servers (see `twopc in-doubt`; resolve with `twopc recover`)",
            err=True,
        )


def _say_blocked(home: Path, participant: Participant, waits: list[LockWait]) -> None:
    """Printed once when a statement has waited a while on a lock held by a prepared branch."""
    prepared = {b.xid: b.prepared_at for b in participant.prepared_branches() if b.xid}
    for wait in waits:
        if wait.blocker is None:
            click.echo(
                f"waiting for a lock on {participant.name} held by {wait.blocker_name}", err=True
            )
            continue
        gtrid = wait.blocker.gtrid
        at = prepared.get(wait.blocker)
        since = f"in doubt for {time.time() - at:.1f}s" if at else "in doubt"
        owner = coordinator_of(gtrid)
        state = "alive" if owner and is_locked(home / "txlog" / owner) else "dead"
        click.echo(
            f"waiting for a row lock on {participant.name} held by in-doubt transaction "
            f"{gtrid} ({since}; its coordinator {owner} is {state}); "
            "resolve it with: twopc recover",
            err=True,
        )


def _coordinator_id(value: str | None) -> str | None:
    try:
        return None if value is None else check_coordinator_id(value)
    except InvalidCoordinatorId as err:
        raise click.BadParameter(str(err), param_hint="--coordinator-id") from None


def _hooks(points: Points) -> ProtocolHooks | None:
    point = points.point
    if point is None:
        return None
    if point not in _POINTS:
        raise click.UsageError(f"{point} is a saga point: use it with --mode saga")
    if points.step is not None:
        raise click.UsageError("--at-step only applies with --mode saga")
    if points.crash_at:
        return KillAt(CrashPoint(point))
    return PauseAt(CrashPoint(point), points.seconds)


def _outcome_document(request: Transfer, outcome: Outcome) -> dict[str, object]:
    return {
        "gtrid": outcome.gtrid,
        "outcome": outcome.state.value,
        "protocol": outcome.protocol,
        "source": str(request.source),
        "destination": str(request.destination),
        "amount": str(request.amount),
        "branches": outcome.branches,
        "elapsed_ms": round(outcome.elapsed * 1000, 3),
        "phases_ms": {k: round(v * 1000, 3) for k, v in outcome.phases.items()},
    }


def _outcome_text(request: Transfer, outcome: Outcome) -> str:
    phases = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in outcome.phases.items())
    return "\n".join(
        [
            f"{outcome.state.value}: {request.source} -> {request.destination} {request.amount}",
            f"gtrid:    {outcome.gtrid}",
            f"protocol: {outcome.protocol}" + (f" ({phases})" if phases else ""),
            f"time:     {outcome.elapsed * 1000:.1f} ms",
        ]
    )


# -- the saga path ----------------------------------------------------------------------------

EXIT_FOR_OUTCOME = {COMPLETED: 0, COMPENSATED: 1, ABORTED: 1}


def _saga_config(
    obj: Context,
    orchestrator_id: str | None,
    retry_deadline: float | None,
    hooks: SagaHooks | None = None,
) -> SagaConfig:
    policy = RetryPolicy(deadline=30.0 if retry_deadline is None else retry_deadline)
    return SagaConfig(
        obj.home,
        orchestrator_id,
        retry=policy,
        compensation_retry=policy,
        hooks=hooks,
        on_retry=_say_retry,
    )


def _transfer_saga(
    obj: Context,
    request: Transfer,
    orchestrator_id: str | None,
    lock_wait: float,
    points: Points,
    options: SagaOptions,
    as_json: bool,
) -> None:
    config = _saga_config(obj, orchestrator_id, options.retry_deadline, _saga_hooks(points))
    sides = tuple(dict.fromkeys((request.source.side, request.destination.side)))
    participants = obj.participants(sides, lock_wait)
    with Orchestrator.open(participants, config) as orchestrator:
        for resumed in orchestrator.resumed:
            click.echo(f"resumed saga {resumed.saga_id}: {resumed.outcome}", err=True)
        outcome = orchestrator.transfer(request, options.saga_id)
    pruned = (
        _prune_after(participants, obj.home, options.retention) if outcome.state.finished else {}
    )
    document = _saga_document(outcome) | {"pruned": pruned}
    emit(as_json, document, _saga_text(outcome))
    _saga_exit(outcome)


def _prune_after(
    participants: list[Participant], home: Path, retention: float | None
) -> dict[str, int]:
    """Prune old idempotency records; housekeeping, so a failure is only a warning."""
    try:
        return prune(participants, home, DEFAULT_SAGA_RETENTION if retention is None else retention)
    except (ParticipantError, SagaError) as err:
        click.echo(f"warning: idempotency records not pruned: {err}", err=True)
        return {}


def _saga_hooks(points: Points) -> SagaHooks | None:
    point = points.point
    if point is None:
        return None
    if point not in _SAGA_POINTS:
        raise click.UsageError(f"{point} is a 2PC point: saga points are {', '.join(_SAGA_POINTS)}")
    if points.step is not None and point != SagaPoint.AFTER_STEP_COMMIT.value:
        raise click.UsageError("--at-step only applies with after-step-commit")
    if points.crash_at:
        return KillSagaAt(SagaPoint(point), points.step)
    return PauseSagaAt(SagaPoint(point), points.seconds, points.step)


def _say_retry(saga_id: str, what: str, attempt: int, error: str) -> None:
    click.echo(f"saga {saga_id}: {what}: attempt {attempt} failed: {error}", err=True)


def _saga_document(outcome: SagaOutcome) -> dict[str, object]:
    state = outcome.state
    transfer = state.transfer
    steps = step_reports(state)
    return {
        "mode": "saga",
        "saga_id": outcome.saga_id,
        "orchestrator": outcome.orchestrator,
        "outcome": outcome.outcome,
        "source": str(transfer.source) if transfer else None,
        "destination": str(transfer.destination) if transfer else None,
        "amount": str(transfer.amount) if transfer else None,
        "steps": [step.to_json() for step in steps],
        "replayed": bool(steps) and all(step.replayed for step in steps),
        "last_error": state.last_error,
        "problems": list(state.problems),
        "elapsed_ms": round(outcome.elapsed * 1000, 3),
    }


def _saga_text(outcome: SagaOutcome) -> str:
    state = outcome.state
    transfer = state.transfer
    what = f"{transfer.source} -> {transfer.destination} {transfer.amount}" if transfer else "?"
    steps = step_reports(state)
    lines = [
        f"{outcome.outcome}: {what}",
        f"saga:      {outcome.saga_id} (orchestrator {outcome.orchestrator})",
        *(step.line() for step in steps),
    ]
    if steps and all(step.replayed for step in steps):
        lines.append("replayed:  every step was already done; nothing changed")
    lines += [
        f"dead letter: comp {n} failed past the retry policy: {failure.error}"
        for n, failure in sorted(state.dead_letters.items())
    ]
    if not state.finished and not state.dead_letters and state.last_error:
        lines.append(f"waiting:   {state.last_error}")
    lines.append(f"time:      {outcome.elapsed * 1000:.1f} ms")
    return "\n".join(lines)


def _saga_exit(outcome: SagaOutcome, *, finished_is_success: bool = False) -> None:
    """0 completed; 1 compensated, aborted or refused; 3 unfinished or dead-lettered.

    With ``finished_is_success`` (an operator's retry) any finished saga exits 0.
    """
    state = outcome.state
    code = EXIT_FOR_OUTCOME.get(outcome.outcome)
    if code == 0 or (finished_is_success and code is not None):
        return
    if code is not None:
        refunded = outcome.outcome == COMPENSATED and not state.replayed
        money = "the debit was refunded" if refunded else "nothing changed"
        raise click.ClickException(
            f"saga {outcome.saga_id} {outcome.outcome}: {state.last_error}; {money}"
        )
    if state.finished:  # refused: another orchestrator owns the saga id
        raise click.ClickException(f"saga {outcome.saga_id} not run: {_end_reason(outcome)}")
    if state.dead_lettered:
        advice = f"fix the cause, then retry it with `twopc sagas retry {outcome.saga_id}`"
    else:
        advice = "`twopc recover` finishes it once the server is back"
    click.echo(
        f"Error: saga {outcome.saga_id} is {outcome.outcome}: "
        f"{state.last_error or '; '.join(state.problems)}; {advice} (see `twopc sagas`)",
        err=True,
    )
    sys.exit(EXIT_IN_DOUBT)


def _end_reason(outcome: SagaOutcome) -> str:
    return outcome.state.last_error or "another orchestrator owns it"


@main.group(invoke_without_command=True)
@json_option
@click.pass_context
@operational_errors
def sagas(ctx: click.Context, as_json: bool) -> None:
    """List unfinished and dead-lettered sagas (HOME/sagas/<orchestrator-id>/ logs).

    Each with its orchestrator (alive or dead), direction, steps so far, pending amount and
    last error.
    """
    if ctx.invoked_subcommand is not None:
        return
    obj: Context = ctx.obj
    entries, lines, damaged = [], [], []
    for found in all_orchestrators(obj.home):
        if found.error:
            damaged.append({"orchestrator": found.orchestrator, "error": found.error})
            lines.append(f"damaged log of orchestrator {found.orchestrator}: {found.error}")
        for state in found.sagas:
            entry = _saga_entry(state, found.orchestrator, found.alive)
            entries.append(entry)
            lines += _saga_entry_lines(entry)
    document = {"sagas": entries, "damaged_logs": damaged}
    emit(as_json, document, "\n".join(lines) or "no unfinished sagas")
    if damaged:
        sys.exit(1)


def _saga_entry(state: SagaState, orchestrator: str, alive: bool) -> dict[str, Any]:
    transfer = state.transfer
    return {
        "saga_id": state.saga_id,
        "orchestrator": orchestrator,
        "orchestrator_alive": alive,
        "status": outcome_of(state),
        "direction": "backward" if state.backward else "forward",
        "transfer": f"{transfer.source} -> {transfer.destination} {transfer.amount}"
        if transfer
        else None,
        "pending": str(amount_held(state)),
        "steps": [step.to_json() for step in step_reports(state)],
        "dead_letters": {str(n): f.error for n, f in state.dead_letters.items()},
        "last_error": state.last_error,
        "problems": list(state.problems),
        "began_at": state.began_at,
        "updated_at": state.updated_at,
    }


def _saga_entry_lines(entry: dict[str, Any]) -> list[str]:
    alive = "alive" if entry["orchestrator_alive"] else "dead"
    lines = [
        f"{entry['saga_id']}  {entry['status']}  {entry['transfer']}  going {entry['direction']}"
        f"  orchestrator {entry['orchestrator']} ({alive})  pending {entry['pending']}"
    ]
    lines += [f"    {step['step']}: {step['action']} {step['status']}" for step in entry["steps"]]
    lines += [f"    dead letter: comp {n}: {error}" for n, error in entry["dead_letters"].items()]
    if entry["last_error"]:
        lines.append(f"    last error: {entry['last_error']}")
    lines += [f"    problem: {problem}" for problem in entry["problems"]]
    return lines


@sagas.command("retry")
@click.argument("saga_id")
@click.option("--retry-deadline", type=click.FloatRange(min=0), help="Seconds to keep retrying.")
@json_option
@click.pass_obj
@operational_errors
def sagas_retry(obj: Context, saga_id: str, retry_deadline: float | None, as_json: bool) -> None:
    """Resume one unfinished saga now, retrying its dead-lettered compensation.

    Safe to repeat: a compensation that already applied returns its stored result.
    Exit status: 0 once the saga finished (completed or compensated), 3 if it is still
    unfinished, 1 if there is no such unfinished saga.
    """
    config = _saga_config(obj, None, retry_deadline)
    outcome = retry_saga(obj.participants(SIDES), config, saga_id)
    emit(as_json, _saga_document(outcome), _saga_text(outcome))
    _saga_exit(outcome, finished_is_success=True)


@sagas.command("prune")
@click.option(
    "--retention",
    default="7d",
    show_default=True,
    help="Keep idempotency records this long (90s, 15m, 12h, 7d).",
)
@json_option
@click.pass_obj
@operational_errors
def sagas_prune(obj: Context, retention: str, as_json: bool) -> None:
    """Delete idempotency records older than the retention window (never an unfinished
    saga's). A saga id replayed after its records are pruned runs as a new saga."""
    pruned = prune(obj.participants(SIDES), obj.home, _retention(retention) or 0.0)
    text = "\n".join(f"{side:<6} {n} idempotency record(s) pruned" for side, n in pruned.items())
    emit(as_json, {"pruned": pruned}, text)


# -- in-doubt transactions ---------------------------------------------------------------------


@main.command("in-doubt")
@json_option
@click.pass_obj
@operational_errors
def in_doubt(obj: Context, as_json: bool) -> None:
    """List prepared branches on both servers: ours with their log's decision and what they
    block, and foreign ones (never touched)."""
    report = find_in_doubt(obj.participants(SIDES), obj.home)
    # One list, one shape: foreign entries carry "foreign": true and decision "foreign".
    document = [b.to_json() for b in report.branches] + [f.to_json() for f in report.foreign]
    emit(as_json, document, _in_doubt_text(report))


def _in_doubt_text(report: InDoubtReport) -> str:
    if not report.branches and not report.foreign:
        return "nothing in doubt"
    lines = []
    for branch in report.branches:
        alive = {True: "alive", False: "dead", None: "no log"}[branch.coordinator_alive]
        lines.append(
            f"{branch.gtrid}  {branch.participant:<5}  coordinator {branch.coordinator} ({alive})"
            f"  prepared {_seconds(branch.prepared_seconds)} ago  decision: {_decision(branch)}"
        )
        for wait in branch.blocking:
            lines.append(
                f"    blocks session {wait['waiter']} for {_seconds(wait['waited_seconds'])}:"
                f" {wait['query']}"
            )
    for foreign in report.foreign:
        lines.append(f"foreign: {foreign.participant:<5} {foreign.name}  (not ours: never touched)")
    return "\n".join(lines)


def _decision(branch: InDoubtBranch) -> str:
    if branch.decision == DECISION_NONE:
        return "none (presumed abort)"
    return branch.decision + (f" ({branch.detail})" if branch.detail else "")


def _seconds(value: object) -> str:
    return "?" if not isinstance(value, (int, float)) else f"{value:.1f}s"


@main.command(
    epilog="Exit status: 0 when nothing of ours is left in doubt or unfinished, 3 when something "
    "is (a live coordinator's branch, an orphan without a log, a damaged log, a live "
    "orchestrator's saga, a dead-lettered compensation, a saga still waiting for a server)."
)
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@click.option(
    "--retry-deadline",
    type=click.FloatRange(min=0),
    help="Seconds to keep retrying each saga step or compensation [default: 30].",
)
@json_option
@click.pass_obj
@operational_errors
def recover(obj: Context, dry_run: bool, retry_deadline: float | None, as_json: bool) -> None:
    """Resolve the in-doubt branches of dead coordinators from their logs, and finish the
    unfinished sagas of dead orchestrators.

    Commit where the log holds a COMMIT record, roll back where it holds none (presumed
    abort); then END the finished decisions and remove logs that hold nothing more. Sagas
    resume from their logs: forward while their steps can complete, backward (compensations
    in reverse order) once a step failed.
    """
    participants = obj.participants(SIDES)
    report = run_recovery(participants, obj.home, dry_run=dry_run)
    config = _saga_config(obj, None, retry_deadline)
    saga_report = recover_sagas(participants, config, dry_run=dry_run)
    document = report.to_json() | {"sagas": saga_report.to_json()}
    text = "\n".join(filter(None, [_recovery_text(report), _saga_recovery_text(saga_report)]))
    emit(as_json, document, text or "nothing to recover")
    if report.in_doubt_remains or saga_report.unfinished_remain:
        sys.exit(EXIT_IN_DOUBT)


def _recovery_text(report: RecoveryReport) -> str:
    lines = [f"{r.gtrid}  {r.participant:<5}  {r.action}: {r.reason}" for r in report.resolutions]
    lines += [f"{gtrid}  ended (END record written)" for gtrid in report.ended]
    lines += [
        f"log of coordinator {cid} removed (nothing unfinished)" for cid in report.removed_logs
    ]
    lines += [f"problem: {p}" for p in report.problems]
    return "\n".join(lines)


def _saga_recovery_text(report: SagaRecoveryReport) -> str:
    lines = [
        f"saga {r.saga_id}  orchestrator {r.orchestrator}  {r.action}: {r.reason}"
        for r in report.resolutions
    ]
    lines += [
        f"saga log of orchestrator {oid} removed (nothing unfinished)"
        for oid in report.removed_logs
    ]
    lines += [f"problem: {p}" for p in report.problems]
    return "\n".join(lines)


@main.command()
@click.argument("gtrid")
@click.option("--commit", "decision", flag_value="commit", help="Commit every branch.")
@click.option("--rollback", "decision", flag_value="rollback", help="Roll back every branch.")
@click.option(
    "--force",
    is_flag=True,
    help="Allow a heuristic outcome (against the log's decision) or a live coordinator.",
)
@json_option
@click.pass_obj
@operational_errors
def resolve(obj: Context, gtrid: str, decision: str | None, force: bool, as_json: bool) -> None:
    """Finish every branch of GTRID by hand, and record it in the operator's log."""
    if decision is None:
        raise click.UsageError("say --commit or --rollback")
    outcome = resolve_by_hand(
        obj.participants(SIDES), obj.home, gtrid, commit=decision == "commit", force=force
    )
    heuristic = " (heuristic outcome: against the log's decision)" if outcome.heuristic else ""
    text = "\n".join(
        [f"{b.gtrid}  {b.participant:<5}  {b.action}" for b in outcome.branches]
        + [f"recorded: {decision} by operator{heuristic}"]
    )
    emit(as_json, outcome.to_json(), text)
    if not all(b.finished for b in outcome.branches):
        sys.exit(EXIT_IN_DOUBT)


@main.command(
    "audit",
    epilog="Exit status: 0 all atomic, 1 a violation or unreadable log, "
    "3 transactions still in doubt.",
)
@json_option
@click.pass_obj
@operational_errors
def audit_command(obj: Context, as_json: bool) -> None:
    """Check that every transaction the logs know about is all-or-nothing."""
    report = run_audit(obj.participants(SIDES), obj.home)
    lines = [
        f"{e.gtrid}  {e.verdict}  " + ", ".join(f"{k}: {v}" for k, v in e.branches.items())
        for e in report.entries
    ]
    lines += [f"heuristic resolution: {h['gtrid']} {h['decision']}" for h in report.heuristic]
    lines += [f"problem: {p}" for p in report.problems]
    summary = (
        f"{len(report.entries)} logged decisions: {report.count(ATOMIC)} committed, "
        f"{report.count(IN_DOUBT)} in doubt, {report.count(VIOLATION)} violations"
    )
    emit(as_json, report.to_json(), "\n".join([*lines, summary]))
    if not report.atomic:
        sys.exit(1)
    if report.count(IN_DOUBT):
        sys.exit(EXIT_IN_DOUBT)


# -- the decision logs ------------------------------------------------------------------------


@main.group("log")
def log_group() -> None:
    """Inspect coordinators' decision logs (HOME/txlog/<coordinator-id>/)."""


def _log_paths(obj: Context, coordinator: str | None) -> list[Path]:
    root = obj.home / "txlog"
    if coordinator is not None:
        path = root / coordinator
        if not path.is_dir():
            raise click.ClickException(f"no log for coordinator {coordinator} under {root}")
        return [path]
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@log_group.command("show")
@click.option("--coordinator", help="One coordinator's log (default: all).")
@json_option
@click.pass_obj
@operational_errors
def log_show(obj: Context, coordinator: str | None, as_json: bool) -> None:
    """Print the records of the logs in order: type, gtrid, branches, time."""
    documents, lines = [], []
    for path in _log_paths(obj, coordinator):
        try:
            contents = read_log(path)
        except LogError as err:
            raise click.ClickException(str(err)) from None
        documents.append(
            {
                "coordinator": path.name,
                "alive": is_locked(path),
                "torn_tail": contents.torn_tail,
                "records": [r.to_json() for r in contents.records],
            }
        )
        lines.append(f"== {path.name} ({'alive' if is_locked(path) else 'not running'})")
        lines += [_record_line(r) for r in contents.records]
    emit(as_json, documents, "\n".join(lines) or "no logs")


def _record_line(record: Record) -> str:
    stamp = datetime.fromtimestamp(record.time, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    branches = record.body.get("branches")
    names = " ".join(b.get("name", "?") for b in branches) if isinstance(branches, list) else ""
    extra = names or json.dumps(dict(record.body), sort_keys=True) if record.body else names
    return f"{stamp}  {record.kind:<8} {record.txid}  {extra}".rstrip()


@log_group.command("verify", epilog="Exit status: 0 when every log is whole, 1 on damage.")
@click.option("--coordinator", help="One coordinator's log (default: all).")
@json_option
@click.pass_obj
@operational_errors
def log_verify(obj: Context, coordinator: str | None, as_json: bool) -> None:
    """Check every segment and checkpoint of the logs."""
    reports = [verify_log(path) for path in _log_paths(obj, coordinator)]
    lines = [line for report in reports for line in report.lines()]
    emit(as_json, [r.to_json() for r in reports], "\n".join(lines) or "no logs")
    if not all(r.ok for r in reports):
        sys.exit(1)


# -- demonstrations ---------------------------------------------------------------------------


@main.group()
def demo() -> None:
    """Demonstrations on the configured servers, narrated with measured figures."""


@demo.command("blocking")
@click.option(
    "--hold",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to leave the second transfer blocked before recovering.",
)
@json_option
@click.pass_obj
@operational_errors
def demo_blocking(obj: Context, hold: float, as_json: bool) -> None:
    """Kill a coordinator after prepare, watch a transfer block, recover, check balances.

    Uses accounts a1 and a2 on both sides (created with 1000.00 if missing).
    """
    from bank.schema import init_schema

    participants = obj.participants(SIDES)
    for participant in participants:
        init_schema(participant.url, accounts_count=2, balance=Decimal("1000.00"), reset=False)
    env = dict(os.environ, TWOPC_HOME=str(obj.home.resolve()))
    env.update({f"TWOPC_{p.name.upper()}_URL": p.url.with_password() for p in participants})
    env.pop("TWOPC_COORDINATOR_ID", None)
    say = (lambda line: None) if as_json else click.echo
    try:
        figures = blocking_demo(participants, obj.home, env, say, hold=hold)
    except DemoError as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        emit(True, dataclasses.asdict(figures), "")


# -- benchmarks -------------------------------------------------------------------------------


@main.group()
def bench() -> None:
    """Benchmarks: figures measured against a baseline in the same run."""


@bench.command("log")
@click.option(
    "--appenders",
    default="1,8,64",
    show_default=True,
    help="Comma-separated numbers of concurrent appending threads.",
)
@click.option(
    "--records",
    default=3000,
    show_default=True,
    type=click.IntRange(1),
    help="Records per measurement.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write (default: a temporary directory under HOME).",
)
@click.option(
    "--pin-cpu",
    type=click.IntRange(0),
    help="Run every measurement on this one CPU (no cross-CPU wake-ups between threads).",
)
@json_option
@click.pass_obj
@operational_errors
def bench_log(
    obj: Context,
    appenders: str,
    records: int,
    directory: Path | None,
    pin_cpu: int | None,
    as_json: bool,
) -> None:
    """Group-commit log appends against one raw fdatasync per record (threads racing, and
    one at a time), in the same run."""
    from benchmarks.bench_log import format_log_benchmark, pin_to_cpu, run_log_benchmark

    try:
        counts = [int(n) for n in appenders.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise BadInput(f"--appenders {appenders!r} must be comma-separated integers >= 1")
    if pin_cpu is not None:
        try:
            pin_to_cpu(pin_cpu)
        except ValueError as err:
            raise BadInput(f"--pin-cpu: {err}") from None
    (obj.home).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory or obj.home, prefix="bench-") as scratch:
        result = run_log_benchmark(Path(scratch), counts, records)
    emit(as_json, result, "\n".join(format_log_benchmark(result)))


if __name__ == "__main__":  # pragma: no cover
    main()
