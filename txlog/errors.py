"""The log's error hierarchy: every failure the log reports is a :class:`LogError`."""

from __future__ import annotations

from pathlib import Path


class LogError(Exception):
    """Base class of every error raised by :mod:`txlog`."""


class LogMissing(LogError, FileNotFoundError):
    """There is no log at the given path (no segment and no checkpoint)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no log at {path}")
        self.path = path


class LogLocked(LogError):
    """Another writer (a live coordinator) holds the log's lock."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"log {path} is locked by another writer (its coordinator is alive)")
        self.path = path


class LogCorrupt(LogError):
    """The log is damaged somewhere other than a torn tail; decisions may be lost.

    ``file`` and ``offset`` locate the damage, ``problem`` says what is wrong.
    """

    def __init__(self, file: Path, offset: int, problem: str) -> None:
        super().__init__(f"{file}: offset {offset}: {problem}")
        self.file = file
        self.offset = offset
        self.problem = problem
