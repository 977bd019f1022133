"""Checkpoints keep the log bounded without losing unfinished transactions; the lock."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from twopc.txlog import (
    LogError,
    LogLocked,
    LogMissing,
    LogStats,
    Record,
    TransactionLog,
    is_locked,
    read_log,
    verify_log,
)
from twopc.txlog import writer as writer_module
from twopc.txlog.files import disk_usage

SEGMENT = 8 * 1024


def run_transactions(log: TransactionLog, count: int, prefix: str = "tx") -> None:
    for number in range(count):
        txid = f"{prefix}-{number}"
        log.append(Record("begin", txid, {"branches": ["pg", "my"]}), force=False)
        log.append(Record("commit", txid), force=number % 50 == 0)
        log.append(Record("end", txid, final=True), force=False)


def test_disk_use_stays_bounded_when_everything_ends(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with TransactionLog.open(directory, segment_bytes=SEGMENT) as log:
        for _ in range(5):
            run_transactions(log, 400)
            assert disk_usage(directory) <= 2 * SEGMENT
        log.checkpoint()
        assert disk_usage(directory) < 1024
        assert log.unfinished() == {}
    assert read_log(directory).records == []


def test_unfinished_txid_survives_checkpoints_and_reopen_until_it_ends(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with TransactionLog.open(directory, segment_bytes=SEGMENT) as log:
        first = log.append(Record("begin", "long", {"branches": ["pg"]}), force=True)
        decision = log.append(Record("commit", "long"), force=True)
        run_transactions(log, 500)
        log.checkpoint()
    assert len(list(directory.glob("segment-*.log"))) == 1
    assert read_log(directory).records == [first, decision]
    with TransactionLog.open(directory, segment_bytes=SEGMENT) as log:
        assert log.unfinished() == {"long": [first, decision]}
        run_transactions(log, 500, prefix="more")
        assert log.unfinished() == {"long": [first, decision]}
        log.append(Record("end", "long", final=True), force=False)
        log.checkpoint()
    assert read_log(directory).records == []


def test_segments_pile_up_without_auto_checkpoint_until_asked(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with TransactionLog.open(directory, segment_bytes=SEGMENT, auto_checkpoint=False) as log:
        log.append(Record("begin", "open-one"), force=True)
        run_transactions(log, 300)
        log.append(Record("end", "open-one", final=True), force=True)  # flushes the buffer
        assert len(list(directory.glob("segment-*.log"))) > 3
        records_before = read_log(directory).records
        log.append(Record("begin", "open-one"), force=False)
        log.checkpoint()
        assert len(list(directory.glob("segment-*.log"))) == 1
    assert len(records_before) == 902
    assert [r.txid for r in read_log(directory).records] == ["open-one"]
    assert verify_log(directory).ok


def test_reader_sees_a_live_writer_that_checkpoints(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    stop = threading.Event()
    with TransactionLog.open(directory, segment_bytes=SEGMENT) as log:
        log.append(Record("begin", "pinned"), force=True)

        def write() -> None:
            while not stop.is_set():
                run_transactions(log, 50)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            for _ in range(30):
                assert "pinned" in read_log(directory).unfinished()
                assert verify_log(directory).ok
        finally:
            stop.set()
            writer.join()


def test_concurrent_appends_all_land(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with TransactionLog.open(directory, segment_bytes=SEGMENT) as log:
        threads = [
            threading.Thread(target=run_transactions, args=(log, 200, f"t{n}")) for n in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log.append(Record("begin", "last"), force=True)
        assert list(log.unfinished()) == ["last"]
    assert list(read_log(directory).unfinished()) == ["last"]


def test_stats_count_records_and_the_syncs_that_made_them_durable(tmp_path: Path) -> None:
    with TransactionLog.open(tmp_path / "log") as log:
        assert log.stats() == LogStats(records=0, syncs=0)
        for number in range(3):
            log.append(Record("begin", f"t{number}"), force=True)
        assert log.stats() == LogStats(records=3, syncs=3)  # one appender: a sync each
        for number in range(3):
            log.append(Record("end", f"t{number}", final=True), force=False)
        assert log.stats() == LogStats(records=3, syncs=3)  # unforced: only buffered
        log.append(Record("begin", "t9"), force=True)
        assert log.stats() == LogStats(records=7, syncs=4)  # one sync for all four
        log.sync()
        assert log.stats() == LogStats(records=7, syncs=4)  # nothing new: nothing to sync
        log.append(Record("end", "t9", final=True), force=False)
        log.sync()
        assert log.stats() == LogStats(records=8, syncs=5)


def test_a_reopened_log_is_synced_once_though_nothing_is_appended(tmp_path: Path) -> None:
    """Its last segment may hold a dead writer's unsynced tail: the first sync syncs it."""
    with TransactionLog.open(tmp_path / "log") as log:
        log.append(Record("begin", "t1"), force=False)
    with TransactionLog.open(tmp_path / "log") as log:
        log.sync()
        log.sync()
        assert log.stats() == LogStats(records=0, syncs=1)


