"""File-system primitives of the log: names, durable directory changes, atomic rewrites.

Everything the log creates is private to its owner, whatever the umask: directories
0700, files 0600. The log holds commit decisions, and anyone able to open a directory's
LOCK file could flock it and make a dead writer look alive.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

SEGMENT_PATTERN = re.compile(r"^segment-(\d{20})\.log$")
CHECKPOINT_NAME = "checkpoint"
CHECKPOINT_TEMP_NAME = "checkpoint.tmp"
LOCK_NAME = "LOCK"
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


def segment_path(directory: Path, number: int) -> Path:
    """Path of segment ``number`` (zero-padded so names sort numerically)."""
    return directory / f"segment-{number:020d}.log"


def list_segments(directory: Path) -> list[int]:
    """Numbers of the segment files in ``directory``, ascending."""
    names = (SEGMENT_PATTERN.match(name) for name in os.listdir(directory))
    return sorted(int(match.group(1)) for match in names if match)


def fsync_directory(directory: Path) -> None:
    """Make creations, renames and removals of entries in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(directory: Path) -> None:
    """``mkdir -p`` that fsyncs each parent whose entries it changed; every directory it
    creates, and ``directory`` itself even if it existed, is private (0700)."""
    missing: list[Path] = []
    walk = directory
    while not walk.exists():
        missing.append(walk)
        walk = walk.parent
    for path in reversed(missing):
        path.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
        _chmod_private(path, DIRECTORY_MODE)  # mkdir's mode passes through the umask
        fsync_directory(path.parent)
    if not missing and directory.stat().st_mode & 0o077:
        _chmod_private(directory, DIRECTORY_MODE)  # left open to others by an older version


def create_private(path: Path, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)``, the file 0600 whatever the umask (an existing
    file is made 0600 too); returns the descriptor."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    _chmod_private(fd, FILE_MODE)
    return fd


def _chmod_private(target: Path | int, mode: int) -> None:
    # Something another user owns is left as it is: not ours to change, and a home
    # shared between users is unsupported (see the README).
    with contextlib.suppress(PermissionError):
        os.chmod(target, mode)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until every byte is written (short writes happen near a full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path: Path, temp: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: temp file, fsync, ``os.replace``, fsync of the folder."""
    fd = create_private(temp, os.O_WRONLY | os.O_TRUNC)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_directory(path.parent)


def create_file(path: Path, header: bytes) -> int:
    """Create ``path`` (it must not exist) holding ``header``, durably; return an append fd."""
    fd = create_private(path, os.O_WRONLY | os.O_EXCL | os.O_APPEND)
    try:
        write_all(fd, header)
        os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        raise
    fsync_directory(path.parent)
    return fd


def remove_files(paths: list[Path]) -> None:
    """Remove ``paths`` (missing ones are fine) and make the removal durable."""
    for path in paths:
        path.unlink(missing_ok=True)
    if paths:
        fsync_directory(paths[0].parent)


def disk_usage(directory: Path) -> int:
    """Bytes used by the regular files directly in ``directory``."""
    return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())
