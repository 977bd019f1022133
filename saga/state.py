"""A saga's state, rebuilt from its log records by applying them one at a time.

:func:`apply` never raises: a record it cannot use (unknown kind, malformed body, a record
after END) is kept as a ``problem`` in the state, and a saga with problems is left alone for
an operator instead of guessed at. Each record kind has its own ``_apply_<kind>`` handler.
:func:`next_action` reads the state and the saga's definition and says what the
orchestrator must do next.

Direction: a saga goes **forward** while every step it ran up to the pivot applied; it goes
**backward** (compensations in reverse order) once such a step was refused, cancelled, or
failed past the retry policy. A step that failed with an unknown outcome is fenced first —
its key is claimed as CANCELLED, or found applied — before anything is compensated. Once the
pivot has applied, the locks of the steps before it are released and the steps after it run,
each retried until it succeeds.

Logs written before sagas were definitions hold one layout, the transfer's: a BEGIN naming
no definition (its source, destination and amount are its parameters), the pivot at step 2,
a RELEASED record naming no step (step 1's), and NOTIFIED for step 3's result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from twopc.retry import RetryPolicy
from twopc.saga.definition import Params, SagaDefinition
from twopc.saga.idempotency import APPLIED, StepResult
from twopc.txlog import Record

BEGIN = "SAGA_BEGIN"
STEP_DONE = "STEP_DONE"  # a forward step's result: applied, rejected or cancelled
STEP_FAILED = "STEP_FAILED"  # a step up to the pivot failed past the retry policy
COMP_DONE = "COMP_DONE"
DEAD_LETTER = "DEAD_LETTER"  # a compensation failed past the retry policy: parked
RETRY = "RETRY"  # an operator asked to retry a dead-lettered compensation
BLOCKED = "BLOCKED"  # a forward-only action gave up for now; the saga stays unfinished
RELEASED = "RELEASED"  # a step's semantic lock was released (the pivot had applied)
END = "END"
NOTIFIED = "NOTIFIED"  # only in logs from before definitions: step 3's result

COMPLETED = "completed"
COMPENSATED = "compensated"
ABORTED = "aborted"  # nothing was applied, so there was nothing to compensate
REFUSED = "refused"  # another orchestrator owns this saga id; this one did nothing

APPLIED_NO = "no"
APPLIED_UNKNOWN = "unknown"

_LEGACY_PIVOT, _LEGACY_HOLDING, _LEGACY_LAST = 2, 1, 3  # the one layout of older logs
_LEGACY_PARAMS = ("source", "destination", "amount")


@dataclass(frozen=True)
class Failure:
    """A step or compensation that failed past the retry policy."""

    error: str
    applied: str = APPLIED_NO  # for forward steps: "no", or "unknown" (fence it first)


@dataclass(frozen=True)
class SagaState:
    """Everything the log says about one saga.

    ``definition`` is None for a log from before definitions (or one without BEGIN);
    ``steps`` and ``pivot`` are the definition's shape when the saga began, so a definition
    changed since is noticed instead of trusted.
    """

    saga_id: str
    began: bool = False
    definition: str | None = None
    params: Params = field(default_factory=dict)
    steps: tuple[str, ...] = ()
    pivot: int = 0
    results: Mapping[int, StepResult] = field(default_factory=dict)
    failures: Mapping[int, Failure] = field(default_factory=dict)
    compensations: Mapping[int, StepResult] = field(default_factory=dict)
    dead_letters: Mapping[int, Failure] = field(default_factory=dict)
    releases: Mapping[int, StepResult] = field(default_factory=dict)
    outcome: str | None = None
    last_error: str | None = None
    problems: tuple[str, ...] = ()
    began_at: float = 0.0
    updated_at: float = 0.0
    #: The retry policies its run began with (None in logs from before they were recorded).
    retry: RetryPolicy | None = None
    compensation_retry: RetryPolicy | None = None

    @property
    def backward(self) -> bool:
        """Whether the saga is compensating (or has nothing applied left to undo)."""
        refused = any(r.status != APPLIED for n, r in self.results.items() if n <= self.pivot)
        return refused or bool(self.failures) or bool(self.compensations)

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def dead_lettered(self) -> bool:
        return bool(self.dead_letters) and not self.finished

    @property
    def replayed(self) -> bool:
        """Whether a result up to the pivot, or a compensation, came back already stored
        (the saga id ran before)."""
        done = [r for n, r in self.results.items() if n <= self.pivot]
        return any(r.replayed for r in [*done, *self.compensations.values()])

    def applied(self, n: int) -> bool:
        result = self.results.get(n)
        return result is not None and result.status == APPLIED

    def holding(self, n: int) -> bool:
        """Whether step ``n`` applied and its lock is neither released nor compensated."""
        return self.applied(n) and n not in self.releases and n not in self.compensations


# -- applying records -------------------------------------------------------------------------


def replay_records(saga_id: str, records: Iterable[Record]) -> SagaState:
    """The state of ``saga_id`` after its ``records``, in order."""
    state = SagaState(saga_id)
    for record in records:
        state = apply(state, record)
    return state


def apply(state: SagaState, record: Record) -> SagaState:
    """``state`` advanced by ``record``; never raises (see the module docstring)."""
    if record.txid != state.saga_id:
        return with_problem(state, f"{record.kind} record belongs to saga {record.txid}")
    if state.finished:
        return with_problem(state, f"{record.kind} record comes after END")
    handler = _HANDLERS.get(record.kind)
    if handler is None:
        return with_problem(state, f"{record.kind} record is of an unknown kind")
    try:
        advanced = handler(state, record.body)
    except (KeyError, TypeError, ValueError) as err:
        return with_problem(state, f"{record.kind} record is malformed ({err})")
    return replace(advanced, updated_at=record.time or advanced.updated_at)


def with_problem(state: SagaState, problem: str) -> SagaState:
    """``state`` with ``problem`` noted: the saga is left for an operator."""
    return replace(state, problems=(*state.problems, problem))


def _apply_begin(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    if state.began:
        raise ValueError("a second SAGA_BEGIN")
    shape = _legacy_shape(body) if "definition" not in body else _shape(body)
    return replace(
        state,
        **shape,
        began=True,
        began_at=float(body.get("at", 0.0)),
        retry=_policy(body.get("retry")),
        compensation_retry=_policy(body.get("compensation_retry")),
    )


def _shape(body: Mapping[str, Any]) -> dict[str, Any]:
    name, params, steps, pivot = (body[k] for k in ("definition", "params", "steps", "pivot"))
    if not isinstance(name, str) or not isinstance(params, dict):
        raise ValueError("definition must be a name and params an object")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"steps must be a list of names: {steps!r}")
    if not isinstance(pivot, int) or isinstance(pivot, bool) or not 1 <= pivot <= len(steps):
        raise ValueError(f"bad pivot {pivot!r}")
    return {"definition": name, "params": params, "steps": tuple(steps), "pivot": pivot}


def _legacy_shape(body: Mapping[str, Any]) -> dict[str, Any]:
    params = {key: body[key] for key in _LEGACY_PARAMS}
    if not all(isinstance(value, str) for value in params.values()):
        raise ValueError(f"transfer fields must be strings: {params!r}")
    return {"definition": None, "params": params, "pivot": _LEGACY_PIVOT}


def _policy(document: Any) -> RetryPolicy | None:
    """A retry policy recorded in a BEGIN body; ValueError (a problem) when malformed."""
    if document is None:
        return None
    if not isinstance(document, dict):
        raise ValueError(f"retry policy is not an object: {document!r}")
    fields = ("initial_interval", "backoff_coefficient", "maximum_interval", "deadline")
    values = {name: float(document[name]) for name in fields}
    if not all(math.isfinite(v) for v in values.values()):
        raise ValueError(f"retry policy is not finite: {document!r}")
    return RetryPolicy(**values)


def _apply_step_done(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    return _step_result(state, _step(body), StepResult.from_json(body["result"]))


def _step_result(state: SagaState, n: int, result: StepResult) -> SagaState:
    failures = {k: v for k, v in state.failures.items() if k != n}
    error = result.reason or state.last_error if result.status != APPLIED else state.last_error
    return replace(state, results={**state.results, n: result}, failures=failures, last_error=error)


def _apply_step_failed(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    failure = Failure(str(body["error"]), str(body.get("applied", APPLIED_NO)))
    failures = {**state.failures, _step(body): failure}
    return replace(state, failures=failures, last_error=failure.error)


def _apply_comp_done(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    n, result = _step(body), StepResult.from_json(body["result"])
    if result.status != APPLIED:  # a compensation cannot be refused: it needs an operator
        failure = Failure(f"compensation {result.status}: {result.reason or 'no reason given'}")
        dead = {**state.dead_letters, n: failure}
        return replace(state, dead_letters=dead, last_error=failure.error)
    dead = {k: v for k, v in state.dead_letters.items() if k != n}
    error = str(body.get("reason", "")) or state.last_error
    compensations = {**state.compensations, n: result}
    return replace(state, compensations=compensations, dead_letters=dead, last_error=error)


def _apply_dead_letter(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    failure = Failure(str(body["error"]))
    dead = {**state.dead_letters, _step(body): failure}
    return replace(state, dead_letters=dead, last_error=failure.error)


def _apply_retry(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    return replace(state, dead_letters={})


def _apply_blocked(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    return replace(state, last_error=f"{body['action']}: {body['error']}")


def _apply_released(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    n = _step(body) if "n" in body else _LEGACY_HOLDING
    released = {**state.releases, n: StepResult.from_json(body["result"])}
    return replace(state, releases=released)


def _apply_notified(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    return _step_result(state, _LEGACY_LAST, StepResult.from_json(body["result"]))


def _apply_end(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    return replace(state, outcome=str(body["outcome"]))


def _step(body: Mapping[str, Any]) -> int:
    n = body["n"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"bad step number {n!r}")
    return n


_HANDLERS: dict[str, Callable[[SagaState, Mapping[str, Any]], SagaState]] = {
    BEGIN: _apply_begin,
    STEP_DONE: _apply_step_done,
    STEP_FAILED: _apply_step_failed,
    COMP_DONE: _apply_comp_done,
    DEAD_LETTER: _apply_dead_letter,
    RETRY: _apply_retry,
    BLOCKED: _apply_blocked,
    RELEASED: _apply_released,
    NOTIFIED: _apply_notified,
    END: _apply_end,
}


# -- what to do next --------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """The orchestrator's next move: ``kind`` is one of the constants below."""

    kind: str
    n: int = 0
    outcome: str = ""


