"""Named points in a saga where a test or a demonstration can stop the orchestrator.

The same mechanism as the 2PC coordinator's (:mod:`coordinator.crashpoints`): the orchestrator
calls :meth:`SagaHooks.reached` at each point; :class:`KillSagaAt` sends the process SIGKILL
there (like ``kill -9``), :class:`PauseSagaAt` prints the pid and saga id and holds.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import time
from typing import Protocol, TextIO

from twopc.coordinator.crashpoints import sigint_interrupts


class SagaPoint(enum.Enum):
    """Where the orchestrator tells its hooks it is (the step number comes with it)."""

    AFTER_STEP = "after-step"  # a forward step applied and its record is logged
    AFTER_COMPENSATION = "after-compensation"
    AFTER_STEP_COMMIT = "after-step-commit"


SAGA_POINT_HELP = {
    SagaPoint.AFTER_STEP: "a step committed and logged (the step given picks which)",
    SagaPoint.AFTER_COMPENSATION: "a compensation committed and logged, no END record",
    SagaPoint.AFTER_STEP_COMMIT: (
        "a step's local transaction committed, the orchestrator has not logged it "
        "(the dual-write gap)"
    ),
}


class SagaHooks(Protocol):
    """Called by the orchestrator when a saga passes a :class:`SagaPoint` (``n``: the step)."""

    def reached(self, point: SagaPoint, saga_id: str, n: int) -> None: ...


class KillSagaAt:
    """SIGKILL this process when a saga reaches ``point`` (at step ``step``, if given)."""

    def __init__(self, point: SagaPoint, step: int | None = None) -> None:
        self.point = point
        self.step = step

    def reached(self, point: SagaPoint, saga_id: str, n: int) -> None:
        if point is self.point and self.step in (None, n):
            os.kill(os.getpid(), signal.SIGKILL)


class PauseSagaAt:
    """Print pid and saga id, then sleep, when a saga reaches ``point``. Ctrl-C (SIGINT)
    ends the pause, even in a process started with SIGINT ignored. ``name`` is what the
    line calls the point (default: its own name)."""

    def __init__(
        self,
        point: SagaPoint,
        seconds: float,
        step: int | None = None,
        out: TextIO = sys.stderr,
        name: str | None = None,
    ) -> None:
        self.point = point
        self.seconds = seconds
        self.step = step
        self.out = out
        self.name = name or point.value

    def reached(self, point: SagaPoint, saga_id: str, n: int) -> None:
        if point is not self.point or self.step not in (None, n):
            return
        print(
            f"paused at {self.name}: pid {os.getpid()} saga {saga_id} step {n} "
            f"(holding {self.seconds:g}s; kill -9 {os.getpid()} to crash here)",
            file=self.out,
            flush=True,
        )
        with sigint_interrupts():
            time.sleep(self.seconds)
