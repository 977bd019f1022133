"""Named points where a test or a demonstration can stop an engine: one mechanism for both.

The 2PC coordinator (:class:`twopc.coordinator.CrashPoint`) and the saga orchestrator
(:class:`twopc.saga.SagaPoint`) call :meth:`Hooks.reached` with the point they passed, what
it concerns (a gtrid, a saga id) and, for a saga, the step. :class:`KillAt` sends the process
SIGKILL there (no cleanup runs, exactly like ``kill -9``); :class:`PauseAt` prints the pid and
what it concerns, then holds, so a user can kill it from another terminal; :class:`CallAt`
calls a function (a demonstration that drives the library tells another process it is there).
A point is any enum member; its ``subject`` property, if it has one, names what the second
argument is ("gtrid", "saga") in what :class:`PauseAt` prints.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

MAX_PAUSE_SECONDS = 1e7  # what time.sleep can hold on every platform, with room to spare


class Hooks(Protocol):
    """Called by an engine when it passes one of its points."""

    def armed(self, point: enum.Enum) -> bool:
        """True when :meth:`reached` may do something at ``point`` (an engine may skip work
        it only does to make the point observable)."""

    def reached(self, point: enum.Enum, subject: str, step: int | None = None) -> None: ...


class _At:
    """Acts at ``point`` (and, when ``step`` is given, only at that step)."""

    def __init__(self, point: enum.Enum, step: int | None = None) -> None:
        self.point = point
        self.step = step

    def armed(self, point: enum.Enum) -> bool:
        return point is self.point

    def _here(self, point: enum.Enum, step: int | None) -> bool:
        return point is self.point and self.step in (None, step)


class KillAt(_At):
    """SIGKILL this process when the engine reaches ``point``."""

    def reached(self, point: enum.Enum, subject: str, step: int | None = None) -> None:
        if self._here(point, step):
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAt(_At):
    """Print pid and subject, then sleep ``seconds``, when the engine reaches ``point``.
    Ctrl-C (SIGINT) ends the pause, even in a process started with SIGINT ignored. ``name``
    is what the line calls the point (default: its value)."""

    def __init__(
        self,
        point: enum.Enum,
        seconds: float,
        step: int | None = None,
        out: TextIO = sys.stderr,
        name: str | None = None,
    ) -> None:
        if not 0 <= seconds < MAX_PAUSE_SECONDS:  # also refuses nan
            raise ValueError(f"pause seconds must be from 0 to {MAX_PAUSE_SECONDS:g}: {seconds!r}")
        super().__init__(point, step)
        self.seconds = seconds
        self.out = out
        self.name = name or str(point.value)

    def reached(self, point: enum.Enum, subject: str, step: int | None = None) -> None:
        if not self._here(point, step):
            return
        label = getattr(point, "subject", "id")
        at_step = "" if step is None else f" step {step}"
        # Interruptible before it says so: whoever reads the line may signal at once.
        with sigint_interrupts():
            print(
                f"paused at {self.name}: pid {os.getpid()} {label} {subject}{at_step} "
                f"(holding {self.seconds:g}s; kill -9 {os.getpid()} to crash here)",
                file=self.out,
                flush=True,
            )
            time.sleep(self.seconds)


class CallAt(_At):
    """Call ``function(subject)`` when the engine reaches ``point`` (on the engine's thread:
    the engine goes on when it returns)."""

    def __init__(
        self, point: enum.Enum, function: Callable[[str], object], step: int | None = None
    ) -> None:
        super().__init__(point, step)
        self.function = function

    def reached(self, point: enum.Enum, subject: str, step: int | None = None) -> None:
        if self._here(point, step):
            self.function(subject)


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
