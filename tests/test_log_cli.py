"""``twopc log show`` and ``twopc log verify``: what operators read when something went wrong."""

from __future__ import annotations

import json
from pathlib import Path

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
