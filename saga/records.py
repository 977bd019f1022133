"""What an orchestrator writes in its log besides a step's result: a saga's BEGIN record, a
step refused because another request holds its key, an action that gave up for now.

The BEGIN record holds what recovery needs to rebuild the saga — the definition's name, the
saga's parameters, the definition's shape (step names, the pivot) to notice a definition
changed since — and the retry policies its run began with.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twopc.retry import RetryPolicy
from twopc.saga.attempts import Exhausted
from twopc.saga.definition import Params, SagaDefinition
from twopc.saga.idempotency import REJECTED, KeyReused, StepResult
from twopc.saga.state import BLOCKED, STEP_DONE
from twopc.txlog import Record


def checked_params(definition: SagaDefinition, params: Params) -> dict[str, Any]:
    """``params`` as the log will hold them (JSON values), once ``definition`` accepts them;
    ``ValueError`` otherwise, before anything runs."""
    try:
        plain = json.loads(json.dumps(dict(params), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"saga parameters must be JSON values: {err}") from None
    if definition.check is not None:
        definition.check(plain)
    return dict(plain)


def begin_body(
    definition: SagaDefinition, params: Params, retry: RetryPolicy, compensation_retry: RetryPolicy
) -> dict[str, Any]:
    """What a saga's BEGIN record holds: enough to rebuild it (definition, parameters, the
    definition's shape) and the retry policies its run began with."""
    return {
        "definition": definition.name,
        "params": dict(params),
        "steps": list(definition.step_names),
        "pivot": definition.pivot,
        "at": time.time(),
        "retry": policy_json(retry),
        "compensation_retry": policy_json(compensation_retry),
    }


def policy_json(policy: RetryPolicy) -> dict[str, float]:
    """A retry policy as a saga's BEGIN record keeps it."""
    return {
        "initial_interval": policy.initial_interval,
        "backoff_coefficient": policy.backoff_coefficient,
        "maximum_interval": policy.maximum_interval,
        "deadline": policy.deadline,
    }


def refused_step(saga_id: str, n: int, err: KeyReused) -> Record:
    """A step whose key another request holds: refused (not stored: the key is not ours)."""
    result = StepResult(REJECTED, {"reason": str(err)})
    return Record(STEP_DONE, saga_id, {"n": n, "result": result.to_json()})


def blocked(saga_id: str, what: str, failure: Exhausted) -> Record:
    body = {"action": what, "error": failure.error, "attempts": failure.attempts}
    return Record(BLOCKED, saga_id, body)
