"""The saga engine's pure rules, with fakes and no server: which definitions are refused, what
the orchestrator does next after each event, which retry policy a step's work gets, and how
an attempt is cut off. Milliseconds in all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twopc.coordinator import RetryPolicy
from twopc.participants import LocalTransaction, ParticipantUnavailable
from twopc.saga import (
    APPLIED,
    CANCELLED,
    REJECTED,
    InvalidSagaDefinition,
    SagaDefinition,
    SagaRegistry,
    SagaRun,
    Step,
    StepResult,
    StepTimedOut,
    retry_policy,
)
from twopc.saga.attempts import Exhausted, attempt
from twopc.saga.registry import resolve
from twopc.saga.state import (
    ABORTED,
    APPLIED_NO,
    APPLIED_UNKNOWN,
    BEGIN,
    BLOCKED,
    COMP_DONE,
    COMPENSATE,
    COMPENSATED,
    COMPLETED,
    DEAD_LETTER,
    END,
    FENCE,
    FINISH,
    PARKED,
    RELEASE,
    RELEASED,
    RETRY,
    RUN,
    RUN_RETRIABLE,
    STEP_DONE,
    STEP_FAILED,
    STUCK,
    Action,
    apply,
    next_action,
    replay_records,
)
from twopc.saga.steps import compensation_work, forward_work, release_work
from twopc.saga.timeouts import within
from twopc.txlog import Record


def nothing(tx: LocalTransaction, saga: SagaRun) -> None:
    """A step function the pure tests never run."""


def step(name: str, **options: Any) -> Step:
    return Step(name, on="pg", action=nothing, **options)


def comp(name: str, **options: Any) -> Step:
    return step(name, compensation=nothing, **options)


# A user's 3-step saga: reserve (compensable), charge (the pivot), ship (after the pivot).
ORDER = SagaDefinition(
    "order", [comp("reserve"), step("charge", pivot=True), step("ship")]
)  # fmt: skip
# Two compensable steps before the pivot (the first takes a lock), one step after it.
TRIP = SagaDefinition(
    "trip",
    [comp("hotel", release=nothing), comp("flight"), step("confirm", pivot=True), step("mail")],
)


# -- definitions: the pivot rules, refused when the definition is made -----------------------


def test_a_sound_definition_knows_its_shape() -> None:
    assert (ORDER.pivot, ORDER.compensable(), ORDER.after_pivot()) == (2, [1], [3])
    assert (TRIP.pivot, TRIP.compensable(), TRIP.releasing(), TRIP.after_pivot()) == (
        3, [1, 2], [1], [4],
    )  # fmt: skip
    assert ORDER.keys("o-1") == ["o-1-step-1", "o-1-step-2", "o-1-step-3", "o-1-comp-1"]
    assert TRIP.keys("t")[-1] == "t-release-1"
    only_pivot = SagaDefinition("pay", [step("pay", pivot=True), step("mail")])
    assert only_pivot.compensable() == []  # a pivot first needs nothing compensable


@pytest.mark.parametrize(
    ("steps", "refusal"),
    [
        ([], "at least one step"),
        ([comp("a"), step("b")], "exactly one step must be the pivot (pivot=True), found 0"),
        ([step("a", pivot=True), step("b", pivot=True)], "found 2"),
        (
            [comp("a"), step("b"), step("c", pivot=True)],
            "step 2 (b) comes before the pivot but has no compensation",
        ),
        ([comp("a", pivot=True)], "step 1 (a) is the pivot and has a compensation"),
        ([step("a", pivot=True), comp("b")], "step 2 (b) comes after the pivot"),
        ([step("a", pivot=True, release=nothing)], "step 1 (a) has a release"),
        ([comp("a"), step("a", pivot=True)], "step names must differ: a given twice"),
    ],
    ids=[
        "no-steps", "no-pivot", "two-pivots", "uncompensable-before-pivot",
        "compensated-pivot", "compensated-after-pivot", "release-on-pivot", "same-name",
    ],
)  # fmt: skip
def test_a_definition_breaking_the_pivot_rules_is_refused(steps: list[Step], refusal: str) -> None:
    with pytest.raises(InvalidSagaDefinition) as refused:
        SagaDefinition("bad", steps)
    assert refusal in str(refused.value)
    assert str(refused.value).startswith("saga 'bad': ")


def test_a_step_needs_a_name_and_a_positive_timeout() -> None:
    with pytest.raises(InvalidSagaDefinition, match="needs a name"):
        step(" ")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidSagaDefinition, match="timeout must be > 0"):
            step("a", timeout=bad)


def test_a_registry_refuses_two_definitions_of_one_name() -> None:
    registry = SagaRegistry([ORDER, TRIP], unnamed="order")
    assert registry.get("trip") is TRIP and registry.get(None) is ORDER
    assert registry.get("nosuch") is None
    with pytest.raises(InvalidSagaDefinition, match="two saga definitions are named 'order'"):
        registry.including(SagaDefinition("order", [step("x", pivot=True)]))
    assert registry.including(ORDER).get("order") is ORDER  # the same one again is fine
    with pytest.raises(InvalidSagaDefinition, match="'gone' is not given"):
        SagaRegistry([ORDER], unnamed="gone")


# -- next action after each event -------------------------------------------------------------


def begin(definition: SagaDefinition, saga_id: str = "s-1", **params: Any) -> Record:
    body = {
        "definition": definition.name,
        "params": params,
        "steps": list(definition.step_names),
        "pivot": definition.pivot,
    }
    return Record(BEGIN, saga_id, body)


def result(status: str = APPLIED, **detail: str) -> dict[str, Any]:
    return {"status": status, "detail": detail}


def rec(kind: str, final: bool = False, **body: Any) -> Record:
    return Record(kind, "s-1", body, final=final)


def done(n: int, status: str = APPLIED) -> Record:
    return rec(STEP_DONE, n=n, result=result(status, reason=f"{status} {n}"))


Outcome = Callable[[Action], Record]


def simulate(definition: SagaDefinition, world: Outcome, limit: int = 20) -> list[Action]:
    """Drive a saga the way the orchestrator does, with ``world`` (a fake of the servers)
    saying what each action's record is: the actions taken, in order."""
    state = replay_records("s-1", [begin(definition)])
    taken: list[Action] = []
    while (action := next_action(state, definition)).kind not in ("done", "parked", "stuck"):
        taken.append(action)
        state = apply(state, world(action))
        assert len(taken) < limit, taken
    return [*taken, action]


