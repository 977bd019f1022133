"""The saga path's shared output and `twopc sagas` (list, retry, prune)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from twopc.bank import SIDES, TRANSFER_SAGA, amount_held, saga_transfer, transfer_reports
from twopc.commands.common import (
    EXIT_IN_DOUBT,
    Context,
    Failure,
    InDoubtRemains,
    emit,
    json_option,
    operational_errors,
    parse_retention,
    seconds_option,
)
from twopc.coordinator import RetryPolicy
from twopc.flights import BOOKING_SAGA, request_of
from twopc.participants import Participant, ParticipantError
from twopc.saga import (
    ABORTED,
    COMPENSATED,
    COMPLETED,
    SagaConfig,
    SagaError,
    SagaHooks,
    SagaOutcome,
    SagaRegistry,
    SagaState,
    all_orchestrators,
    outcome_of,
    prune,
    retry_saga,
)
from twopc.saga import DEFAULT_RETENTION as DEFAULT_SAGA_RETENTION

EXIT_FOR_OUTCOME = {COMPLETED: 0, COMPENSATED: 1, ABORTED: 1}
#: The sagas the CLI runs, resumes and recovers: the bank's transfer (also for logs naming
#: no definition) and the flight booking.
CLI_SAGAS = SagaRegistry([TRANSFER_SAGA, BOOKING_SAGA], unnamed=TRANSFER_SAGA.name)


def saga_config(
    obj: Context,
    orchestrator_id: str | None,
    retry_deadline: float | None,
    hooks: SagaHooks | None = None,
) -> SagaConfig:
    """Sagas begun with it retry for ``retry_deadline`` (default 30 s); sagas it resumes
    keep to their own run's deadline unless ``retry_deadline`` is given. It resumes the
    sagas of :data:`CLI_SAGAS`."""
    policy = RetryPolicy(deadline=30.0 if retry_deadline is None else retry_deadline)
    return SagaConfig(
        obj.home,
        orchestrator_id,
        retry=policy,
        compensation_retry=policy,
        hooks=hooks,
        on_retry=say_retry,
        recorded_retry=retry_deadline is None,
        definitions=CLI_SAGAS,
    )


def prune_after(
    participants: list[Participant], home: Path, retention: float | None
) -> dict[str, int]:
    """Prune old idempotency records; housekeeping, so a failure is only a warning."""
    try:
        return prune(participants, home, DEFAULT_SAGA_RETENTION if retention is None else retention)
    except (ParticipantError, SagaError) as err:
        click.echo(f"warning: idempotency records not pruned: {err}", err=True)
        return {}


def say_retry(saga_id: str, what: str, attempt: int, error: str) -> None:
    click.echo(f"saga {saga_id}: {what}: attempt {attempt} failed: {error}", err=True)


def saga_document(outcome: SagaOutcome) -> dict[str, object]:
    state = outcome.state
    transfer = saga_transfer(state)
    steps = transfer_reports(state)
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


def saga_text(outcome: SagaOutcome) -> str:
    state = outcome.state
    transfer = saga_transfer(state)
    what = f"{transfer.source} -> {transfer.destination} {transfer.amount}" if transfer else "?"
    steps = transfer_reports(state)
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


def saga_exit(outcome: SagaOutcome, *, finished_is_success: bool = False) -> None:
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
        raise Failure(
            f"saga {outcome.saga_id} {outcome.outcome}: {state.last_error}; {money}",
            outcome=outcome.outcome,
        )
    if state.finished:  # refused: another orchestrator owns the saga id
        raise Failure(
            f"saga {outcome.saga_id} not run: {_end_reason(outcome)}", outcome=outcome.outcome
        )
    if state.dead_lettered:
        advice = f"fix the cause, then retry it with `twopc sagas retry {outcome.saga_id}`"
    else:
        advice = "`twopc recover` finishes it once the server is back"
    raise InDoubtRemains(
        f"saga {outcome.saga_id} is {outcome.outcome}: "
        f"{state.last_error or '; '.join(state.problems)}; {advice} (see `twopc sagas`)",
        outcome=outcome.outcome,
    )


def _end_reason(outcome: SagaOutcome) -> str:
    return outcome.state.last_error or "another orchestrator owns it"


@click.group(
    invoke_without_command=True,
    epilog="Exit status (listing): 0 no saga is unfinished, 1 an orchestrator's log is "
    "damaged, 3 a saga is unfinished or dead-lettered.",
)
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
            lines += _saga_entry_lines(entry, _what(state))
    document = {"sagas": entries, "damaged_logs": damaged}
    emit(as_json, document, "\n".join(lines) or "no unfinished sagas")
    if damaged:
        names = ", ".join(str(d["orchestrator"]) for d in damaged)
        raise Failure(f"damaged log of orchestrator(s) {names}: their sagas need an operator")
    if entries:  # unfinished or dead-lettered: money is still pending
        sys.exit(EXIT_IN_DOUBT)


def _what(state: SagaState) -> str:
    """The transfer a saga moves, or which saga it is when it is no transfer."""
    transfer = saga_transfer(state)
    if transfer is not None:
        return f"{transfer.source} -> {transfer.destination} {transfer.amount}"
    if state.definition == BOOKING_SAGA.name:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return f"book {request_of(state.params)}"
    return f"saga {state.definition}" if state.definition else "None"  # as it always read


def _saga_entry(state: SagaState, orchestrator: str, alive: bool) -> dict[str, Any]:
    transfer = saga_transfer(state)
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
        "steps": [step.to_json() for step in transfer_reports(state)],
        "dead_letters": {str(n): f.error for n, f in state.dead_letters.items()},
        "last_error": state.last_error,
        "problems": list(state.problems),
        "began_at": state.began_at,
        "updated_at": state.updated_at,
    }


def _saga_entry_lines(entry: dict[str, Any], what: str) -> list[str]:
    alive = "alive" if entry["orchestrator_alive"] else "dead"
    lines = [
        f"{entry['saga_id']}  {entry['status']}  {what}  going {entry['direction']}"
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
@seconds_option(
    "--retry-deadline",
    None,
    "Seconds to keep retrying [default: the deadline the saga's own run was given].",
)
@json_option
@click.pass_obj
@operational_errors
def sagas_retry(obj: Context, saga_id: str, retry_deadline: float | None, as_json: bool) -> None:
    """Resume one unfinished saga now, retrying its dead-lettered compensation.

    Safe to repeat: a compensation that already applied returns its stored result.
    Exit status: 0 once the saga finished (completed or compensated), 3 if it is still
    unfinished, 1 if there is no such unfinished saga.
    """
    config = saga_config(obj, None, retry_deadline)
    outcome = retry_saga(obj.all_participants(), config, saga_id)
    emit(as_json, saga_document(outcome), saga_text(outcome))
    saga_exit(outcome, finished_is_success=True)


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
    pruned = prune(obj.participants(SIDES), obj.home, parse_retention(retention) or 0.0)
    text = "\n".join(f"{side:<6} {n} idempotency record(s) pruned" for side, n in pruned.items())
    emit(as_json, {"pruned": pruned}, text)
