"""`twopc in-doubt`, `recover`, `resolve` and `audit`: finding and finishing in-doubt work."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click

from twopc.commands.common import (
    EXIT_IN_DOUBT,
    BadInput,
    Context,
    emit,
    json_option,
    operational_errors,
    seconds_option,
)
from twopc.commands.sagas import saga_config
from twopc.coordinator import coordinator_of
from twopc.coordinator.audit import ATOMIC, IN_DOUBT, VIOLATION
from twopc.coordinator.audit import audit as run_audit
from twopc.coordinator.recovery import (
    DECISION_NONE,
    InDoubtBranch,
    InDoubtReport,
    RecoveryReport,
    find_in_doubt,
)
from twopc.coordinator.recovery import recover as run_recovery
from twopc.coordinator.recovery import resolve as resolve_by_hand
from twopc.saga import SagaRecoveryReport, recover_sagas


@click.command("in-doubt")
@json_option
@click.pass_obj
@operational_errors
def in_doubt(obj: Context, as_json: bool) -> None:
    """List prepared branches on every configured participant: ours with their log's
    decision and what they block, and foreign ones (never touched)."""
    report = find_in_doubt(obj.all_participants(), obj.home)
    # One list, one shape: foreign entries carry "foreign": true and decision "foreign".
    document = [b.to_json() for b in report.branches] + [f.to_json() for f in report.foreign]
    emit(as_json, document, _in_doubt_text(report))


def _in_doubt_text(report: InDoubtReport) -> str:
    if not report.branches and not report.foreign:
        return "nothing in doubt"
    lines = []
    width = _width(
        [b.participant for b in report.branches] + [f.participant for f in report.foreign]
    )
    for branch in report.branches:
        alive = {True: "alive", False: "dead", None: "no log"}[branch.coordinator_alive]
        lines.append(
            f"{branch.gtrid}  {branch.participant:<{width}}  coordinator {branch.coordinator}"
            f" ({alive})"
            f"  prepared {_seconds(branch.prepared_seconds)} ago  decision: {_decision(branch)}"
        )
        for wait in branch.blocking:
            lines.append(
                f"    blocks session {wait['waiter']} for {_seconds(wait['waited_seconds'])}:"
                f" {wait['query']}"
            )
    for foreign in report.foreign:
        lines.append(
            f"foreign: {foreign.participant:<{width}} {foreign.name}  (not ours: never touched)"
        )
    return "\n".join(lines)


def _width(names: Iterable[str]) -> int:
    """The column width of participant names (at least 5, as ``mysql``)."""
    return max([5, *(len(name) for name in names)])


def _decision(branch: InDoubtBranch) -> str:
    if branch.decision == DECISION_NONE:
        return "none (presumed abort)"
    return branch.decision + (f" ({branch.detail})" if branch.detail else "")


def _seconds(value: object) -> str:
    return "?" if not isinstance(value, (int, float)) else f"{value:.1f}s"


@click.command(
    epilog="Exit status: 0 when nothing of ours is left in doubt or unfinished, 3 when something "
    "is (a live coordinator's branch, an orphan without a log, a damaged log, a live "
    "orchestrator's saga, a dead-lettered compensation, a saga still waiting for a server)."
)
@click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing.")
@seconds_option(
    "--retry-deadline",
    None,
    "Seconds to keep retrying each saga step or compensation [default: the deadline each "
    "saga's own run was given].",
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
    participants = obj.all_participants()
    report = run_recovery(participants, obj.home, dry_run=dry_run)
    config = saga_config(obj, None, retry_deadline)
    saga_report = recover_sagas(participants, config, dry_run=dry_run)
    document = report.to_json() | {"sagas": saga_report.to_json()}
    text = "\n".join(filter(None, [_recovery_text(report), _saga_recovery_text(saga_report)]))
    emit(as_json, document, text or "nothing to recover")
    if report.in_doubt_remains or saga_report.unfinished_remain:
        sys.exit(EXIT_IN_DOUBT)


def _recovery_text(report: RecoveryReport) -> str:
    width = _width(r.participant for r in report.resolutions)
    lines = [
        f"{gtrid}  request stopped: its coordinator is dead and the server was still running "
        "it (it could have prepared the branch afterwards)"
        for gtrid in report.stopped_requests
    ]
    lines += [
        f"{r.gtrid}  {r.participant:<{width}}  {r.action}: {r.reason}" for r in report.resolutions
    ]
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


@click.command(
    epilog="Exit status: 0 every branch finished, 1 refused or failed, 2 bad input (no or "
    "both decisions, a GTRID not of the form <coordinator-id>.<20 hex digits>), 3 a branch "
    "is still prepared."
)
@click.argument("gtrid")
@click.option("--commit", is_flag=True, help="Commit every branch.")
@click.option("--rollback", is_flag=True, help="Roll back every branch.")
@click.option(
    "--force",
    is_flag=True,
    help="Allow a heuristic outcome (against the log's decision) or a live coordinator.",
)
@json_option
@click.pass_obj
@operational_errors
def resolve(
    obj: Context, gtrid: str, commit: bool, rollback: bool, force: bool, as_json: bool
) -> None:
    """Finish every branch of GTRID by hand, and record it in the operator's log."""
    if commit == rollback:
        raise click.UsageError(
            "--commit and --rollback cannot be combined" if commit else "say --commit or --rollback"
        )
    if coordinator_of(gtrid) is None:  # checked before connecting to anything
        raise BadInput(
            f"{gtrid!r} is not a gtrid of ours: they look like <coordinator-id>.<20 hex digits> "
            "(see `twopc in-doubt`)"
        )
    decision = "commit" if commit else "rollback"
    participants = obj.all_participants()
    outcome = resolve_by_hand(participants, obj.home, gtrid, commit=commit, force=force)
    heuristic = " (heuristic outcome: against the log's decision)" if outcome.heuristic else ""
    width = _width(b.participant for b in outcome.branches)
    text = "\n".join(
        [f"{b.gtrid}  {b.participant:<{width}}  {b.action}" for b in outcome.branches]
        + [f"recorded: {decision} by operator{heuristic}"]
    )
    emit(as_json, outcome.to_json(), text)
    if not all(b.finished for b in outcome.branches):
        sys.exit(EXIT_IN_DOUBT)


@click.command(
    "audit",
    epilog="Exit status: 0 all atomic, 1 a violation or unreadable log, "
    "3 transactions still in doubt.",
)
@json_option
@click.pass_obj
@operational_errors
def audit_command(obj: Context, as_json: bool) -> None:
    """Check that every transaction the logs know about is all-or-nothing."""
    report = run_audit(obj.all_participants(), obj.home)
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
