"""The coordinator: the two-phase commit protocol over participants, with a durable decision log.

:class:`Coordinator` runs :class:`GlobalTransaction` objects under presumed-abort 2PC:
parallel prepare, a COMMIT record forced to its log before phase 2, phase 2 with retry and
reconnect, an END record last. Crash points (:class:`CrashPoint`) let tests and demonstrations
stop it at each step of the protocol.
"""

from twopc.coordinator.coordinator import Coordinator, CoordinatorConfig, log_directory
from twopc.coordinator.crashpoints import (
    CRASH_POINT_HELP,
    CallAt,
    CrashPoint,
    KillAt,
    PauseAt,
    ProtocolHooks,
)
from twopc.coordinator.errors import (
    CoordinatorBusy,
    CoordinatorError,
    InDoubt,
    OutcomeUnknown,
    TransactionAborted,
    TransactionStateError,
)
from twopc.coordinator.ids import (
    InvalidCoordinatorId,
    check_coordinator_id,
    coordinator_of,
    fresh_coordinator_id,
    mint_gtrid,
)
from twopc.coordinator.transaction import COMMIT, END, GlobalTransaction, Outcome, TxState
from twopc.retry import RetryPolicy

__all__ = [
    "COMMIT",
    "CRASH_POINT_HELP",
    "END",
    "CallAt",
    "Coordinator",
    "CoordinatorBusy",
    "CoordinatorConfig",
    "CoordinatorError",
    "CrashPoint",
    "GlobalTransaction",
    "InDoubt",
    "InvalidCoordinatorId",
    "KillAt",
    "Outcome",
    "OutcomeUnknown",
    "PauseAt",
    "ProtocolHooks",
    "RetryPolicy",
    "TransactionAborted",
    "TransactionStateError",
    "TxState",
    "check_coordinator_id",
    "coordinator_of",
    "fresh_coordinator_id",
    "log_directory",
    "mint_gtrid",
]
