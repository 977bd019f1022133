"""The saga engine: a saga defined as data, run as a sequence of local transactions.

A :class:`SagaDefinition` names ordered :class:`Step` objects, each a local transaction on a
named participant, exactly one of them the pivot: the steps before it are compensable, the
steps after it are retried until they succeed. An :class:`Orchestrator` runs sagas of any
definition, logging every decision in its own :mod:`txlog` log so it resumes after a crash,
forward or backward. Each step and compensation runs at most once, keyed by
``<saga_id>-step-<n>`` / ``<saga_id>-comp-<n>`` in the participant's own ``saga_steps``
table, in the same local transaction as its change. A compensation that keeps failing is
dead-lettered for an operator; :func:`recover_sagas` resumes dead orchestrators' sagas (their
definitions come from a :class:`SagaRegistry`), :func:`retry_saga` one saga by hand, and
:func:`prune` drops idempotency records past their retention window. The engine knows no
business domain: the demo bank's transfer is one definition on top of it.
"""

from twopc.saga.attempts import retry_policy
from twopc.saga.crashpoints import SAGA_POINT_HELP, KillAt, PauseAt, SagaHooks, SagaPoint
from twopc.saga.definition import (
    InvalidSagaDefinition,
    Params,
    SagaDefinition,
    SagaRun,
    Step,
    StepFunction,
)
from twopc.saga.errors import CompensationFailed, SagaBusy, SagaError, SagaIdReused, SagaNotFound
from twopc.saga.idempotency import (
    APPLIED,
    CANCELLED,
    REJECTED,
    Keyed,
    KeyReused,
    StepResult,
    lookup,
    run_once,
)
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
from twopc.saga.registry import SagaRegistry
from twopc.saga.report import DEAD_LETTERED, UNFINISHED, StepReport, outcome_of, step_reports
from twopc.saga.retention import DEFAULT_RETENTION, parse_duration, prune
from twopc.saga.state import ABORTED, COMPENSATED, COMPLETED, REFUSED, SagaState
from twopc.saga.tables import (
    SAGA_TABLES,
    ensure_saga_tables,
    ensure_tables,
    saga_ddl,
    saga_drop_ddl,
)
from twopc.saga.timeouts import StepTimedOut

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
    "CompensationFailed",
    "InvalidSagaDefinition",
    "InvalidSagaId",
    "KeyReused",
    "Keyed",
    "KillAt",
    "Orchestrator",
    "OrchestratorLog",
    "Params",
    "PauseAt",
    "SagaBusy",
    "SagaConfig",
    "SagaDefinition",
    "SagaError",
    "SagaHooks",
    "SagaIdReused",
    "SagaNotFound",
    "SagaOutcome",
    "SagaPoint",
    "SagaRecoveryReport",
    "SagaRegistry",
    "SagaResolution",
    "SagaRun",
    "SagaState",
    "Step",
    "StepFunction",
    "StepReport",
    "StepResult",
    "StepTimedOut",
    "all_orchestrators",
    "check_orchestrator_id",
    "check_saga_id",
    "compensation_key",
    "ensure_saga_tables",
    "ensure_tables",
    "fresh_saga_id",
    "lookup",
    "outcome_of",
    "parse_duration",
    "prune",
    "recover_sagas",
    "release_key",
    "retry_policy",
    "retry_saga",
    "run_once",
    "saga_ddl",
    "saga_drop_ddl",
    "saga_root",
    "step_key",
    "step_reports",
]
