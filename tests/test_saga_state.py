"""The saga state machine, from log records alone (no servers): what each record does to the
state, what the orchestrator does next, and that no record, however bad, makes it raise."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from twopc.bank import TRANSFER_SAGA, amount_held
from twopc.saga import InvalidSagaId, check_saga_id, compensation_key, parse_duration, step_key
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
    DONE,
    END,
    FENCE,
    FINISH,
    NOTIFIED,
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
    next_action,
    replay_records,
)
from twopc.txlog import Record

SAGA = "s-1"
BEGUN = Record(BEGIN, SAGA, {"source": "pg:a1", "destination": "mysql:a2", "amount": "7.25"})


def result(status: str = "applied", **detail: str) -> dict[str, Any]:
    return {"status": status, "detail": detail}


def rec(kind: str, final: bool = False, **body: Any) -> Record:
    return Record(kind, SAGA, body, final=final)


def after(*records: Record) -> Action:
    return next_action(replay_records(SAGA, [BEGUN, *records]), TRANSFER_SAGA)


def test_forward_path_runs_debit_credit_release_notify_then_ends() -> None:
    assert after() == Action(RUN, 1)
    done1 = rec(STEP_DONE, n=1, result=result())
    assert after(done1) == Action(RUN, 2)
    done2 = rec(STEP_DONE, n=2, result=result())
    assert after(done1, done2) == Action(RELEASE, 1)
    released = rec(RELEASED, result=result())
    assert after(done1, done2, released) == Action(RUN_RETRIABLE, 3)  # notify
    notified = rec(NOTIFIED, result=result())
    assert after(done1, done2, released, notified) == Action(FINISH, outcome=COMPLETED)
    ended = rec(END, final=True, outcome=COMPLETED)
    assert after(done1, done2, released, notified, ended) == Action(DONE)


def test_refused_credit_compensates_the_debit() -> None:
    done1 = rec(STEP_DONE, n=1, result=result())
    refused = rec(STEP_DONE, n=2, result=result("rejected", reason="unknown account mysql:zz"))
    assert after(done1, refused) == Action(COMPENSATE, 1)
    state = replay_records(SAGA, [BEGUN, done1, refused])
    assert state.backward and state.last_error == "unknown account mysql:zz"
    assert amount_held(state) == Decimal("7.25")
    refunded = rec(COMP_DONE, n=1, result=result())
    assert after(done1, refused, refunded) == Action(FINISH, outcome=COMPENSATED)
    assert amount_held(replay_records(SAGA, [BEGUN, done1, refused, refunded])) == 0


def test_refused_debit_has_nothing_to_compensate() -> None:
    refused = rec(STEP_DONE, n=1, result=result("rejected", reason="insufficient funds"))
    assert after(refused) == Action(FINISH, outcome=ABORTED)


def test_a_certain_failure_compensates_at_once_an_unknown_one_is_fenced_first() -> None:
    done1 = rec(STEP_DONE, n=1, result=result())
    certain = rec(STEP_FAILED, n=2, error="down", applied=APPLIED_NO)
    assert after(done1, certain) == Action(COMPENSATE, 1)
    unknown = rec(STEP_FAILED, n=2, error="commit lost", applied=APPLIED_UNKNOWN)
    assert after(done1, unknown) == Action(FENCE, 2)
    fenced = rec(STEP_DONE, n=2, result=result("cancelled"))
    assert after(done1, unknown, fenced) == Action(COMPENSATE, 1)
    # The fence found the credit applied after all: the saga goes forward again.
    found = rec(STEP_DONE, n=2, result=result())
    assert after(done1, unknown, found) == Action(RELEASE, 1)


def test_dead_letter_parks_until_an_operator_retries() -> None:
    done1 = rec(STEP_DONE, n=1, result=result())
    refused = rec(STEP_DONE, n=2, result=result("rejected", reason="r"))
    dead = rec(DEAD_LETTER, n=1, error="lock wait timeout", attempts=3)
    assert after(done1, refused, dead) == Action(PARKED, 1)
    state = replay_records(SAGA, [BEGUN, done1, refused, dead])
    assert state.dead_lettered and state.last_error == "lock wait timeout"
    assert after(done1, refused, dead, rec(RETRY, by="operator")) == Action(COMPENSATE, 1)


def test_blocked_records_the_error_without_changing_direction() -> None:
    done = [rec(STEP_DONE, n=n, result=result()) for n in (1, 2)]
    blocked = rec(BLOCKED, action="notify", error="server down", attempts=4)
    state = replay_records(SAGA, [BEGUN, *done, blocked])
    assert next_action(state, TRANSFER_SAGA) == Action(RELEASE, 1)
    assert state.last_error == "notify: server down"


@pytest.mark.parametrize(
    "bad",
    [
        Record("NONSENSE", SAGA, {}),
        Record(STEP_DONE, SAGA, {"n": "one", "result": result()}),
        Record(STEP_DONE, SAGA, {"n": 1, "result": "applied"}),
        Record(STEP_FAILED, SAGA, {"n": 2}),
        Record(BEGIN, SAGA, {"source": "pg:a1", "destination": "pg:a1", "amount": "1"}),
        Record(BEGIN, "another-saga", {}),
    ],
    ids=["unknown-kind", "bad-step", "bad-result", "no-error", "second-begin", "other-txid"],
)
def test_bad_records_are_problems_never_exceptions(bad: Record) -> None:
    state = replay_records(SAGA, [BEGUN, bad])
    assert len(state.problems) == 1, state.problems
    assert next_action(state, TRANSFER_SAGA) == Action(STUCK)  # an operator must look


def test_a_log_without_begin_is_stuck() -> None:
    state = replay_records(SAGA, [rec(STEP_DONE, n=1, result=result())])
    assert next_action(state, TRANSFER_SAGA) == Action(STUCK)


def test_records_after_end_are_problems() -> None:
    ended = rec(END, final=True, outcome=COMPLETED)
    state = replay_records(SAGA, [BEGUN, ended, rec(STEP_DONE, n=1, result=result())])
    assert state.outcome == COMPLETED and state.problems


def test_keys_and_ids() -> None:
    assert step_key("order-42", 1) == "order-42-step-1"
    assert compensation_key("order-42", 1) == "order-42-comp-1"
    assert check_saga_id("A.b_c:d-9") == "A.b_c:d-9"
    for bad in ("", "x" * 65, "has space", "semi;colon", "quote'"):
        with pytest.raises(InvalidSagaId):
            check_saga_id(bad)


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("7d") == 7 * 86400
    with pytest.raises(ValueError):
        parse_duration("7 days")
