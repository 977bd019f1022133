"""`twopc log show|verify`: reading the decision logs."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from commands.common import Context, emit, json_option, operational_errors
from txlog import LogError, Record, is_locked, read_log, verify_log

# -- the decision logs ------------------------------------------------------------------------


@click.group("log")
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
