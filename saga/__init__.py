"""The saga path: the same transfer as a sequence of local transactions, for comparison.

An :class:`Orchestrator` runs a transfer saga — debit (compensable, holding the funds as
pending), credit (the pivot), release of the hold, and an irreversible notification last —
logging every decision in its own :mod:`txlog` log so it resumes after a crash, forward or
backward. Each step and compensation runs at most once, keyed by ``<saga_id>-step-<n>`` /
``<saga_id>-comp-<n>`` in the participant's own ``saga_steps`` table, in the same local
transaction as the business change. A compensation that keeps failing is dead-lettered for
an operator; :func:`recover_sagas` resumes dead orchestrators' sagas, :func:`retry_saga` one
saga by hand, and :func:`prune` drops idempotency records past their retention window.
"""

from twopc.saga.crashpoints import SAGA_POINT_HELP, KillSagaAt, PauseSagaAt, SagaHooks, SagaPoint
from twopc.saga.errors import SagaBusy, SagaError, SagaNotFound
from twopc.saga.idempotency import APPLIED, CANCELLED, REJECTED, StepResult, lookup, run_once
from twopc.saga.ids import (
    InvalidSagaId,
    check_orchestrator_id,
    check_saga_id,
    compensation_key,
    fresh_saga_id,
    release_key,
    step_key,
)
from twopc.saga.logs import OrchestratorLog, all_orchestrators, saga_root
from twopc.saga.orchestrator import Orchestrator, SagaConfig, SagaOutcome
from twopc.saga.recovery import SagaRecoveryReport, SagaResolution, recover_sagas, retry_saga
from twopc.saga.report import DEAD_LETTERED, UNFINISHED, StepReport, outcome_of, step_reports
from twopc.saga.retention import DEFAULT_RETENTION, parse_duration, prune
from twopc.saga.state import ABORTED, COMPENSATED, COMPLETED, REFUSED, SagaState, amount_held
from twopc.saga.tables import SAGA_TABLES, ensure_saga_tables, saga_ddl, saga_drop_ddl

__all__ = [
    "ABORTED",
    "APPLIED",
    "CANCELLED",
    "COMPENSATED",
    "COMPLETED",
    "DEAD_LETTERED",
    "DEFAULT_RETENTION",
    "REFUSED",
    "REJECTED",
    "SAGA_POINT_HELP",
    "SAGA_TABLES",
    "UNFINISHED",
    "InvalidSagaId",
    "KillSagaAt",
    "Orchestrator",
    "OrchestratorLog",
    "PauseSagaAt",
    "SagaBusy",
    "SagaConfig",
    "SagaError",
    "SagaHooks",
    "SagaNotFound",
    "SagaOutcome",
    "SagaPoint",
    "SagaRecoveryReport",
    "SagaResolution",
    "SagaState",
    "StepReport",
    "StepResult",
    "all_orchestrators",
    "amount_held",
    "check_orchestrator_id",
    "check_saga_id",
    "compensation_key",
    "ensure_saga_tables",
    "fresh_saga_id",
    "lookup",
    "outcome_of",
    "parse_duration",
    "prune",
    "recover_sagas",
    "release_key",
    "retry_saga",
    "run_once",
    "saga_ddl",
    "saga_drop_ddl",
    "saga_root",
    "step_key",
    "step_reports",
]
