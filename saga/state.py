"""A saga's state, rebuilt from its log records by applying them one at a time.

:func:`apply` never raises: a record it cannot use (unknown kind, malformed body, a record
after END) is kept as a ``problem`` in the state, and a saga with problems is left alone for
an operator instead of guessed at. Each record kind has its own ``_apply_<kind>`` handler.
:func:`next_action` reads the state and says what the orchestrator must do next.

Direction: a saga goes **forward** while every step it ran applied; it goes **backward**
(compensations in reverse order) once a step was refused, cancelled, or failed past the
retry policy. A step that failed with an unknown outcome is fenced first — its key is
claimed as CANCELLED, or found applied — before anything is compensated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from twopc.bank import AccountRef, InvalidInput, Transfer, parse_amount
from twopc.coordinator import RetryPolicy
from twopc.saga.idempotency import APPLIED, StepResult
from twopc.saga.steps import COMPENSABLE, FORWARD_STEPS
from twopc.txlog import Record

BEGIN = "SAGA_BEGIN"
STEP_DONE = "STEP_DONE"  # a forward step's result: applied, rejected or cancelled
STEP_FAILED = "STEP_FAILED"  # a forward step failed past the retry policy
COMP_DONE = "COMP_DONE"
DEAD_LETTER = "DEAD_LETTER"  # a compensation failed past the retry policy: parked
RETRY = "RETRY"  # an operator asked to retry a dead-lettered compensation
BLOCKED = "BLOCKED"  # a forward-only action gave up for now; the saga stays unfinished
RELEASED = "RELEASED"
NOTIFIED = "NOTIFIED"
END = "END"

COMPLETED = "completed"
COMPENSATED = "compensated"
ABORTED = "aborted"  # nothing was applied, so there was nothing to compensate
REFUSED = "refused"  # another orchestrator owns this saga id; this one did nothing

APPLIED_NO = "no"
APPLIED_UNKNOWN = "unknown"


@dataclass(frozen=True)
class Failure:
    """A step or compensation that failed past the retry policy."""

    error: str
    applied: str = APPLIED_NO  # for forward steps: "no", or "unknown" (fence it first)


@dataclass(frozen=True)
class SagaState:
    """Everything the log says about one saga."""

    saga_id: str
    transfer: Transfer | None = None
    results: Mapping[int, StepResult] = field(default_factory=dict)
    failures: Mapping[int, Failure] = field(default_factory=dict)
    compensations: Mapping[int, StepResult] = field(default_factory=dict)
    dead_letters: Mapping[int, Failure] = field(default_factory=dict)
    released: StepResult | None = None
    notified: StepResult | None = None
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
        refused = any(r.status != APPLIED for r in self.results.values())
        return refused or bool(self.failures) or bool(self.compensations)

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def dead_lettered(self) -> bool:
        return bool(self.dead_letters) and not self.finished

    @property
    def replayed(self) -> bool:
        """Whether any result came back already stored (the saga id ran before)."""
        done = [*self.results.values(), *self.compensations.values()]
        return any(r.replayed for r in done)

    def applied(self, n: int) -> bool:
        result = self.results.get(n)
        return result is not None and result.status == APPLIED


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
        return _problem(state, record, f"belongs to saga {record.txid}")
    if state.finished:
        return _problem(state, record, "comes after END")
    handler = _HANDLERS.get(record.kind)
    if handler is None:
        return _problem(state, record, "is of an unknown kind")
    try:
        advanced = handler(state, record.body)
    except (KeyError, TypeError, ValueError, InvalidInput) as err:
        return _problem(state, record, f"is malformed ({err})")
    return replace(advanced, updated_at=record.time or advanced.updated_at)


def _problem(state: SagaState, record: Record, why: str) -> SagaState:
    return replace(state, problems=(*state.problems, f"{record.kind} record {why}"))


def _apply_begin(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    if state.transfer is not None:
        raise ValueError("a second SAGA_BEGIN")
    transfer = Transfer(
        AccountRef.parse(body["source"]),
        AccountRef.parse(body["destination"]),
        parse_amount(body["amount"]),
    )
    return replace(
        state,
        transfer=transfer,
        began_at=float(body.get("at", 0.0)),
        retry=_policy(body.get("retry")),
        compensation_retry=_policy(body.get("compensation_retry")),
    )


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
    n, result = _step(body), StepResult.from_json(body["result"])
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
    return replace(state, released=StepResult.from_json(body["result"]))


def _apply_notified(state: SagaState, body: Mapping[str, Any]) -> SagaState:
    return replace(state, notified=StepResult.from_json(body["result"]))


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


RUN, FENCE, COMPENSATE, RELEASE, NOTIFY, FINISH = (
    "run",
    "fence",
    "compensate",
    "release",
    "notify",
    "finish",
)
PARKED = "parked"  # a dead-lettered compensation waits for an operator
STUCK = "stuck"  # the log cannot be interpreted: an operator must look
DONE = "done"


def next_action(state: SagaState) -> Action:
    """What the orchestrator does next for ``state`` (DONE once it has ended)."""
    if state.finished:
        return Action(DONE)
    if state.problems or state.transfer is None:
        return Action(STUCK)
    return _backward(state) if state.backward else _forward(state)


def _forward(state: SagaState) -> Action:
    for n in FORWARD_STEPS:
        if n not in state.results:
            return Action(RUN, n)
    if state.released is None:
        return Action(RELEASE)
    if state.notified is None:
        return Action(NOTIFY)
    return Action(FINISH, outcome=COMPLETED)


def _backward(state: SagaState) -> Action:
    for n, failure in sorted(state.failures.items()):
        if failure.applied == APPLIED_UNKNOWN:
            return Action(FENCE, n)
    for n in sorted(COMPENSABLE, reverse=True):
        if state.applied(n) and n not in state.compensations:
            return Action(PARKED if n in state.dead_letters else COMPENSATE, n)
    undone = any(r.status == APPLIED for r in state.compensations.values())
    return Action(FINISH, outcome=COMPENSATED if undone else ABORTED)


def amount_held(state: SagaState) -> Decimal:
    """The amount this unfinished saga holds as pending (zero once released or refunded)."""
    if state.transfer is None or not state.applied(1) or state.released or state.compensations:
        return Decimal("0.00")
    return state.transfer.amount
