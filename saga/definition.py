"""A saga defined as data: a name and ordered steps, each on a named participant.

A :class:`Step` is one local transaction on one participant: its forward ``action`` and, for
a step before the pivot, its ``compensation``. Exactly one step is the **pivot**: once it
has applied, the saga can only go forward, so every step before it must be compensable, and
the steps after it (the irreversible ones go last) are retried until they succeed and never
compensated. A step before the pivot may also take a semantic lock (such as money shown as
pending) that its ``release`` drops once the pivot has applied.

A definition that breaks these rules is refused when it is made
(:class:`InvalidSagaDefinition`), never half-run. The engine numbers the steps from 1 in
the order given; their idempotency keys are ``<saga-id>-step-<n>``, ``<saga-id>-comp-<n>``
and ``<saga-id>-release-<n>``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twopc.participants import LocalTransaction, Participant
from twopc.retry import RetryPolicy
from twopc.saga.idempotency import StepResult
from twopc.saga.ids import compensation_key, release_key, step_key

#: A saga's parameters: JSON values (its BEGIN record keeps them for recovery).
Params = Mapping[str, Any]


class InvalidSagaDefinition(ValueError):
    """A saga definition that breaks the pivot rules (or names a step twice): refused."""


@dataclass(frozen=True)
class SagaRun:
    """The saga a step runs for: its id and its parameters, as its BEGIN record holds them."""

    saga_id: str
    params: Params


#: A step's forward action, compensation or release: the change, made through ``tx`` (one
#: local transaction, also holding the step's idempotency key). Returns the result to store
#: (None: applied, nothing to report), or a REJECTED result to refuse.
StepFunction = Callable[[LocalTransaction, SagaRun], "StepResult | None"]


@dataclass(frozen=True)
class Step:
    """One step: a local transaction on the participant named ``on`` (or chosen from the
    saga's parameters by a function).

    ``retry`` bounds its forward action and release, ``compensation_retry`` its
    compensation (None: the orchestrator's policies). ``timeout`` cuts off any one attempt
    that has not answered within so many seconds; the next attempt reuses the same key.
    ``subject`` says what the step works on, for reports and for the request its keys are
    bound to (default: the participant's name).
    """

    name: str
    on: str | Callable[[Params], str]
    action: StepFunction
    compensation: StepFunction | None = None
    pivot: bool = False
    release: StepFunction | None = None
    compensation_name: str = ""
    subject: Callable[[Params], str] | None = None
    retry: RetryPolicy | None = None
    compensation_retry: RetryPolicy | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise InvalidSagaDefinition("a step needs a name")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise InvalidSagaDefinition(f"step {self.name}: timeout must be > 0 seconds")

    @property
    def compensable(self) -> bool:
        return self.compensation is not None

    @property
    def undo_name(self) -> str:
        """What the compensation is called in reports (``refund``)."""
        return self.compensation_name or f"undo-{self.name}"

    def participant(self, params: Params) -> str:
        """The name of the participant this step runs on, for these parameters."""
        return self.on if isinstance(self.on, str) else self.on(params)

    def describe(self, action: str, params: Params) -> str:
        """``<action> <subject>``, as reports show it and keys are bound to it."""
        subject = self.subject(params) if self.subject else self.participant(params)
        return f"{action} {subject}"


@dataclass(frozen=True)
class SagaDefinition:
    """A named saga: its steps in order, exactly one of them the pivot.

    ``describe`` names one request of it (default: its name and parameters as JSON): a saga
    id's keys are bound to it, so the same id with other parameters is refused. ``check``
    validates parameters (raising ``ValueError``) before anything runs. ``setup`` prepares a
    participant for the steps (creates the tables they use) before the first step there.
    """

    name: str
    steps: Sequence[Step]
    describe: Callable[[Params], str] | None = None
    check: Callable[[Params], object] | None = None
    setup: Callable[[Participant], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        problems = definition_problems(self.name, self.steps)
        if problems:
            raise InvalidSagaDefinition(f"saga {self.name!r}: " + "; ".join(problems))

    @property
    def pivot(self) -> int:
        """The pivot's step number (from 1)."""
        return next(n for n, step in self.numbered() if step.pivot)

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps)

    def numbered(self) -> list[tuple[int, Step]]:
        return list(enumerate(self.steps, start=1))

    def step(self, n: int) -> Step:
        """Step ``n`` (from 1); ``ValueError`` when there is none."""
        if not 1 <= n <= len(self.steps):
            raise ValueError(f"saga {self.name} has no step {n}")
        return self.steps[n - 1]

    def compensable(self) -> list[int]:
        """The steps before the pivot, in order: the ones a refusal compensates."""
        return list(range(1, self.pivot))

    def releasing(self) -> list[int]:
        """The steps whose semantic lock is released once the pivot has applied."""
        return [n for n, step in self.numbered() if step.release is not None]

    def after_pivot(self) -> list[int]:
        """The steps after the pivot: retried until they succeed, never compensated."""
        return list(range(self.pivot + 1, len(self.steps) + 1))

    def request(self, params: Params) -> str:
        """One request of this saga, canonically: what its keys are bound to."""
        if self.describe is not None:
            return self.describe(params)
        return f"{self.name} {json.dumps(dict(params), sort_keys=True)}"

    def keys(self, saga_id: str) -> list[str]:
        """Every idempotency key saga ``saga_id`` of this definition may store."""
        steps = [step_key(saga_id, n) for n, _ in self.numbered()]
        comps = [compensation_key(saga_id, n) for n in self.compensable()]
        return [*steps, *comps, *(release_key(saga_id, n) for n in self.releasing())]


def definition_problems(name: str, steps: Sequence[Step]) -> list[str]:
    """Every rule ``steps`` break, in words (empty when the definition is sound)."""
    if not name.strip():
        return ["a saga definition needs a name"]
    if not steps:
        return ["a saga needs at least one step"]
    problems = _duplicate_names(steps)
    pivots = [n for n, step in enumerate(steps, start=1) if step.pivot]
    if len(pivots) != 1:
        problems.append(
            f"exactly one step must be the pivot (pivot=True), found {len(pivots)}: the "
            "step after which the saga can only go forward"
        )
        return problems
    for n, step in enumerate(steps, start=1):
        problems += _placement_problems(n, step, pivots[0])
    return problems


def _duplicate_names(steps: Sequence[Step]) -> list[str]:
    names = [step.name for step in steps]
    twice = sorted({name for name in names if names.count(name) > 1})
    return [f"step names must differ: {', '.join(twice)} given twice"] if twice else []


def _placement_problems(n: int, step: Step, pivot: int) -> list[str]:
    where = f"step {n} ({step.name})"
    if n < pivot and not step.compensable:
        return [
            f"{where} comes before the pivot but has no compensation: a refusal at or "
            "before the pivot could not undo it (give it one, or move it after the pivot)"
        ]
    problems = []
    if n == pivot and step.compensable:
        problems.append(f"{where} is the pivot and has a compensation, which would never run")
    if n > pivot and step.compensable:
        problems.append(f"{where} comes after the pivot, where nothing is compensated")
    if n >= pivot and step.release is not None:
        problems.append(f"{where} has a release: only a step before the pivot takes a lock")
    return problems
