"""``twopc log show`` and ``twopc log verify``: what operators read when something went wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Databases


def crash_with_decision(db: Databases, coordinator: str) -> Path:
    crash = db.twopc(
        "transfer",
        "pg:a1",
        "mysql:a2",
        "3",
        "--coordinator-id",
        coordinator,
        "--crash-at",
        "after-decision",
    )
    assert crash.returncode == -9
    return db.home / "txlog" / coordinator


def test_log_show_lists_the_decision(db: Databases) -> None:
    crash_with_decision(db, "show-1")
    result = db.twopc("log", "show", "--coordinator", "show-1", "--json")
    assert result.returncode == 0, result.stderr
    (log,) = json.loads(result.stdout)
    assert log["coordinator"] == "show-1" and log["alive"] is False
    (record,) = log["records"]
    assert record["kind"] == "COMMIT" and record["txid"].startswith("show-1.")
    assert [b["name"] for b in record["body"]["branches"]] == ["pg", "mysql"]
    text = db.twopc("log", "show").stdout
    assert "== show-1 (not running)" in text
    assert f"COMMIT   {record['txid']}  pg mysql" in text
    missing = db.twopc("log", "show", "--coordinator", "nobody")
    assert missing.returncode == 1 and "no log for coordinator nobody" in missing.stderr


def test_log_verify_reports_damage_with_file_and_offset(db: Databases) -> None:
    path = crash_with_decision(db, "verify-1")
    assert db.twopc("log", "verify").returncode == 0
    (segment,) = sorted(path.glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    at = data.index(b"verify-1.")
    data[at] ^= 0x01  # one flipped bit inside the COMMIT record's payload
    segment.write_bytes(bytes(data))
    result = db.twopc("log", "verify", "--json")
    assert result.returncode == 1
    (report,) = json.loads(result.stdout)
    assert report["ok"] is False
    assert segment.name in json.dumps(report["problems"])
    shown = db.twopc("log", "show", "--coordinator", "verify-1")
    assert shown.returncode == 1
    assert segment.name in shown.stderr and "offset" in shown.stderr
    assert len(shown.stderr.splitlines()) == 1


def crash_saga(db: Databases, orchestrator: str) -> Path:
    args = ("transfer", "pg:a3", "mysql:a4", "2", "--mode", "saga", "--saga-id", "s-log")
    crash = db.twopc(*args, "--coordinator-id", orchestrator, "--crash-at", "after-debit")
    assert crash.returncode == -9, crash.stderr
    return db.home / "sagas" / orchestrator


def test_log_show_and_verify_cover_saga_orchestrators(db: Databases) -> None:
    crash_with_decision(db, "both-1")
    path = crash_saga(db, "orch-1")
    shown = db.twopc("log", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    logs = {(log["log"], log["id"]): log for log in json.loads(shown.stdout)}
    assert set(logs) == {("coordinator", "both-1"), ("orchestrator", "orch-1")}
    saga = logs[("orchestrator", "orch-1")]
    assert saga["alive"] is False
    assert {r["txid"] for r in saga["records"]} == {"s-log"}
    text = db.twopc("log", "show", "--orchestrator", "orch-1").stdout
    assert text.startswith("== saga orchestrator orch-1 (not running)\n")
    assert " s-log " in text

    (segment,) = sorted(path.glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    data[data.index(b"s-log")] ^= 0x01
    segment.write_bytes(bytes(data))
    verified = db.twopc("log", "verify", "--json")
    assert verified.returncode == 1
    reports = {(r["log"], r["id"]): r["ok"] for r in json.loads(verified.stdout)}
    assert reports == {("coordinator", "both-1"): True, ("orchestrator", "orch-1"): False}
    assert db.twopc("log", "verify", "--coordinator", "both-1").returncode == 0


def test_log_show_includes_the_operators_resolutions(db: Databases) -> None:
    path = crash_with_decision(db, "op-1")
    (record,) = json.loads(db.twopc("log", "show", "--json").stdout)[0]["records"]
    resolved = db.twopc("resolve", record["txid"], "--commit")
    assert resolved.returncode == 0, resolved.stderr
    assert path.parent.joinpath("_operator").is_dir()
    shown = db.twopc("log", "show", "--coordinator", "_operator", "--json")
    assert shown.returncode == 0, shown.stderr
    (log,) = json.loads(shown.stdout)
    assert log["log"] == "operator"
    assert record["txid"] in {r["txid"] for r in log["records"]}
    text = db.twopc("log", "show").stdout
    assert "== operator's resolutions (twopc resolve)" in text


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--coordinator", "../sagas", "coordinator id '../sagas' must be 1-40 letters"),
        ("--orchestrator", "../txlog", "orchestrator id '../txlog' must be 1-40 letters"),
    ],
)
def test_log_commands_refuse_ids_that_are_paths(
    db: Databases, option: str, value: str, message: str
) -> None:
    crash_with_decision(db, "path-1")
    for command in ("show", "verify"):
        result = db.twopc("log", command, option, value)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert message in result.stderr


def test_log_commands_refuse_both_filters(db: Databases) -> None:
    result = db.twopc("log", "show", "--coordinator", "a", "--orchestrator", "b")
    assert result.returncode == 2
    assert "--coordinator and --orchestrator cannot be combined" in result.stderr