def servers(refused: int = 0, failing: int = 0) -> Outcome:
    """Fake servers: every action applies, except step ``refused`` (a business refusal) and
    step ``failing`` (past the retry policy, outcome certain)."""

    def world(action: Action) -> Record:
        if action.kind == FINISH:
            return rec(END, final=True, outcome=action.outcome)
        if action.kind == RUN and action.n == refused:
            return done(action.n, REJECTED)
        if action.kind == RUN and action.n == failing:
            return rec(STEP_FAILED, n=action.n, error="down", applied=APPLIED_NO)
        kind = {COMPENSATE: COMP_DONE, RELEASE: RELEASED}.get(action.kind, STEP_DONE)
        return rec(kind, n=action.n, result=result())

    return world


def test_a_saga_that_applies_runs_every_step_then_the_ones_after_the_pivot() -> None:
    assert simulate(ORDER, servers()) == [
        Action(RUN, 1), Action(RUN, 2), Action(RUN_RETRIABLE, 3),
        Action(FINISH, outcome=COMPLETED), Action("done"),
    ]  # fmt: skip
    # Locks are released as soon as the pivot has applied, before the steps after it.
    assert simulate(TRIP, servers()) == [
        Action(RUN, 1), Action(RUN, 2), Action(RUN, 3), Action(RELEASE, 1),
        Action(RUN_RETRIABLE, 4), Action(FINISH, outcome=COMPLETED), Action("done"),
    ]  # fmt: skip


def test_a_refused_step_compensates_what_applied_in_reverse_order() -> None:
    assert simulate(TRIP, servers(refused=3)) == [
        Action(RUN, 1), Action(RUN, 2), Action(RUN, 3), Action(COMPENSATE, 2),
        Action(COMPENSATE, 1), Action(FINISH, outcome=COMPENSATED), Action("done"),
    ]  # fmt: skip
    failed = simulate(TRIP, servers(failing=2))
    assert failed[2:4] == [Action(COMPENSATE, 1), Action(FINISH, outcome=COMPENSATED)]
    assert simulate(ORDER, servers(refused=1)) == [
        Action(RUN, 1), Action(FINISH, outcome=ABORTED), Action("done"),
    ]  # fmt: skip


