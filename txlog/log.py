"""The writer's handle on a log directory: :class:`TransactionLog`."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from twopc.txlog.errors import LogError, LogMissing
from twopc.txlog.files import fsync_directory, make_directories
from twopc.txlog.framing import FILE_HEADER_SIZE, FRAME_OVERHEAD
from twopc.txlog.group_commit import GroupCommit
from twopc.txlog.locking import WriterLock
from twopc.txlog.record import Record
from twopc.txlog.replay import LogScan, scan_log
from twopc.txlog.segments import encode_record
from twopc.txlog.state import UnfinishedTracker
from twopc.txlog.writer import PendingRecord, SegmentWriter

DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
MIN_SEGMENT_BYTES = FILE_HEADER_SIZE + FRAME_OVERHEAD
# Unforced records are written (not synced) once this many bytes of them are buffered.
UNFORCED_BUFFER_BYTES = 256 * 1024


@dataclass(frozen=True)
class LogStats:
    """What a writer has done since :meth:`TransactionLog.open`.

    ``records`` written to segment files and ``syncs`` (fdatasyncs) that made them durable;
    with group commit, concurrent forced appends share syncs, so ``records / syncs`` is the
    average batch.
    """

    records: int
    syncs: int


class TransactionLog:
    """The single writer of a log directory (see :meth:`open`); thread-safe.

    Holds the directory's exclusive lock from :meth:`open` to :meth:`close`.
    """

    def __init__(
        self, directory: Path, lock: WriterLock, scan: LogScan | None, writer: SegmentWriter
    ) -> None:
        """Internal: use :meth:`open`."""
        self._directory = directory
        self._lock = lock
        self._writer = writer
        self._view = UnfinishedTracker(scan.records if scan else [])
        self._view_lock = threading.Lock()
        self._commit = GroupCommit[PendingRecord](
            writer.write, self._enqueued, UNFORCED_BUFFER_BYTES
        )
        self._closed = False
        self._torn_tail_cut = bool(scan and scan.torn_tail)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        create: bool = True,
        auto_checkpoint: bool = True,
    ) -> TransactionLog:
        """Open the log at ``path`` for writing: create it if absent (unless ``create`` is
        false: :class:`LogMissing`), take its lock (:class:`LogLocked` if a live writer
        holds it), cut a torn tail, and replay what is unfinished.

        The log rolls to a new segment file past ``segment_bytes``; with ``auto_checkpoint``
        (the default) every roll also checkpoints, so disk use stays near one segment plus
        the unfinished transactions' records. Without it, segments pile up until
        :meth:`checkpoint`.
        """
        directory = Path(path)
        if segment_bytes < MIN_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be at least {MIN_SEGMENT_BYTES}")
        if not directory.is_dir() and not create:
            raise LogMissing(directory)
        lock = _create_locked(directory)
        if lock is None:
            lock = _lock_existing(directory)
        try:
            scan = _scan_existing(directory, create=create)
            writer = SegmentWriter(directory, scan, segment_bytes, auto_checkpoint=auto_checkpoint)
            return cls(directory, lock, scan, writer)
        except BaseException:
            lock.release()
            raise

    @property
    def path(self) -> Path:
        """The log directory."""
        return self._directory

    @property
    def torn_tail_cut(self) -> bool:
        """Whether :meth:`open` found a torn tail and cut it (also logged at INFO)."""
        return self._torn_tail_cut

    def append(self, record: Record, *, force: bool) -> Record:
        """Stamp ``record`` with the current time and append it; thread-safe.

        With ``force``, return only once the record is on stable storage (concurrent forced
        appends share one fdatasync). Unforced records are buffered and become durable with
        the next forced append, checkpoint or close. Returns the stamped record.
        """
        stamped = record.stamped(time.time())
        frame = encode_record(stamped)
        try:
            self._commit.append(PendingRecord(stamped, frame), len(frame), force=force)
        except OSError as err:
            raise LogError(f"appending to {self._directory} failed: {err}") from err
        return stamped

    def sync(self) -> None:
        """Make every record appended so far durable (one fdatasync, shared as usual)."""
        self._sync_then(_nothing)

    def stats(self) -> LogStats:
        """Records written and syncs done since open (a snapshot; appends may be running)."""
        return LogStats(self._writer.records_written, self._writer.syncs)

    def unfinished(self) -> dict[str, list[Record]]:
        """txid -> its records, for every txid appended without a final record yet."""
        with self._view_lock:
            return self._view.unfinished()

    def checkpoint(self) -> None:
        """Sync, record what is unfinished, and delete the segments nothing needs any more.

        Also happens automatically whenever the log rolls to a new segment.
        """
        self._sync_then(self._writer.checkpoint)

    def close(self) -> None:
        """Sync anything buffered and release the lock; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sync_then(self._writer.close, close=True)
        finally:
            self._writer.close()  # no-op unless the sync failed before closing
            self._lock.release()

    def destroy(self, *, durable: bool = True) -> None:
        """Close and delete the whole log directory; :class:`LogError` (and nothing
        deleted) if any txid is unfinished.

        Durable (the default): what was appended is synced first, then the removal is made
        durable (a crash before that brings the log back as it ended). With ``durable``
        false neither is done: a caller removing many logs of one parent, whose own records
        are durable already, makes every removal durable with one
        :func:`twopc.txlog.files.fsync_directory` of it.
        """
        if self._closed:
            raise LogError(f"log {self._directory} is closed")
        remaining = self.unfinished()
        if remaining:
            raise LogError(
                f"refusing to destroy {self._directory}: {len(remaining)} unfinished "
                f"transaction(s), e.g. {next(iter(remaining))}"
            )
        self._closed = True
        try:
            remove = functools.partial(self._writer.remove_all, durable=durable)
            self._sync_then(remove, close=True, sync=durable)
        finally:
            self._writer.close()
            self._lock.release()

    def __enter__(self) -> TransactionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _enqueued(self, pending: PendingRecord) -> None:
        with self._view_lock:
            self._view.apply(pending.record)

    def _sync_then(
        self, action: Callable[[], None], *, close: bool = False, sync: bool = True
    ) -> None:
        try:
            self._commit.barrier(action, close=close, sync=sync)
        except OSError as err:
            raise LogError(f"syncing {self._directory} failed: {err}") from err


def _nothing() -> None:
    pass


#: A log being created is built under a name starting so (see :func:`_create_locked`).
NEW_LOG_PREFIX = "_new-"


def _create_locked(directory: Path) -> WriterLock | None:
    """Create the log directory already locked, or None if it exists.

    It is built under a temporary name (``_new-…``: no owner's, so never listed) and renamed
    into place holding its lock: a directory made first and locked after would, for a moment,
    be a log with no live writer, which a recovery may take over or remove as a dead one's.
    """
    if directory.is_dir():
        return None
    make_directories(directory.parent)
    temporary = Path(tempfile.mkdtemp(prefix=NEW_LOG_PREFIX, dir=directory.parent))
    lock = WriterLock(temporary)
    try:
        os.rename(temporary, directory)
    except BaseException as err:
        lock.release()
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return None  # created meanwhile by another writer
        raise
    lock.moved_to(directory)
    fsync_directory(directory.parent)
    return lock


def _lock_existing(directory: Path) -> WriterLock:
    make_directories(directory)  # makes an older version's open directory private
    return WriterLock(directory)


def _scan_existing(directory: Path, *, create: bool) -> LogScan | None:
    try:
        return scan_log(directory)
    except LogMissing:
        if create:
            return None
        raise
