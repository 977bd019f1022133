"""Named points in the protocol where a test or a demonstration can stop the coordinator.

The coordinator calls :meth:`ProtocolHooks.reached` at each point. :class:`KillAt` sends the
process SIGKILL there (no cleanup runs, exactly like ``kill -9``); :class:`PauseAt` prints the
pid and gtrid and holds, so a user can kill it from another terminal.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

MAX_PAUSE_SECONDS = 1e7  # what time.sleep can hold on every platform, with room to spare


class CrashPoint(enum.Enum):
    AFTER_FIRST_PREPARE = "after-first-prepare"
    AFTER_PREPARE = "after-prepare"
    AFTER_DECISION = "after-decision"
    AFTER_FIRST_COMMIT = "after-first-commit"
    BEFORE_END = "before-end"


CRASH_POINT_HELP = {
    CrashPoint.AFTER_FIRST_PREPARE: "one branch prepared, the other not",
    CrashPoint.AFTER_PREPARE: "all branches prepared, no decision logged",
    CrashPoint.AFTER_DECISION: "COMMIT record durable, nothing committed",
    CrashPoint.AFTER_FIRST_COMMIT: "one branch committed, the other still prepared",
    CrashPoint.BEFORE_END: "all branches committed, no END record",
}


class ProtocolHooks(Protocol):
    """Called by the coordinator when the protocol passes a :class:`CrashPoint`."""

    def armed(self, point: CrashPoint) -> bool:
        """True when :meth:`reached` does something at ``point``."""

    def reached(self, point: CrashPoint, gtrid: str) -> None: ...


class KillAt:
    """SIGKILL this process when the protocol reaches ``point``."""

    def __init__(self, point: CrashPoint) -> None:
        self.point = point

    def armed(self, point: CrashPoint) -> bool:
        return point is self.point

    def reached(self, point: CrashPoint, gtrid: str) -> None:
        if point is self.point:
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAt:
    """Print pid and gtrid, then sleep, when the protocol reaches ``point``."""

    def __init__(self, point: CrashPoint, seconds: float, out: TextIO = sys.stderr) -> None:
        if not 0 <= seconds < MAX_PAUSE_SECONDS:  # also refuses nan
            raise ValueError(f"pause seconds must be from 0 to {MAX_PAUSE_SECONDS:g}: {seconds!r}")
        self.point = point
        self.seconds = seconds
        self.out = out

    def armed(self, point: CrashPoint) -> bool:
        return point is self.point

    def reached(self, point: CrashPoint, gtrid: str) -> None:
        if point is not self.point:
            return
        print(
            f"paused at {point.value}: pid {os.getpid()} gtrid {gtrid} "
            f"(holding {self.seconds:g}s; kill -9 {os.getpid()} to crash here)",
            file=self.out,
            flush=True,
        )
        with sigint_interrupts():
            time.sleep(self.seconds)


@contextmanager
def sigint_interrupts() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` while the block runs.

    A pause is there to be interrupted, but a shell script's background job (``twopc … &``)
    starts with SIGINT ignored, and Python keeps an ignored SIGINT ignored: ``kill -INT``
    would do nothing until the pause ran out. Only the main thread may set handlers.
    """
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if not ignored or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
