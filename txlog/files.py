"""File-system primitives of the log: names, durable directory changes, atomic rewrites."""

from __future__ import annotations

import os
import re
from pathlib import Path

SEGMENT_PATTERN = re.compile(r"^segment-(\d{20})\.log$")
CHECKPOINT_NAME = "checkpoint"
CHECKPOINT_TEMP_NAME = "checkpoint.tmp"
LOCK_NAME = "LOCK"


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
    """``mkdir -p`` that fsyncs each parent whose entries it changed."""
    missing: list[Path] = []
    walk = directory
    while not walk.exists():
        missing.append(walk)
        walk = walk.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        fsync_directory(path.parent)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until every byte is written (short writes happen near a full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path: Path, temp: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: temp file, fsync, ``os.replace``, fsync of the folder."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_directory(path.parent)


def create_file(path: Path, header: bytes) -> int:
    """Create ``path`` (it must not exist) holding ``header``, durably; return an append fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
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