RUN = "run"  # a step up to the pivot: a refusal or a failure sends the saga backward
FENCE = "fence"  # claim the key of a step whose outcome is unknown, or find it applied
COMPENSATE = "compensate"
RELEASE = "release"  # drop a step's semantic lock: the pivot has applied
RUN_RETRIABLE = "run-retriable"  # a step after the pivot: retried until it succeeds
FINISH = "finish"
PARKED = "parked"  # a dead-lettered compensation waits for an operator
STUCK = "stuck"  # the log cannot be interpreted, or its definition is unknown here
DONE = "done"


def next_action(state: SagaState, definition: SagaDefinition | None) -> Action:
    """What the orchestrator does next for ``state`` of ``definition`` (DONE once it has
    ended; STUCK when the log has problems, or no definition to follow)."""
    if state.finished:
        return Action(DONE)
    if state.problems or not state.began or definition is None:
        return Action(STUCK)
    if shape_problem(state, definition):
        return Action(STUCK)
    return _backward(state, definition) if state.backward else _forward(state, definition)


def shape_problem(state: SagaState, definition: SagaDefinition) -> str | None:
    """Why ``definition`` is not the one the saga began with (None when it is)."""
    names, pivot = definition.step_names, definition.pivot
    recorded = state.steps or names  # logs from before definitions did not record them
    if recorded == names and state.pivot == pivot:
        return None
    return (
        f"saga definition {definition.name!r} changed since saga {state.saga_id} began "
        f"(steps {list(recorded)}, pivot {state.pivot}; now {list(names)}, pivot {pivot})"
    )


def _forward(state: SagaState, definition: SagaDefinition) -> Action:
    for n in range(1, definition.pivot + 1):
        if n not in state.results:
            return Action(RUN, n)
    for n in definition.releasing():
        if n not in state.releases:
            return Action(RELEASE, n)
    for n in definition.after_pivot():
        if n not in state.results:
            return Action(RUN_RETRIABLE, n)
    return Action(FINISH, outcome=COMPLETED)


def _backward(state: SagaState, definition: SagaDefinition) -> Action:
    for n, failure in sorted(state.failures.items()):
        if failure.applied == APPLIED_UNKNOWN:
            return Action(FENCE, n)
    for n in reversed(definition.compensable()):
        if state.applied(n) and n not in state.compensations:
            return Action(PARKED if n in state.dead_letters else COMPENSATE, n)
    undone = any(r.status == APPLIED for r in state.compensations.values())
    return Action(FINISH, outcome=COMPENSATED if undone else ABORTED)
