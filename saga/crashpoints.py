"""Named points in a saga where a test or a demonstration can stop the orchestrator.

The orchestrator calls :meth:`~twopc.hooks.Hooks.reached` at each :class:`SagaPoint` with the
saga id and the step's number; the hooks (:class:`~twopc.hooks.KillAt`,
:class:`~twopc.hooks.PauseAt`, :class:`~twopc.hooks.CallAt`, each optionally at one step) are
the 2PC coordinator's too.
"""

from __future__ import annotations

import enum

from twopc.hooks import CallAt, Hooks, KillAt, PauseAt

__all__ = ["SAGA_POINT_HELP", "CallAt", "KillAt", "PauseAt", "SagaHooks", "SagaPoint"]

SagaHooks = Hooks  # what the orchestrator calls at its points


class SagaPoint(enum.Enum):
    """Where the orchestrator tells its hooks it is (the step number comes with it)."""

    AFTER_STEP = "after-step"  # a forward step applied and its record is logged
    AFTER_COMPENSATION = "after-compensation"
    AFTER_STEP_COMMIT = "after-step-commit"

    @property
    def subject(self) -> str:
        return "saga"


SAGA_POINT_HELP = {
    SagaPoint.AFTER_STEP: "a step committed and logged (the step given picks which)",
    SagaPoint.AFTER_COMPENSATION: "a compensation committed and logged, no END record",
    SagaPoint.AFTER_STEP_COMMIT: (
        "a step's local transaction committed, the orchestrator has not logged it "
        "(the dual-write gap)"
    ),
}
