"""``verify_log``: check every segment and the checkpoint, and report, instead of raising,
everything that is wrong (for ``twopc log verify``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twopc.txlog.errors import LogCorrupt, LogMissing
from twopc.txlog.files import CHECKPOINT_NAME, list_segments, segment_path
from twopc.txlog.locking import is_locked
from twopc.txlog.replay import RACE_RETRIES, checkpoint_identity, readable
from twopc.txlog.segments import Checkpoint, read_checkpoint, read_segment


@dataclass(frozen=True)
class Problem:
    """One piece of damage: which file, at which byte offset, and what is wrong."""

    file: str
    offset: int
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: offset {self.offset}: {self.problem}"


@dataclass(frozen=True)
class SegmentReport:
    """One segment file. ``records`` is ``None`` when the segment could not be decoded;
    a ``stale`` segment was superseded by the checkpoint and is not read."""

    file: str
    number: int
    bytes: int
    records: int | None
    torn_tail: bool = False
    stale: bool = False


@dataclass(frozen=True)
class CheckpointReport:
    """The checkpoint file: first live segment and the records it carries."""

    file: str
    first_segment: int
    records: int
    bytes: int


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_log`; ``ok`` is false iff there is damage."""

    path: str
    locked: bool  # a live writer holds the log (it may have grown since)
    checkpoint: CheckpointReport | None
    segments: list[SegmentReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every live segment and the checkpoint decode cleanly."""
        return not self.problems

    @property
    def records(self) -> int:
        """Records the log holds (checkpoint carried + live segments that decoded)."""
        carried = self.checkpoint.records if self.checkpoint else 0
        return carried + sum(s.records or 0 for s in self.segments if not s.stale)

    @property
    def torn_tail(self) -> bool:
        """Whether the last segment ends in a partial record (not damage)."""
        return any(s.torn_tail for s in self.segments)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {**asdict(self), "ok": self.ok, "records": self.records, "torn_tail": self.torn_tail}

    def lines(self) -> list[str]:
        """The report for people, one line per fact, problems last."""
        verdict = "OK" if self.ok else f"DAMAGED ({len(self.problems)} problem(s))"
        notes = ", torn tail ignored" if self.torn_tail else ""
        writer = "live writer" if self.locked else "no live writer"
        head = f"log {self.path}: {verdict}; {self.records} records{notes}; {writer}"
        return [head, *self._checkpoint_lines(), *map(_segment_line, self.segments)] + [
            f"PROBLEM {problem}" for problem in self.problems
        ]

    def _checkpoint_lines(self) -> list[str]:
        if self.checkpoint is None:
            return ["checkpoint: none"]
        cp = self.checkpoint
        return [
            f"checkpoint: first live segment {cp.first_segment}, "
            f"{cp.records} carried records, {cp.bytes} bytes"
        ]


def _segment_line(segment: SegmentReport) -> str:
    name = Path(segment.file).name
    if segment.stale:
        return f"{name}: stale (superseded by the checkpoint), {segment.bytes} bytes"
    records = "undecodable" if segment.records is None else f"{segment.records} records"
    torn = ", torn tail" if segment.torn_tail else ""
    return f"{name}: {records}, {segment.bytes} bytes{torn}"


def verify_log(path: Path) -> VerifyReport:
    """Check the checkpoint and every segment of the log at ``path`` without locking it.

    Damage is reported in ``problems`` (never raised), and so is a directory that holds
    no segment and no checkpoint; :class:`LogMissing` if there is no directory at all.
    """
    directory = Path(path)
    for _ in range(RACE_RETRIES):
        # A live writer's checkpoint deletes segments: a run that saw the checkpoint change
        # and found a problem is repeated rather than reporting damage that is not there.
        before = checkpoint_identity(directory)
        try:
            report = _verify_once(directory)
        except FileNotFoundError:
            if checkpoint_identity(directory) == before:
                raise
            continue
        if report.ok or checkpoint_identity(directory) == before:
            return report
    return _verify_once(directory)


def _verify_once(directory: Path) -> VerifyReport:
    if not directory.is_dir():
        raise LogMissing(directory)
    problems: list[Problem] = []
    checkpoint = _verify_checkpoint(directory, problems)
    numbers = list_segments(directory)
    if checkpoint is None and not numbers and not problems:
        # Only a LOCK file, or a stray directory: whatever it held is gone, and recovery
        # will not presume abort for its transactions (the log is "missing").
        problems.append(Problem(str(directory), 0, "no segment and no checkpoint: no log here"))
        return VerifyReport(str(directory), is_locked(directory), None, [], problems)
    first = checkpoint.first_segment if checkpoint else min(numbers, default=1)
    segments = _verify_segments(directory, numbers, first, problems)
    return VerifyReport(
        str(directory),
        is_locked(directory),
        _checkpoint_report(directory, checkpoint),
        segments,
        problems,
    )


def _verify_checkpoint(directory: Path, problems: list[Problem]) -> Checkpoint | None:
    try:
        return readable(directory / CHECKPOINT_NAME, lambda: read_checkpoint(directory))
    except LogCorrupt as err:
        problems.append(Problem(str(err.file), err.offset, err.problem))
        return None


def _checkpoint_report(directory: Path, checkpoint: Checkpoint | None) -> CheckpointReport | None:
    if checkpoint is None:
        return None
    file = directory / CHECKPOINT_NAME
    size = os.path.getsize(file)
    return CheckpointReport(str(file), checkpoint.first_segment, len(checkpoint.records), size)


def _verify_segments(
    directory: Path, numbers: list[int], first: int, problems: list[Problem]
) -> list[SegmentReport]:
    live = [n for n in numbers if n >= first]
    last = max(live, default=first)
    for missing in sorted(set(range(first, last + 1)) - set(live)):
        problems.append(Problem(str(segment_path(directory, missing)), 0, "segment missing"))
    stale = [_stale_report(directory, n) for n in numbers if n < first]
    live_reports = [_verify_segment(directory, n, n == last, problems) for n in live]
    return [report for report in stale if report is not None] + live_reports


def _stale_report(directory: Path, number: int) -> SegmentReport | None:
    file = segment_path(directory, number)
    try:
        size = os.path.getsize(file)
    except FileNotFoundError:  # a live writer is deleting what its checkpoint superseded
        return None
    return SegmentReport(str(file), number, size, None, stale=True)


def _verify_segment(
    directory: Path, number: int, tail: bool, problems: list[Problem]
) -> SegmentReport:
    file = segment_path(directory, number)
    try:
        scan = readable(file, lambda: read_segment(directory, number, tail=tail))
    except LogCorrupt as err:
        problems.append(Problem(str(err.file), err.offset, err.problem))
        return SegmentReport(str(file), number, os.path.getsize(file), None)
    return SegmentReport(str(file), number, scan.size, len(scan.records), torn_tail=scan.torn)
