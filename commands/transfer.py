"""`twopc transfer`: one transfer under two-phase commit or as a saga."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from twopc.bank import (
    TRANSFER_POINTS,
    AccountRef,
    Transfer,
    parse_amount,
    run_transfer,
    run_transfer_saga,
)
from twopc.commands.common import (
    EXIT_IN_DOUBT,
    Context,
    Failure,
    InDoubtRemains,
    emit,
    interruptible,
    json_failures,
    json_option,
    lock_wait_option,
    operational_errors,
    parse_retention,
    seconds_option,
)
from twopc.commands.sagas import prune_after, saga_config, saga_document, saga_exit, saga_text
from twopc.coordinator import (
    CRASH_POINT_HELP,
    Coordinator,
    CoordinatorConfig,
    CrashPoint,
    GlobalTransaction,
    InvalidCoordinatorId,
    KillAt,
    Outcome,
    PauseAt,
    ProtocolHooks,
    RetryPolicy,
    TxState,
    check_coordinator_id,
)
from twopc.coordinator.listing import in_doubt_of_dead, lock_wait_lines
from twopc.participants import Participant
from twopc.participants.lockwaits import LockWait
from twopc.saga import (
    Orchestrator,
    SagaConfig,
    SagaHooks,
    SagaOutcome,
    check_saga_id,
)
from twopc.saga.logs import read_orchestrator

_POINTS = [point.value for point in CrashPoint]
_SAGA_POINTS = list(TRANSFER_POINTS)
_POINTS_HELP = "; ".join(f"{p.value}: {text}" for p, text in CRASH_POINT_HELP.items())
_SAGA_POINTS_HELP = "; ".join(f"{name}: {p.help}" for name, p in TRANSFER_POINTS.items())
_MODES_HELP = (
    "2pc (default): one atomic global transaction; locks are held until both servers "
    "commit, and a dead coordinator can leave them held (in doubt). saga: a debit and a "
    "credit that each commit at once, undone by a compensating refund if the credit fails; "
    "nothing blocks, but readers can see the money in flight (as pending)."
)


@click.command(
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
@lock_wait_option(30.0)
@seconds_option(
    "--retry-deadline",
    None,
    "Seconds to keep retrying: saga mode, a failing step or compensation [default: 30]; "
    "2pc, phase 2's commits before the transfer is reported in doubt [default: 60].",
)
@seconds_option(
    "--prepare-timeout",
    None,
    "2pc: seconds phase 1 may take before the transfer is aborted [default: 30].",
    minimum=0.001,
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
@seconds_option("--pause-seconds", 60.0, "How long --pause-at holds.")
@json_option
@click.pass_obj
@json_failures
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
    prepare_timeout: float | None,
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

    With --json, a failure also prints one JSON document (outcome, error, exit_code).
    """
    request = Transfer(
        AccountRef.parse(source), AccountRef.parse(destination), parse_amount(amount)
    )
    points = Points(crash_at, pause_at, at_step, pause_seconds)
    if mode == "saga":
        if prepare_timeout is not None:
            raise click.UsageError("--prepare-timeout only applies with --mode 2pc")
        checked = None if saga_id is None else check_saga_id(saga_id)  # before any connection
        options = SagaOptions(checked, retry_deadline, parse_retention(retention))
        orchestrator_id = _coordinator_id(coordinator_id)
        _transfer_saga(obj, request, orchestrator_id, lock_wait, points, options, as_json)
        return
    extra = {"--saga-id": saga_id, "--retention": retention}
    if given := [name for name, value in extra.items() if value is not None]:
        raise click.UsageError(f"{', '.join(given)} only apply with --mode saga")
    config = CoordinatorConfig(
        obj.home,
        _coordinator_id(coordinator_id),
        retry=RetryPolicy() if retry_deadline is None else RetryPolicy(deadline=retry_deadline),
        prepare_timeout=30.0 if prepare_timeout is None else prepare_timeout,
        hooks=_hooks(points),
    )
    sides = tuple(dict.fromkeys((request.source.side, request.destination.side)))
    participants = obj.participants(
        sides, lock_wait, on_lock_wait=functools.partial(_say_blocked, obj.home)
    )
    with interruptible(), Coordinator.open(participants, config) as coordinator:
        _report_recovery(coordinator)
        _warn_in_doubt(obj.home, participants)
        try:
            outcome = run_transfer(coordinator, request)
        except KeyboardInterrupt:
            outcome = _interrupted(coordinator, as_json)
    emit(as_json, _outcome_document(request, outcome), _outcome_text(request, outcome))


def _interrupted(coordinator: Coordinator, as_json: bool) -> Outcome:
    """:func:`_after_interrupt`; with ``--json``, also the document of what it left."""
    try:
        return _after_interrupt(coordinator)
    except SystemExit as stop:
        if as_json:
            emit(True, _interrupted_document(coordinator, stop.code), "")
        raise


def _interrupted_document(coordinator: Coordinator, code: object) -> dict[str, object]:
    in_doubt = [tx.gtrid for tx in coordinator.unsettled()]
    if code == EXIT_IN_DOUBT:
        error = (
            f"interrupted: transaction(s) {', '.join(in_doubt)} in doubt; run `twopc recover` "
            "to finish them from their coordinator's log"
        )
        return {"outcome": "in doubt", "error": error, "exit_code": code, "in_doubt": in_doubt}
    error = "interrupted: the transfer was rolled back; nothing changed"
    return {"outcome": "aborted", "error": error, "exit_code": code}


