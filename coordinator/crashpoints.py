"""Named points in the protocol where a test or a demonstration can stop the coordinator.

The coordinator calls :meth:`~twopc.hooks.Hooks.reached` at each :class:`CrashPoint` with the
transaction's gtrid; the hooks themselves (:class:`~twopc.hooks.KillAt`,
:class:`~twopc.hooks.PauseAt`, :class:`~twopc.hooks.CallAt`) are the saga orchestrator's too.
"""

from __future__ import annotations

import enum

from twopc.hooks import MAX_PAUSE_SECONDS, CallAt, Hooks, KillAt, PauseAt, sigint_interrupts

__all__ = [
    "CRASH_POINT_HELP",
    "MAX_PAUSE_SECONDS",
    "CallAt",
    "CrashPoint",
    "KillAt",
    "PauseAt",
    "ProtocolHooks",
    "sigint_interrupts",
]

ProtocolHooks = Hooks  # what the coordinator calls at its crash points


class CrashPoint(enum.Enum):
    AFTER_FIRST_PREPARE = "after-first-prepare"
    AFTER_PREPARE = "after-prepare"
    AFTER_DECISION = "after-decision"
    AFTER_FIRST_COMMIT = "after-first-commit"
    BEFORE_END = "before-end"

    @property
    def subject(self) -> str:
        return "gtrid"


CRASH_POINT_HELP = {
    CrashPoint.AFTER_FIRST_PREPARE: "one branch prepared, the other not",
    CrashPoint.AFTER_PREPARE: "all branches prepared, no decision logged",
    CrashPoint.AFTER_DECISION: "COMMIT record durable, nothing committed",
    CrashPoint.AFTER_FIRST_COMMIT: "one branch committed, the other still prepared",
    CrashPoint.BEFORE_END: "all branches committed, no END record",
}