def test_nothing_after_the_pivot_goes_backward() -> None:
    """A step after the pivot that gives up for now (BLOCKED) is run again, and even a
    refusal stored for it ends the saga completed: it is never compensated."""
    forward = [begin(ORDER), done(1), done(2)]
    blocked = rec(BLOCKED, action="ship", error="server down", attempts=9)
    state = replay_records("s-1", [*forward, blocked, blocked])
    assert not state.backward and next_action(state, ORDER) == Action(RUN_RETRIABLE, 3)
    assert state.last_error == "ship: server down"
    refused_late = replay_records("s-1", [*forward, done(3, REJECTED)])
    assert next_action(refused_late, ORDER) == Action(FINISH, outcome=COMPLETED)


def test_an_unknown_outcome_is_fenced_before_compensating() -> None:
    unknown = rec(STEP_FAILED, n=3, error="commit lost", applied=APPLIED_UNKNOWN)
    events = [begin(TRIP), done(1), done(2), unknown]
    assert next_action(replay_records("s-1", events), TRIP) == Action(FENCE, 3)
    fenced = replay_records("s-1", [*events, done(3, CANCELLED)])
    assert next_action(fenced, TRIP) == Action(COMPENSATE, 2)
    found = replay_records("s-1", [*events, done(3)])  # it had applied: forward after all
    assert next_action(found, TRIP) == Action(RELEASE, 1)


def test_a_dead_lettered_compensation_parks_until_retried() -> None:
    events = [begin(TRIP), done(1), done(2), done(3, REJECTED)]
    dead = rec(DEAD_LETTER, n=2, error="lock wait timeout", attempts=3)
    parked = replay_records("s-1", [*events, dead])
    assert next_action(parked, TRIP) == Action(PARKED, 2) and parked.dead_lettered
    retried = replay_records("s-1", [*events, dead, rec(RETRY, by="operator")])
    assert next_action(retried, TRIP) == Action(COMPENSATE, 2)


def test_a_changed_or_unknown_definition_is_stuck_with_a_reason() -> None:
    state = replay_records("s-1", [begin(ORDER, item="book"), done(1)])
    changed = SagaDefinition(
        "order", [comp("reserve"), comp("charge"), step("ship", pivot=True)]
    )  # fmt: skip
    assert next_action(state, changed) == Action(STUCK)
    stuck, found = resolve(state, SagaRegistry([changed]))
    assert found is None and "'order' changed since saga s-1 began" in stuck.problems[0]
    stuck, found = resolve(state, SagaRegistry([TRIP]))
    assert found is None
    assert stuck.problems == (
        "saga definition 'order' is not registered here (known: trip): resume it where "
        "that definition is registered",
    )
    assert next_action(stuck, ORDER) == Action(STUCK)
    assert resolve(state, SagaRegistry([ORDER])) == (state, ORDER)


def test_parameters_the_definition_refuses_are_a_problem() -> None:
    def check(params: Any) -> None:
        if "item" not in params:
            raise ValueError("which item?")

    checked = SagaDefinition("order", ORDER.steps, check=check)
    stuck, found = resolve(replay_records("s-1", [begin(checked)]), SagaRegistry([checked]))
    assert found is None and stuck.problems == (
        "parameters {} refused by saga 'order': which item?",
    )  # fmt: skip


def test_logs_from_before_definitions_read_as_the_unnamed_definition() -> None:
    legacy = Record(BEGIN, "s-1", {"source": "pg:a1", "destination": "mysql:a2", "amount": "1"})
    events = [legacy, done(1), done(2), rec(RELEASED, result=result())]
    state = replay_records("s-1", events)
    assert (state.definition, state.pivot, dict(state.params)) == (
        None, 2, {"source": "pg:a1", "destination": "mysql:a2", "amount": "1"},
    )  # fmt: skip
    holding = SagaDefinition("transfer", [comp("debit", release=nothing), *ORDER.steps[1:]])
    registry = SagaRegistry([holding], unnamed="transfer")
    assert resolve(state, registry) == (state, holding)
    assert next_action(state, holding) == Action(RUN_RETRIABLE, 3)
    notified = apply(state, rec("NOTIFIED", result=result()))
    assert next_action(notified, holding) == Action(FINISH, outcome=COMPLETED)


