"""Property tests of the log's format: round trips, torn tails, and detected damage."""

from __future__ import annotations

import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twopc.txlog import LogContents, LogCorrupt, Record, TransactionLog, read_log, verify_log
from twopc.txlog.files import segment_path
from twopc.txlog.framing import FILE_HEADER_SIZE, SEGMENT_MAGIC, scan_frames
from twopc.txlog.state import UnfinishedTracker

SETTINGS = settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
records = st.builds(
    Record,
    kind=st.sampled_from(["begin", "commit", "end", "step", "compensate"]),
    txid=st.sampled_from(["tx-a", "tx-b", "tx-c", "tx-d", "ü-é"]),
    body=st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    final=st.booleans(),
)
appends = st.tuples(st.just("append"), records, st.booleans())
actions = st.lists(
    appends | st.just(("reopen",)) | st.just(("checkpoint",)), min_size=1, max_size=25
)


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh directory per hypothesis example (tmp_path is shared across examples)."""
    with tempfile.TemporaryDirectory(prefix="txlog-test-") as name:
        yield Path(name) / "log"


def only_segment(directory: Path) -> Path:
    """The log's single live segment."""
    (segment,) = sorted(directory.glob("segment-*.log"))
    return segment


def write_log(directory: Path, items: list[Record], **options: Any) -> list[Record]:
    """Append ``items`` (forced) to a fresh log; return the stamped records."""
    with TransactionLog.open(directory, **options) as log:
        return [log.append(record, force=True) for record in items]


@SETTINGS
@given(actions)
def test_any_appends_closes_reopens_read_back_exactly(steps: list[tuple[Any, ...]]) -> None:
    with scratch() as directory:
        expected: list[Record] = []
        log = TransactionLog.open(directory)
        try:
            for step in steps:
                log = _apply(log, directory, step, expected)
            assert log.unfinished() == UnfinishedTracker(expected).unfinished()
        finally:
            log.close()
        contents = read_log(directory)
        assert contents.records == expected
        assert contents.torn_tail is False
        assert contents.unfinished() == UnfinishedTracker(expected).unfinished()


def _apply(
    log: TransactionLog, directory: Path, step: tuple[Any, ...], expected: list[Record]
) -> TransactionLog:
    if step[0] == "append":
        expected.append(log.append(step[1], force=step[2]))
    elif step[0] == "reopen":
        log.close()
        log = TransactionLog.open(directory)
    else:
        log.checkpoint()
        expected[:] = UnfinishedTracker(expected).records()
    return log


@settings(deadline=None, max_examples=4)
@given(st.lists(records, min_size=1, max_size=4))
def test_truncating_last_record_at_every_offset_reopens_to_records_before(
    items: list[Record],
) -> None:
    with scratch() as directory:
        written = write_log(directory, items)
        segment = only_segment(directory)
        data = segment.read_bytes()
        start = scan_frames(segment, data, FILE_HEADER_SIZE, tail=False).frames[-1].offset
        for cut in range(start, len(data)):
            _check_cut(directory, segment, data[:cut], written[:-1], torn=cut > start)


def _check_cut(
    directory: Path, segment: Path, data: bytes, before: list[Record], *, torn: bool
) -> None:
    segment.write_bytes(data)
    contents = read_log(directory)
    assert contents.records == before
    assert contents.torn_tail is torn
    assert verify_log(directory).ok
    with TransactionLog.open(directory) as log:
        assert log.torn_tail_cut is torn
        extra = log.append(Record("after", "tx-new"), force=True)
    assert read_log(directory).records == [*before, extra]


