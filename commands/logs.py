"""`twopc log show|verify`: reading the decision logs."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click

from commands.common import BadInput, Context, emit, json_option, operational_errors
from coordinator import InvalidCoordinatorId, check_coordinator_id
from coordinator.recovery import OPERATOR_LOG, txlog_root
from saga.ids import check_orchestrator_id
from saga.logs import orchestrator_ids, saga_root
from txlog import LogError, Record, is_locked, read_log, verify_log


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
    root = txlog_root(obj.home)
    if coordinator is not None:
        return [_one(root, coordinator, _coordinator_role(coordinator), "coordinator")]
    if orchestrator is not None:
        return [
            _one(
                saga_root(obj.home),
                check_orchestrator_id(orchestrator),
                "orchestrator",
                "saga orchestrator",
            )
        ]
    coordinators = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    found = [LogDir(_role_of(p.name), p.name, p) for p in coordinators]
    return found + [
        LogDir("orchestrator", name, saga_root(obj.home) / name)
        for name in orchestrator_ids(obj.home)
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


def _one(root: Path, name: str, role: str, what: str) -> LogDir:
    path = root / name
    if not path.is_dir():
        raise click.ClickException(f"no log for {what} {name} under {root}")
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
    """Print the records of the logs in order: type, txid (gtrid or saga id), branches or
    body, time. Default: every log under HOME."""
    documents, lines = [], []
    for log in _log_dirs(obj, coordinator, orchestrator):
        try:
            contents = read_log(log.path)
        except LogError as err:
            raise click.ClickException(str(err)) from None
        records = [r.to_json() for r in contents.records]
        documents.append(log.document() | {"torn_tail": contents.torn_tail, "records": records})
        lines.append(log.heading())
        lines += [_record_line(r) for r in contents.records]
    emit(as_json, documents, "\n".join(lines) or "no logs")


def _record_line(record: Record) -> str:
    stamp = datetime.fromtimestamp(record.time, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    branches = record.body.get("branches")
    names = " ".join(b.get("name", "?") for b in branches) if isinstance(branches, list) else ""
    extra = names or json.dumps(dict(record.body), sort_keys=True) if record.body else names
    return f"{stamp}  {record.kind:<8} {record.txid}  {extra}".rstrip()


@log_group.command("verify", epilog="Exit status: 0 when every log is whole, 1 on damage.")
@_COORDINATOR_OPTION
@_ORCHESTRATOR_OPTION
@json_option
@click.pass_obj
@operational_errors
def log_verify(
    obj: Context, coordinator: str | None, orchestrator: str | None, as_json: bool
) -> None:
    """Check every segment and checkpoint of the logs. Default: every log under HOME."""
    logs = _log_dirs(obj, coordinator, orchestrator)
    reports = [verify_log(log.path) for log in logs]
    lines = [line for report in reports for line in report.lines()]
    documents = [
        {"log": log.role, "id": log.name} | report.to_json()
        for log, report in zip(logs, reports, strict=True)
    ]
    emit(as_json, documents, "\n".join(lines) or "no logs")
    if not all(r.ok for r in reports):
        sys.exit(1)