RECORDS = st.sampled_from(
    [
        begin(ORDER), begin(TRIP), done(1), done(2), done(3), done(4), done(2, REJECTED),
        done(3, CANCELLED), rec(STEP_FAILED, n=2, error="x", applied=APPLIED_UNKNOWN),
        rec(STEP_FAILED, n=1, error="x"), rec(COMP_DONE, n=1, result=result()),
        rec(COMP_DONE, n=2, result=result(REJECTED)), rec(DEAD_LETTER, n=1, error="x"),
        rec(RETRY), rec(BLOCKED, action="ship", error="x"), rec(RELEASED, n=1, result=result()),
        rec(END, final=True, outcome=COMPLETED), rec(STEP_DONE, n=0, result=result()),
        rec(STEP_DONE, n=True, result=result()), rec(BEGIN, pivot=9), rec("WHAT"),
        Record(STEP_DONE, "other", {"n": 1, "result": result()}),
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(RECORDS, max_size=12))
def test_no_sequence_of_records_makes_the_state_machine_raise(records: list[Record]) -> None:
    state = replay_records("s-1", records)
    for definition in (ORDER, TRIP, None):
        action = next_action(state, definition)
        if state.problems or not state.began or definition is None:
            assert action.kind in ("done", STUCK)


# -- per-step retry policy and timeout: data ---------------------------------------------------

QUICK = RetryPolicy(initial_interval=0.01, maximum_interval=0.01, deadline=0.05)
OWN = RetryPolicy(deadline=1.0)
RECORDED = RetryPolicy(deadline=2.0)
CONFIGURED = RetryPolicy(deadline=3.0)


@pytest.mark.parametrize(
    ("own", "recorded", "keep", "expected"),
    [
        (OWN, RECORDED, True, OWN),  # the step's own policy comes first
        (None, RECORDED, True, RECORDED),  # else the saga's run's, as its BEGIN recorded it
        (None, None, True, CONFIGURED),  # else the orchestrator's
        (OWN, RECORDED, False, CONFIGURED),  # an operator's policy overrides them all
    ],
)
def test_which_retry_policy_a_step_gets(
    own: RetryPolicy | None, recorded: RetryPolicy | None, keep: bool, expected: RetryPolicy
) -> None:
    assert retry_policy(own, recorded, CONFIGURED, keep_recorded=keep) == expected


def test_a_steps_policies_and_timeout_travel_with_its_work() -> None:
    charge = Step("charge", on="pg", action=nothing, compensation=nothing, retry=OWN,
                  compensation_retry=RECORDED, timeout=0.5, release=nothing)  # fmt: skip
    saga = SagaDefinition("pay", [charge, step("ship", pivot=True)])
    run = SagaRun("p-1", {})
    forward = forward_work(saga, run, 1)
    undo = compensation_work(saga, run, 1)
    release = release_work(saga, run, 1)
    assert (forward.retry, forward.timeout, forward.key) == (OWN, 0.5, "p-1-step-1")
    assert (undo.retry, undo.timeout, undo.key) == (RECORDED, 0.5, "p-1-comp-1")
    assert (undo.label, undo.describe()) == ("comp 1", "undo-charge pg")
    assert (release.retry, release.key) == (OWN, "p-1-release-1")
    assert forward.change(None) == StepResult(APPLIED)  # type: ignore[arg-type]  # None: applied


def test_an_attempt_that_does_not_answer_in_time_is_cut_off() -> None:
    started = time.monotonic()
    with pytest.raises(StepTimedOut, match=r"charge: no answer within 0.05s"):
        within(0.05, "charge", lambda: time.sleep(1))
    assert time.monotonic() - started < 0.5
    assert within(1.0, "quick", lambda: 42) == 42
    assert within(None, "no limit", lambda: 7) == 7

    def own_timeout() -> None:
        raise TimeoutError("the call's own")

    with pytest.raises(TimeoutError, match="the call's own"):  # not mistaken for ours
        within(1.0, "x", own_timeout)


def test_attempts_retry_until_one_returns_or_the_policy_gives_up() -> None:
    failures: list[tuple[int, str]] = []
    outcomes = iter([ParticipantUnavailable("down"), StepTimedOut("slow"), StepResult(APPLIED)])

    def once() -> StepResult:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert attempt(QUICK, once, lambda n, e: failures.append((n, e))) == StepResult(APPLIED)
    assert failures == [(1, "down"), (2, "slow")]

    def never() -> StepResult:
        raise StepTimedOut("slow")

    gave_up = attempt(QUICK, never, lambda n, e: None)
    assert isinstance(gave_up, Exhausted) and gave_up.uncertain  # cut off: it may apply
    assert gave_up.attempts >= 2
