"""Reading a whole log directory: checkpoint first, then every live segment in order."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from twopc.txlog.errors import LogCorrupt, LogMissing
from twopc.txlog.files import CHECKPOINT_NAME, list_segments, segment_path
from twopc.txlog.record import Record
from twopc.txlog.segments import Checkpoint, SegmentScan, read_checkpoint, read_segment
from twopc.txlog.state import UnfinishedTracker

# A reader racing a live writer's checkpoint retries this often before giving up.
RACE_RETRIES = 20
_T = TypeVar("_T")


@dataclass(frozen=True)
class LogScan:
    """Everything found in a log directory, as the writer needs it to resume."""

    checkpoint: Checkpoint | None
    segments: list[SegmentScan]
    stale: list[int] = field(default_factory=list)  # segments a checkpoint already superseded

    @property
    def records(self) -> list[Record]:
        """Checkpointed records, then every live segment's records, in append order."""
        carried = self.checkpoint.records if self.checkpoint else []
        return carried + [record for scan in self.segments for record in scan.records]

    @property
    def torn_tail(self) -> bool:
        """Whether the last segment ends in a partial record (or partial header)."""
        return bool(self.segments) and self.segments[-1].torn


@dataclass(frozen=True)
class LogContents:
    """A read-only view of a log: every record still in it, in append order."""

    records: list[Record]
    torn_tail: bool

    def unfinished(self) -> dict[str, list[Record]]:
        """txid -> its records, for txids with no final record yet."""
        return UnfinishedTracker(self.records).unfinished()


def scan_log(directory: Path) -> LogScan:
    """Decode the checkpoint and the live segments; :class:`LogCorrupt` on any damage other
    than a torn tail of the last segment, :class:`LogMissing` if there is no log."""
    if not directory.is_dir():
        raise LogMissing(directory)
    checkpoint = readable(directory / CHECKPOINT_NAME, lambda: read_checkpoint(directory))
    numbers = list_segments(directory)
    if checkpoint is None and not numbers:
        raise LogMissing(directory)
    first = checkpoint.first_segment if checkpoint else 1
    live = [n for n in numbers if n >= first]
    _check_contiguous(directory, first, live)
    scans = [_read_segment(directory, n, tail=n == live[-1]) for n in live]
    return LogScan(checkpoint, scans, [n for n in numbers if n < first])


def _read_segment(directory: Path, number: int, *, tail: bool) -> SegmentScan:
    path = segment_path(directory, number)
    return readable(path, lambda: read_segment(directory, number, tail=tail))


def readable(path: Path, read: Callable[[], _T]) -> _T:
    """``read()``, with a file of the log that cannot be read (a directory where a segment
    should be, no permission) reported as :class:`LogCorrupt` at ``path``, like any other
    damage. A missing file stays ``FileNotFoundError``: a checkpoint race, or no log."""
    try:
        return read()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise LogCorrupt(path, 0, f"cannot be read: {err.strerror or err}") from err


def _check_contiguous(directory: Path, first: int, live: list[int]) -> None:
    expected = range(first, first + len(live))
    for want, have in zip(expected, live, strict=True):
        if want != have:
            raise LogCorrupt(segment_path(directory, want), 0, "segment missing")
    if not live:
        raise LogCorrupt(segment_path(directory, first), 0, "segment missing")


def read_log(path: Path) -> LogContents:
    """Read a log without locking it; a live writer may be appending (its partial last
    record is a torn tail and is ignored). Raises :class:`LogCorrupt` on damage and
    :class:`LogMissing` (a ``FileNotFoundError``) if there is no log at ``path``."""
    scan = _scan_consistently(Path(path))
    return LogContents(scan.records, scan.torn_tail)


def _scan_consistently(directory: Path) -> LogScan:
    # A live writer's checkpoint deletes segments; a scan that saw the checkpoint change
    # under it may have seen a missing segment that is not damage, so it is retried. A file
    # listed and then gone was deleted meanwhile (a checkpoint, or the whole log destroyed by
    # its writer once nothing in it was unfinished): scanned again; a log gone is missing.
    # The last attempt takes what it reads, or raises what it meets.
    for attempt in range(RACE_RETRIES + 1):
        last = attempt == RACE_RETRIES
        before = checkpoint_identity(directory)
        try:
            scan = scan_log(directory)
        except LogMissing:
            raise
        except (FileNotFoundError, LogCorrupt) as err:
            if not directory.is_dir():
                raise LogMissing(directory) from None
            if last or (isinstance(err, LogCorrupt) and checkpoint_identity(directory) == before):
                raise
            continue
        if last or checkpoint_identity(directory) == before:
            return scan
    raise AssertionError("unreachable: the last attempt returns or raises")


def checkpoint_identity(directory: Path) -> tuple[int, int, int] | None:
    """Changes whenever the checkpoint is replaced (each replacement is a new file)."""
    try:
        stat = os.stat(directory / CHECKPOINT_NAME)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
