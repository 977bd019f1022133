"""Replay of stored logs (tests/data/logs, made by make_logs.py): what reading, verifying
and reopening each one must do, including the logs that must be rejected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from twopc.txlog import LogCorrupt, LogMissing, Record, TransactionLog, read_log, verify_log

LOGS = Path(__file__).resolve().parent / "data" / "logs"
EXPECTED: dict[str, Any] = json.loads((LOGS / "expected.json").read_text())


def copy_of(name: str, tmp_path: Path) -> Path:
    """A writable copy (opening for writing repairs and locks; the stored logs stay put)."""
    return Path(shutil.copytree(LOGS / name, tmp_path / name))


def test_good_log_replays_checkpoint_then_segments() -> None:
    contents = read_log(LOGS / "good")
    assert contents.torn_tail is False
    assert len(contents.records) == 20
    carried = contents.records[0]
    assert (carried.kind, carried.txid, dict(carried.body)) == (
        "commit",
        "coord-a-pending",
        {"branches": ["postgres"]},
    )
    assert [r.txid for r in contents.records[1:5]] == ["coord-a-4"] * 2 + ["coord-a-5"] * 2
    assert sorted(contents.unfinished()) == ["coord-a-6", "coord-a-pending"]
    assert all(r.time > 0 for r in contents.records)
    times = [r.time for r in contents.records]
    assert times == sorted(times)


def test_good_log_verifies_and_reopens(tmp_path: Path) -> None:
    report = verify_log(LOGS / "good")
    assert report.ok and report.records == 20 and report.problems == []
    assert [s.records for s in report.segments] == [5, 5, 5, 4]
    assert json.loads(json.dumps(report.to_json()))["ok"] is True
    assert report.lines()[0].startswith(f"log {LOGS / 'good'}: OK; 20 records")
    with TransactionLog.open(copy_of("good", tmp_path), segment_bytes=600) as log:
        assert sorted(log.unfinished()) == ["coord-a-6", "coord-a-pending"]
        assert not log.torn_tail_cut


def test_torn_tail_log_drops_only_the_partial_record(tmp_path: Path) -> None:
    good = read_log(LOGS / "good").records
    contents = read_log(LOGS / "torn-tail")
    assert contents.torn_tail is True
    assert contents.records == good[:-1]
    assert verify_log(LOGS / "torn-tail").ok
    directory = copy_of("torn-tail", tmp_path)
    last = sorted(directory.glob("segment-*.log"))[-1]
    with TransactionLog.open(directory, segment_bytes=600) as log:
        assert log.torn_tail_cut
        # make_logs.py cut 7 bytes into the last record: the writer cuts back to its start.
        assert last.stat().st_size == EXPECTED["torn-tail"]["torn_cut_at"] - 7
        extra = log.append(Record("commit", "coord-a-99"), force=True)
    assert read_log(directory).records == [*good[:-1], extra]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("mid-corrupt", "checksum mismatch"),
        ("newer-version", "newer than supported"),
        ("missing-segment", "segment missing"),
    ],
)
def test_damaged_logs_are_rejected_naming_file_and_offset(
    name: str, problem: str, tmp_path: Path
) -> None:
    expected = EXPECTED[name]
    with pytest.raises(LogCorrupt, match=problem) as caught:
        read_log(LOGS / name)
    assert caught.value.file.name == expected["file"]
    assert caught.value.offset == expected.get("offset", caught.value.offset)
    assert f"{caught.value.file}: offset {caught.value.offset}" in str(caught.value)
    report = verify_log(LOGS / name)
    assert not report.ok
    assert Path(report.problems[0].file).name == expected["file"]
    assert any(line.startswith("PROBLEM ") for line in report.lines())
    with pytest.raises(LogCorrupt, match=problem):
        TransactionLog.open(copy_of(name, tmp_path))


def test_mid_corrupt_damage_is_located_exactly() -> None:
    report = verify_log(LOGS / "mid-corrupt")
    (problem,) = report.problems
    assert (Path(problem.file).name, problem.offset) == (
        EXPECTED["mid-corrupt"]["file"],
        EXPECTED["mid-corrupt"]["offset"],
    )
    undecodable = [s for s in report.segments if s.records is None]
    assert [Path(s.file).name for s in undecodable] == [EXPECTED["mid-corrupt"]["file"]]


def test_a_log_destroyed_while_it_is_read_is_missing_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader lists the segments of a finished one-shot log just before its writer
    destroys it: the reader must be told the log is missing (a plain FileNotFoundError broke
    saga pruning, and so a CLI transfer that had moved its money exited 1)."""
    import twopc.txlog.replay as replay

    txlog = TransactionLog.open(tmp_path / "one-shot")
    txlog.append(Record("commit", "t1", {}), force=True)
    txlog.append(Record("end", "t1", {}, final=True), force=True)
    listed = replay.list_segments
    destroyed: list[bool] = []

    def list_then_destroy(directory: Path) -> list[int]:
        numbers = listed(directory)
        if not destroyed:
            txlog.destroy()  # the writer finishes between the listing and the reading
            destroyed.append(True)
        return numbers

    monkeypatch.setattr(replay, "list_segments", list_then_destroy)
    with pytest.raises(LogMissing):
        read_log(tmp_path / "one-shot")