def test_second_writer_is_refused_and_lock_follows_close(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    assert not is_locked(directory)
    assert not directory.exists(), "is_locked must not create the log"
    log = TransactionLog.open(directory)
    assert is_locked(directory)
    with pytest.raises(LogLocked):
        TransactionLog.open(directory)
    log.close()
    log.close()  # idempotent
    assert not is_locked(directory)
    with pytest.raises(LogError, match="closed"):
        log.append(Record("begin", "late"), force=True)
    TransactionLog.open(directory).close()


def test_open_without_create_and_read_of_absent_log(tmp_path: Path) -> None:
    with pytest.raises(LogMissing):
        TransactionLog.open(tmp_path / "absent", create=False)
    with pytest.raises(FileNotFoundError, match="no log at"):
        read_log(tmp_path / "absent")
    with pytest.raises(LogMissing):
        verify_log(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_destroy_refuses_unfinished_then_removes_everything(tmp_path: Path) -> None:
    directory = tmp_path / "coordinators" / "one-shot"
    log = TransactionLog.open(directory)
    log.append(Record("commit", "tx-1", {"branches": ["pg", "my"]}), force=True)
    with pytest.raises(LogError, match="unfinished"):
        log.destroy()
    assert directory.exists()
    log.append(Record("end", "tx-1", final=True), force=False)
    log.destroy()
    assert not directory.exists()
    assert not is_locked(directory)
    assert log.stats().syncs == 2  # the END was made durable before the removal


def test_destroy_leaves_making_the_removal_durable_to_the_caller_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(writer_module, "fsync_directory", synced.append)
    log = TransactionLog.open(tmp_path / "a")
    log.append(Record("end", "tx-1", final=True), force=False)
    log.destroy(durable=False)
    assert synced == [] and not (tmp_path / "a").exists()
    assert log.stats().syncs == 0  # what is deleted is not synced first either
    TransactionLog.open(tmp_path / "b").destroy()
    assert synced == [tmp_path] and not (tmp_path / "b").exists()


def test_torn_tail_cut_is_reported_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "log"
    with TransactionLog.open(directory) as log:
        kept = log.append(Record("begin", "tx-1"), force=True)
        log.append(Record("begin", "tx-2"), force=True)
    (segment,) = directory.glob("segment-*.log")
    segment.write_bytes(segment.read_bytes()[:-3])
    with caplog.at_level(logging.INFO, logger="txlog"), TransactionLog.open(directory) as log:
        assert log.torn_tail_cut
    assert "torn tail" in caplog.text and str(segment) in caplog.text
    assert read_log(directory).records == [kept]


def test_bad_records_are_refused_before_touching_the_log(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Record("", "tx")
    with TransactionLog.open(tmp_path / "log") as log:
        with pytest.raises(LogError, match="JSON"):
            log.append(Record("begin", "tx", {"bad": object()}), force=True)
        with pytest.raises(LogError, match="JSON"):
            log.append(Record("begin", "tx", {"nan": float("nan")}), force=True)
        assert log.unfinished() == {}
