"""The per-directory writer lock: an ``flock`` the kernel drops when its process dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from twopc.txlog.errors import LogLocked
from twopc.txlog.files import LOCK_NAME, create_private


class WriterLock:
    """An exclusive, non-blocking ``flock`` on ``<directory>/LOCK``, held until released."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        # Private (0600): whoever can open the file can flock it, and so make a dead
        # writer look alive to is_locked.
        self._fd: int | None = create_private(self.path, os.O_RDWR)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise LogLocked(directory) from None
        except BaseException:
            self.release()
            raise

    def moved_to(self, directory: Path) -> None:
        """The locked directory was renamed to ``directory`` (the lock goes with it)."""
        self.path = directory / LOCK_NAME

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_locked(directory: Path) -> bool:
    """Whether a live writer holds the log at ``directory``; never creates anything."""
    try:
        fd = os.open(Path(directory) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _try_shared_lock(fd)
    finally:
        os.close(fd)


def _try_shared_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    return True
