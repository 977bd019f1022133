"""A home of logs: one directory per owner, each log locked by its writer while it lives.

Coordinators keep theirs under ``<home>/txlog/<coordinator-id>/`` and saga orchestrators
under ``<home>/sagas/<orchestrator-id>/``; recovery, listings and the CLI find, probe, read
and take them over through the same :class:`LogHome`. "Is its owner alive?" is a lock probe
(:func:`is_locked`): a writer holds the lock until it closes or dies, and the kernel drops it
when the process dies, however it dies.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from twopc.txlog.files import LOCK_NAME
from twopc.txlog.locking import is_locked
from twopc.txlog.log import NEW_LOG_PREFIX, TransactionLog
from twopc.txlog.replay import LogContents, read_log

#: Seconds after which a log left half-created (its creator died between making its directory
#: and renaming it into place) is removed: creating one takes microseconds.
LEFTOVER_AGE = 60.0

#: An owner id names a directory: 1-40 letters, digits, _ or -, starting with a letter or
#: digit (names beginning with "_" are left for logs that are no owner's).
OWNER_ID = r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}"
_OWNER_ID = re.compile(OWNER_ID)


def is_owner_id(name: str) -> bool:
    """Whether ``name`` can be an owner's id (see :data:`OWNER_ID`)."""
    return _OWNER_ID.fullmatch(name) is not None


@dataclass(frozen=True)
class LogHome:
    """The logs under ``root``, one per owner id (``check_id`` validates one and returns it,
    or raises). ``reserved`` names logs kept beside the owners' that are no owner's (the
    operator's log of manual resolutions): their paths are given, never listed as owners."""

    root: Path
    check_id: Callable[[str], str]
    reserved: frozenset[str] = field(default_factory=frozenset)

    def path(self, owner: str) -> Path:
        """The directory of ``owner``'s log (the id is validated first)."""
        return self.root / (owner if owner in self.reserved else self.check_id(owner))

    def owners(self) -> list[str]:
        """Every owner with a log directory here, sorted; names no owner could have (and the
        reserved ones) are not logs and are left out."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self._valid(p.name))

    def exists(self, owner: str) -> bool:
        return self.path(owner).is_dir()

    def alive(self, owner: str) -> bool:
        """True while a writer holds ``owner``'s log open (its owner runs)."""
        return is_locked(self.path(owner))

    def open(self, owner: str, *, create: bool = True) -> TransactionLog:
        """Open ``owner``'s log as its writer (taking its lock; :class:`LogLocked` if a live
        owner holds it, :class:`LogMissing` if ``create`` is false and there is none)."""
        return TransactionLog.open(self.path(owner), create=create)

    def read(self, owner: str) -> LogContents:
        """Read ``owner``'s log without its lock (:class:`LogMissing`, :class:`LogCorrupt`)."""
        return read_log(self.path(owner))

    def remove_leftovers(self, older_than: float = LEFTOVER_AGE) -> list[str]:
        """Remove the logs left half-created here (``_new-…`` directories, holding at most
        a LOCK file) that no writer holds and that are older than ``older_than`` seconds;
        returns their names. The age keeps a creator that is just starting safe."""
        if not self.root.is_dir():
            return []
        removed = []
        now = time.time()
        for path in sorted(self.root.glob(f"{NEW_LOG_PREFIX}*")):
            try:
                young = now - path.stat().st_mtime < older_than
            except FileNotFoundError:
                continue  # renamed into place, or removed, meanwhile
            if young or not _only_a_lock(path) or is_locked(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed

    def _valid(self, name: str) -> bool:
        if name in self.reserved:
            return False
        try:
            self.check_id(name)
        except ValueError:
            return False
        return True


def _only_a_lock(path: Path) -> bool:
    """Whether ``path`` is a directory holding nothing but (perhaps) its LOCK file."""
    try:
        return {entry.name for entry in path.iterdir()} <= {LOCK_NAME}
    except (NotADirectoryError, FileNotFoundError):
        return False