def _after_interrupt(coordinator: Coordinator) -> Outcome:
    """Ctrl-C or SIGTERM stopped the transfer: return its outcome if it committed all the
    same, else say what it left and exit (3 when anything is in doubt, else 1)."""
    tx = coordinator.last_begun
    if tx is not None and tx.outcome is not None and tx.state is TxState.COMMITTED:
        return tx.outcome
    unsettled = coordinator.unsettled()
    if not unsettled:
        click.echo("Error: interrupted: the transfer was rolled back; nothing changed", err=True)
        sys.exit(1)
    for left in unsettled:
        click.echo(
            f"Error: interrupted: transaction {left.gtrid} is in doubt "
            f"({_unsettled_reason(left)}); run `twopc recover` to finish it from its "
            "coordinator's log",
            err=True,
        )
    sys.exit(EXIT_IN_DOUBT)


def _unsettled_reason(tx: GlobalTransaction) -> str:
    if tx.state is TxState.ABORTED:
        return "rolled back, but not every branch confirmed it"
    if tx.participants and len(tx.participants) == 1:
        return "a one-phase commit was under way: it may or may not have committed"
    return "branches may still be prepared; the log holds the decision, if one was made"


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
    dead = in_doubt_of_dead(participants, home)
    if dead:
        click.echo(
            f"warning: {len(dead)} in-doubt transaction(s) of dead coordinators hold "
            "locks on these servers (see `twopc in-doubt`; resolve with `twopc recover`)",
            err=True,
        )


def _say_blocked(home: Path, participant: Participant, waits: list[LockWait]) -> None:
    """Printed once when a statement has waited a while on a lock held by a prepared branch."""
    for line in lock_wait_lines(home, participant, waits):
        click.echo(line, err=True)


def _coordinator_id(value: str | None) -> str | None:
    try:
        return None if value is None else check_coordinator_id(value)
    except InvalidCoordinatorId as err:
        raise click.BadParameter(str(err), param_hint="--coordinator-id") from None


def _hooks(points: Points) -> ProtocolHooks | None:
    point = points.point
    if points.step is not None:  # refused even with no point: it would be silently ignored
        raise click.UsageError("--at-step only applies with --mode saga")
    if point is None:
        return None
    if point not in _POINTS:
        raise click.UsageError(f"{point} is a saga point: use it with --mode saga")
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


def _transfer_saga(
    obj: Context,
    request: Transfer,
    orchestrator_id: str | None,
    lock_wait: float,
    points: Points,
    options: SagaOptions,
    as_json: bool,
) -> None:
    config = saga_config(obj, orchestrator_id, options.retry_deadline, _saga_hooks(points))
    sides = tuple(dict.fromkeys((request.source.side, request.destination.side)))
    participants = obj.participants(sides, lock_wait)
    with interruptible():  # SIGTERM stops a saga the way Ctrl-C does
        outcome = _run_saga(participants, config, request, options.saga_id)
    pruned = (
        prune_after(participants, obj.home, options.retention) if outcome.state.finished else {}
    )
    document = saga_document(outcome) | {"pruned": pruned}
    emit(as_json, document, saga_text(outcome))
    saga_exit(outcome)


def _run_saga(
    participants: list[Participant], config: SagaConfig, request: Transfer, saga_id: str | None
) -> SagaOutcome:
    """Run the saga; Ctrl-C or SIGTERM stops it where it stands (its log says where) and
    leaves it to `twopc recover`, which finishes it forward or backward."""
    orchestrator_id = config.orchestrator_id  # a fresh one is only known once open
    try:
        with Orchestrator.open(participants, config) as orchestrator:
            orchestrator_id = orchestrator.id
            for resumed in orchestrator.resumed:
                click.echo(f"resumed saga {resumed.saga_id}: {resumed.outcome}", err=True)
            return run_transfer_saga(orchestrator, request, saga_id)
    except KeyboardInterrupt:
        # The orchestrator is closed by now, so its log on disk says what is left.
        raise _saga_interrupted(config.home, orchestrator_id) from None


def _saga_interrupted(home: Path, orchestrator_id: str | None) -> Failure:
    found = read_orchestrator(home, orchestrator_id) if orchestrator_id else None
    unfinished = sorted(s.saga_id for s in found.sagas) if found else []
    details: dict[str, object] = {"mode": "saga", "orchestrator": orchestrator_id}
    if found and found.error:
        return InDoubtRemains(
            f"interrupted: the log of orchestrator {orchestrator_id} is unreadable "
            f"({found.error}); see `twopc sagas`",
            details,
        )
    if not unfinished:
        return Failure(
            "interrupted: no saga was left unfinished (it had not begun, or had just ended); "
            "see `twopc balances`",
            details,
            outcome="interrupted",
        )
    return InDoubtRemains(
        f"interrupted: saga {', '.join(unfinished)} is unfinished (orchestrator "
        f"{orchestrator_id}); `twopc recover` finishes it",
        details | {"unfinished": unfinished},
        outcome="unfinished",
    )


def _saga_hooks(points: Points) -> SagaHooks | None:
    name = points.point
    if points.step is not None and name != "after-step-commit":
        raise click.UsageError("--at-step only applies with after-step-commit")
    if name is None:
        return None
    if name not in TRANSFER_POINTS:
        raise click.UsageError(f"{name} is a 2PC point: saga points are {', '.join(_SAGA_POINTS)}")
    found = TRANSFER_POINTS[name]
    step = found.step if points.step is None else points.step
    if points.crash_at:
        return KillAt(found.point, step)
    return PauseAt(found.point, points.seconds, step, name=name)
