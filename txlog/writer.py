"""The single writer's side of the segment files: append, roll, checkpoint, repair."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from twopc.txlog.files import (
    CHECKPOINT_TEMP_NAME,
    create_file,
    fsync_directory,
    remove_files,
    segment_path,
    write_all,
)
from twopc.txlog.framing import FILE_HEADER_SIZE, SEGMENT_MAGIC, encode_file_header
from twopc.txlog.record import Record
from twopc.txlog.replay import LogScan
from twopc.txlog.segments import Checkpoint, SegmentScan, write_checkpoint
from twopc.txlog.state import UnfinishedTracker

_LOG = logging.getLogger("txlog")


@dataclass(frozen=True)
class PendingRecord:
    """A stamped record and its framed bytes, waiting to be written."""

    record: Record
    frame: bytes


class SegmentWriter:
    """Owns the open last segment. Not thread-safe: the group commit serialises calls.

    Invariant: every segment but the last is whole and synced (a segment is synced before
    the next is created), so only the last one can ever hold a torn tail.
    """

    def __init__(
        self, directory: Path, scan: LogScan | None, segment_bytes: int, *, auto_checkpoint: bool
    ) -> None:
        self._directory = directory
        self._segment_bytes = segment_bytes
        self._auto_checkpoint = auto_checkpoint
        self._tracker = UnfinishedTracker(scan.records if scan else [])
        remove_files(_leftovers(directory, scan))
        if scan is None:
            self._first = self._number = 1
            self._fd = self._create_segment()
        else:
            self._first, self._number = scan.segments[0].number, scan.segments[-1].number
            self._fd, self._size = _resume_segment(scan.segments[-1])
        # Bytes written to the current segment since its last fdatasync: a resumed segment
        # may hold a dead writer's unsynced tail, so it counts as unsynced until synced once.
        self._unsynced = scan is not None
        #: Records written and fdatasyncs of segment data since open (for statistics).
        self.records_written = 0
        self.syncs = 0

    def write(self, batch: list[PendingRecord], sync: bool) -> None:
        """Append ``batch`` in order, rolling segments at the size limit; sync if asked."""
        chunk = bytearray()
        for pending in batch:
            if self._must_roll(len(chunk), len(pending.frame)):
                self._write(chunk)
                chunk = bytearray()
                self._roll(checkpoint=self._auto_checkpoint)
            chunk += pending.frame
            self._tracker.apply(pending.record)
        self._write(chunk)
        self.records_written += len(batch)
        if sync and self._unsynced:  # nothing written since the last sync: nothing to do
            os.fdatasync(self._fd)
            self._unsynced = False
            self.syncs += 1

    def checkpoint(self) -> None:
        """Record what is unfinished and delete the segments that held it (all written
        records must be synced already)."""
        if self._size > FILE_HEADER_SIZE:
            self._roll(checkpoint=True)
        else:
            self._checkpoint_at_current()

    def close(self) -> None:
        """Close the segment (the caller synced it); idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove_all(self, *, durable: bool = True) -> None:
        """Close and delete the whole log directory; with ``durable``, make the removal
        durable (an fsync of the parent directory)."""
        self.close()
        shutil.rmtree(self._directory)
        if durable:
            fsync_directory(self._directory.parent)

    def _must_roll(self, buffered: int, incoming: int) -> bool:
        size = self._size + buffered
        return size > FILE_HEADER_SIZE and size + incoming > self._segment_bytes

    def _write(self, chunk: bytearray) -> None:
        if chunk:
            write_all(self._fd, chunk)
            self._size += len(chunk)
            self._unsynced = True

    def _roll(self, *, checkpoint: bool) -> None:
        # Sync before the next segment exists: a sealed segment is never torn.
        os.fdatasync(self._fd)
        self.syncs += 1
        self.close()
        self._number += 1
        self._fd = self._create_segment()
        self._unsynced = False  # created synced (header, fdatasync, directory)
        if checkpoint:
            self._checkpoint_at_current()

    def _create_segment(self) -> int:
        header = encode_file_header(SEGMENT_MAGIC, self._number)
        self._size = FILE_HEADER_SIZE
        return create_file(segment_path(self._directory, self._number), header)

    def _checkpoint_at_current(self) -> None:
        # The current segment holds no record yet, so the tracker is exactly the state
        # of everything before it: the older segments become redundant.
        write_checkpoint(self._directory, Checkpoint(self._number, self._tracker.records()))
        old = range(self._first, self._number)
        remove_files([segment_path(self._directory, number) for number in old])
        self._first = self._number


def _leftovers(directory: Path, scan: LogScan | None) -> list[Path]:
    # A crash between writing a checkpoint and deleting what it superseded leaves these.
    stale = [segment_path(directory, number) for number in scan.stale] if scan else []
    temp = directory / CHECKPOINT_TEMP_NAME
    return [*stale, temp] if temp.exists() else stale


def _resume_segment(last: SegmentScan) -> tuple[int, int]:
    """Open the last segment for appending, cutting a torn tail first; return (fd, size)."""
    fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
    try:
        if last.torn:
            _cut_torn_tail(fd, last)
        return fd, max(last.end, FILE_HEADER_SIZE)
    except BaseException:
        os.close(fd)
        raise


def _cut_torn_tail(fd: int, last: SegmentScan) -> None:
    os.ftruncate(fd, last.end)
    if last.end == 0:  # even the header was cut short: the segment was being created
        write_all(fd, encode_file_header(SEGMENT_MAGIC, last.number))
    os.fdatasync(fd)
    _LOG.info(
        "txlog: cut torn tail of %s at offset %d (%d partial bytes dropped)",
        last.path,
        last.end,
        last.size - last.end,
    )
