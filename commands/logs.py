"""`twopc log show|verify`: reading the decision logs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click

from twopc.commands.common import BadInput, Context, Failure, emit, json_option, operational_errors
from twopc.coordinator import InvalidCoordinatorId, check_coordinator_id
from twopc.coordinator.facts import OPERATOR_LOG, coordinator_home
from twopc.saga.ids import check_orchestrator_id
from twopc.saga.logs import orchestrator_home
from twopc.txlog import (
    LogContents,
    LogError,
    LogHome,
    LogMissing,
    Record,
    VerifyReport,
    is_locked,
    read_log,
    verify_log,
)


@click.group("log")
def log_group() -> None:
    """Inspect the durable logs under HOME: coordinators' decision logs (HOME/txlog/<id>/,
    and the operator's resolutions in HOME/txlog/_operator/) and saga orchestrators' logs
    (HOME/sagas/<id>/)."""


@dataclass(frozen=True)
class LogDir:
    """One log directory and whose it is."""

    role: str  # "coordinator", "operator" or "orchestrator"
    name: str
    path: Path

    def document(self) -> dict[str, object]:
        named = {"coordinator": self.name} if self.role == "coordinator" else {}
        return {"log": self.role, "id": self.name, **named, "alive": is_locked(self.path)}

    def heading(self) -> str:
        if self.role == "operator":
            return "== operator's resolutions (twopc resolve)"
        state = "alive" if is_locked(self.path) else "not running"
        prefix = "saga orchestrator " if self.role == "orchestrator" else ""
        return f"== {prefix}{self.name} ({state})"


def _log_dirs(obj: Context, coordinator: str | None, orchestrator: str | None) -> list[LogDir]:
    if coordinator is not None and orchestrator is not None:
        raise click.UsageError("--coordinator and --orchestrator cannot be combined")
    coordinators, orchestrators = coordinator_home(obj.home), orchestrator_home(obj.home)
    if coordinator is not None:
        return [_one(coordinators, coordinator, _coordinator_role(coordinator), "coordinator")]
    if orchestrator is not None:
        checked = check_orchestrator_id(orchestrator)
        return [_one(orchestrators, checked, "orchestrator", "saga orchestrator")]
    # As recovery does, a directory whose name no coordinator could have is not a log.
    operator = [OPERATOR_LOG] if coordinators.exists(OPERATOR_LOG) else []
    names = sorted([*operator, *coordinators.owners()])
    found = [LogDir(_role_of(name), name, coordinators.path(name)) for name in names]
    return found + [
        LogDir("orchestrator", name, orchestrators.path(name)) for name in orchestrators.owners()
    ]


def _coordinator_role(name: str) -> str:
    if name == OPERATOR_LOG:
        return "operator"
    try:
        check_coordinator_id(name)
    except InvalidCoordinatorId as err:
        raise BadInput(str(err)) from None
    return "coordinator"


def _role_of(name: str) -> str:
    return "operator" if name == OPERATOR_LOG else "coordinator"


def _one(logs: LogHome, name: str, role: str, what: str) -> LogDir:
    path = logs.path(name)
    if not path.is_dir():
        raise click.ClickException(f"no log for {what} {name} under {logs.root}")
    return LogDir(role, name, path)


_COORDINATOR_OPTION = click.option("--coordinator", help="Only this coordinator's log.")
_ORCHESTRATOR_OPTION = click.option("--orchestrator", help="Only this saga orchestrator's log.")


@log_group.command("show")
@_COORDINATOR_OPTION
@_ORCHESTRATOR_OPTION
@json_option
@click.pass_obj
@operational_errors
def log_show(
    obj: Context, coordinator: str | None, orchestrator: str | None, as_json: bool
) -> None:
    """Print the records of the logs in order: time, type, txid (gtrid or saga id), then
    the branches, the decision or the body. Default: every log under HOME.

    A damaged log is reported (exit 1) and the others are still listed."""
    documents, lines, damaged = [], [], []
    for log in _log_dirs(obj, coordinator, orchestrator):
        try:
            contents = _read(log)
        except LogError as err:
            damaged.append(str(err))
            documents.append(log.document() | {"error": str(err), "records": []})
            lines += [log.heading(), f"DAMAGED: {err}"]
            continue
        if contents is None:
            continue
        records = [r.to_json() for r in contents.records]
        documents.append(log.document() | {"torn_tail": contents.torn_tail, "records": records})
        lines.append(log.heading())
        lines += [_record_line(r) for r in contents.records]
    emit(as_json, documents, "\n".join(lines) or "no logs")
    if damaged:
        raise Failure("; ".join(damaged))


def _read(log: LogDir) -> LogContents | None:
    """The log's records; None when it went away since it was listed (a one-shot
    coordinator removes its log once nothing in it is unfinished)."""
    try:
        return read_log(log.path)
    except LogMissing:
        if not log.path.is_dir():
            return None
        raise LogError(f"{log.path}: no segment and no checkpoint: no log here") from None


def _record_line(record: Record) -> str:
    stamp = datetime.fromtimestamp(record.time, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return f"{stamp}  {record.kind:<8} {record.txid}  {_record_detail(record)}".rstrip()


def _record_detail(record: Record) -> str:
    """What a record says, briefly: a decision (the operator's) and the branches it names
    with what happened to each; any other body as JSON."""
    body = dict(record.body)
    parts = []
    if isinstance(body.get("decision"), str):
        logged = body.get("logged_decision")
        heuristic = f" (heuristic: the log said {logged})" if body.get("heuristic") else ""
        parts.append(f"decision: {body['decision']}{heuristic}")
    branches = body.get("branches")
    if isinstance(branches, list):
        parts.append(" ".join(_branch_label(branch) for branch in branches))
    if parts:
        return "  ".join(parts)
    return json.dumps(body, sort_keys=True) if body else ""


def _branch_label(branch: object) -> str:
    """A COMMIT record's branch is named by "name"; a RESOLVE record's by "server", with
    the action taken on it."""
    if not isinstance(branch, dict):
        return str(branch)
    name = branch.get("name") or branch.get("server") or "?"
    return f"{name}: {branch['action']}" if "action" in branch else str(name)


@log_group.command("verify", epilog="Exit status: 0 when every log is whole, 1 on damage.")
@_COORDINATOR_OPTION
@_ORCHESTRATOR_OPTION
@json_option
@click.pass_obj
@operational_errors
def log_verify(
    obj: Context, coordinator: str | None, orchestrator: str | None, as_json: bool
) -> None:
    """Check every segment and checkpoint of the logs. Default: every log under HOME.

    A log directory that holds no segment and no checkpoint is damage too."""
    checked = [(log, _verify(log)) for log in _log_dirs(obj, coordinator, orchestrator)]
    logs = [log for log, report in checked if report is not None]
    reports = [report for _, report in checked if report is not None]
    lines = [line for report in reports for line in report.lines()]
    documents = [
        {"log": log.role, "id": log.name} | report.to_json()
        for log, report in zip(logs, reports, strict=True)
    ]
    emit(as_json, documents, "\n".join(lines) or "no logs")
    damaged = [f"{r.path} ({len(r.problems)} problem(s))" for r in reports if not r.ok]
    if damaged:
        raise Failure(f"{len(damaged)} damaged log(s): {', '.join(damaged)}")


def _verify(log: LogDir) -> VerifyReport | None:
    """The log's report; None when it went away since it was listed (see :func:`_read`)."""
    try:
        return verify_log(log.path)
    except LogMissing:
        return None