def test_partial_header_of_a_new_last_segment_is_a_torn_tail(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    write_log(directory, [Record("begin", f"tx-{n}") for n in range(6)], segment_bytes=200)
    last = max(directory.glob("segment-*.log"))
    header = last.read_bytes()[:FILE_HEADER_SIZE]
    kept = read_log(directory).records
    before = kept[: len(kept) - len(_records_in(last))]
    for cut in range(FILE_HEADER_SIZE):  # cut 0: the file exists but nothing reached it
        last.write_bytes(header[:cut])
        assert read_log(directory) == LogContents(before, torn_tail=True)
        with TransactionLog.open(directory, segment_bytes=200) as log:
            extra = log.append(Record("after", "tx-new"), force=True)
        assert read_log(directory).records == [*before, extra]
        assert last.read_bytes()[:FILE_HEADER_SIZE] == header


def _records_in(segment: Path) -> list[bytes]:
    data = segment.read_bytes()
    return [f.payload for f in scan_frames(segment, data, FILE_HEADER_SIZE, tail=True).frames]


@settings(deadline=None, max_examples=6)
@given(st.lists(records, min_size=2, max_size=4), st.data())
def test_flipping_any_byte_is_detected_with_file_and_offset(
    items: list[Record], data: st.DataObject
) -> None:
    with scratch() as directory:
        write_log(directory, items)
        segment = only_segment(directory)
        original = segment.read_bytes()
        frames = scan_frames(segment, original, FILE_HEADER_SIZE, tail=False).frames
        positions = data.draw(st.lists(st.integers(0, len(original) - 1), min_size=1, max_size=40))
        for position in positions:
            xor = data.draw(st.integers(1, 255))
            damaged = bytearray(original)
            damaged[position] ^= xor
            segment.write_bytes(bytes(damaged))
            _assert_corrupt_at(directory, segment, _expected_offset(position, frames))
        segment.write_bytes(original)


def _expected_offset(position: int, frames: list[Any]) -> int | None:
    """The frame start a flip at ``position`` must be reported at (None: in the header)."""
    if position < FILE_HEADER_SIZE:
        return None
    return max(frame.offset for frame in frames if frame.offset <= position)


def _assert_corrupt_at(directory: Path, segment: Path, offset: int | None) -> None:
    with pytest.raises(LogCorrupt) as caught:
        read_log(directory)
    assert caught.value.file == segment
    assert str(segment) in str(caught.value)
    assert f"offset {caught.value.offset}" in str(caught.value)
    if offset is not None:
        assert caught.value.offset == offset
    with pytest.raises(LogCorrupt):
        TransactionLog.open(directory).close()
    assert not verify_log(directory).ok


def test_flip_in_a_non_tail_record_is_detected_at_every_byte(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    write_log(directory, [Record("begin", "tx-1", {"a": 1}), Record("end", "tx-1", final=True)])
    segment = only_segment(directory)
    original = segment.read_bytes()
    frames = scan_frames(segment, original, FILE_HEADER_SIZE, tail=False).frames
    for position in range(len(original)):
        damaged = bytearray(original)
        damaged[position] ^= 0x01
        segment.write_bytes(bytes(damaged))
        _assert_corrupt_at(directory, segment, _expected_offset(position, frames))


def _rewrite_header(segment: Path, *, magic: bytes = SEGMENT_MAGIC, version: int = 1) -> None:
    data = segment.read_bytes()
    head = struct.pack(">8sHHQ", magic, version, 0, int(segment.stem.split("-")[1]))
    segment.write_bytes(head + struct.pack(">I", zlib.crc32(head)) + data[FILE_HEADER_SIZE:])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"magic": b"NOTALOG!"}, "bad magic"),
        ({"version": 2}, "newer than supported"),
        ({"version": 0}, "unknown format version"),
    ],
)
def test_bad_file_headers_are_refused(tmp_path: Path, change: dict[str, Any], problem: str) -> None:
    directory = tmp_path / "log"
    write_log(directory, [Record("begin", "tx-1")])
    segment = only_segment(directory)
    _rewrite_header(segment, **change)
    with pytest.raises(LogCorrupt, match=problem) as caught:
        read_log(directory)
    assert caught.value.file == segment
    with pytest.raises(LogCorrupt, match=problem):
        TransactionLog.open(directory)


def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    items = [Record("begin", f"tx-{n}", {"pad": "x" * 50}) for n in range(12)]
    write_log(directory, items, segment_bytes=300, auto_checkpoint=False)
    numbers = sorted(directory.glob("segment-*.log"))
    assert len(numbers) >= 3
    numbers[1].unlink()
    with pytest.raises(LogCorrupt, match="segment missing") as caught:
        read_log(directory)
    assert caught.value.file == numbers[1]
    report = verify_log(directory)
    assert not report.ok
    assert report.problems[0].file == str(numbers[1])
    with pytest.raises(LogCorrupt):
        TransactionLog.open(directory)


def test_torn_tail_in_a_sealed_segment_is_corruption(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    items = [Record("begin", f"tx-{n}", {"pad": "x" * 50}) for n in range(12)]
    write_log(directory, items, segment_bytes=300, auto_checkpoint=False)
    first = segment_path(directory, 1)
    first.write_bytes(first.read_bytes()[:-5])
    with pytest.raises(LogCorrupt, match="cut short") as caught:
        read_log(directory)
    assert caught.value.file == first


def test_damaged_checkpoint_is_corruption(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    with TransactionLog.open(directory) as log:
        log.append(Record("begin", "tx-open"), force=True)
        log.checkpoint()
    checkpoint = directory / "checkpoint"
    data = bytearray(checkpoint.read_bytes())
    data[-3] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match="checksum") as caught:
        read_log(directory)
    assert caught.value.file == checkpoint
    shutil.rmtree(directory)
