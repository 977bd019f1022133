"""The saga library on real servers: compensation retries against a real lock, a fence after
an unknown outcome, idempotent replays of one compensation, retention pruning."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import OPENING, Databases

from twopc.bank import TRANSFER_SAGAS, AccountRef, Transfer, run_transfer_saga
from twopc.bank.transfer_saga import compensation, describe_transfer, forward_step
from twopc.coordinator import RetryPolicy
from twopc.participants import DatabaseURL, MySQLParticipant, PostgresParticipant
from twopc.saga import (
    APPLIED,
    CANCELLED,
    COMPENSATED,
    COMPLETED,
    Orchestrator,
    SagaBusy,
    SagaConfig,
    compensation_key,
    prune,
    recover_sagas,
    run_once,
    step_key,
)
from twopc.saga.idempotency import Keyed
from twopc.saga.state import APPLIED_UNKNOWN, BEGIN, STEP_DONE, STEP_FAILED
from twopc.txlog import Record, TransactionLog

AMOUNT = Decimal("5.00")
QUICK = RetryPolicy(initial_interval=0.05, maximum_interval=0.2, deadline=20.0)


def participants(db: Databases) -> list[PostgresParticipant | MySQLParticipant]:
    """Short lock waits, so a held row lock fails a statement quickly and for real."""
    return [
        PostgresParticipant("pg", DatabaseURL.parse(db.pg_url), lock_wait=0.2),
        MySQLParticipant("mysql", DatabaseURL.parse(db.mysql_url), lock_wait=1),
    ]


class KeyBlocker:
    """Another pg session holding ``key``'s row in saga_steps uncommitted: whoever claims
    the same key waits for its row lock and times out, until :meth:`release`."""

    def __init__(self, db: Databases, key: str) -> None:
        self.conn = psycopg.connect(db.pg_url)
        self.conn.execute(
            "INSERT INTO saga_steps (idempotency_key, saga_id, result, created_at)"
            " VALUES (%s, 'blocker', '{}', 0)",
            (key,),
        )

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def test_compensation_that_fails_n_times_then_succeeds(db: Databases, tmp_path: Path) -> None:
    blocker = KeyBlocker(db, compensation_key("n3", 1))
    failures: list[tuple[str, int, str]] = []

    def on_retry(saga_id: str, what: str, attempt: int, error: str) -> None:
        failures.append((what, attempt, error))
        if len(failures) == 3:
            blocker.release()

    config = SagaConfig(
        tmp_path, retry=QUICK, compensation_retry=QUICK, on_retry=on_retry,
        definitions=TRANSFER_SAGAS,
    )  # fmt: skip
    request = Transfer(AccountRef("pg", "a1"), AccountRef("mysql", "nosuch"), AMOUNT)
    try:
        with Orchestrator.open(participants(db), config) as orchestrator:
            outcome = run_transfer_saga(orchestrator, request, "n3")
    finally:
        blocker.release()

    assert outcome.outcome == COMPENSATED
    assert [(what, attempt) for what, attempt, _ in failures] == [
        ("refund pg:a1 5.00", 1), ("refund pg:a1 5.00", 2), ("refund pg:a1 5.00", 3),
    ]  # fmt: skip
    assert all("lock timeout" in error for _, _, error in failures)
    assert outcome.state.compensations[1].status == APPLIED
    assert db.balance("pg", "a1") == OPENING  # refunded exactly once
    assert db.pg_query("SELECT count(*) FROM saga_holds") == [(0,)]


def test_compensation_run_twice_refunds_once(db: Databases, tmp_path: Path) -> None:
    pg = participants(db)[0]
    request = Transfer(AccountRef("pg", "a2"), AccountRef("mysql", "nosuch"), AMOUNT)
    db.pg_query("UPDATE accounts SET balance = balance - %s WHERE id = 'a2'", (AMOUNT,))
    refund = compensation("twice", request, 1)
    keyed = Keyed(compensation_key("twice", 1), "twice", refund.request(describe_transfer(request)))
    first = run_once(pg, keyed, refund.change)
    second = run_once(pg, keyed, refund.change)
    assert (first.status, first.replayed) == (APPLIED, False)
    assert (second.status, second.replayed, second.detail) == (APPLIED, True, first.detail)
    assert db.balance("pg", "a2") == OPENING


def _dead_orchestrator_log(home: Path, orchestrator_id: str, *records: Record) -> None:
    with TransactionLog.open(home / "sagas" / orchestrator_id) as log:
        for record in records:
            log.append(record, force=True)


def test_unknown_outcome_is_fenced_before_compensating(db: Databases, tmp_path: Path) -> None:
    """A credit that failed while committing may have applied: recovery claims its key as
    CANCELLED first, so it can never apply after the debit is refunded."""
    db.pg_query("UPDATE accounts SET balance = balance - %s WHERE id = 'a3'", (AMOUNT,))
    pg = participants(db)[0]
    debit = {"status": "applied", "detail": {}}
    transfer = Transfer(AccountRef("pg", "a3"), AccountRef("mysql", "a3"), AMOUNT)
    saga_request = describe_transfer(transfer)
    db.pg_query(
        "INSERT INTO saga_steps (idempotency_key, saga_id, request, result, created_at)"
        " VALUES (%s, 'f1', %s, %s, %s)",
        (
            step_key("f1", 1),
            forward_step("f1", transfer, 1).request(saga_request),
            json.dumps(debit),
            time.time(),
        ),
    )
    db.pg_query("INSERT INTO saga_holds VALUES ('f1', 'a3', %s, %s)", (AMOUNT, time.time()))
    begin = {"source": "pg:a3", "destination": "mysql:a3", "amount": str(AMOUNT)}
    _dead_orchestrator_log(
        tmp_path,
        "crashed",
        Record(BEGIN, "f1", begin),
        Record(STEP_DONE, "f1", {"n": 1, "result": debit}),
        Record(STEP_FAILED, "f1", {"n": 2, "error": "lost", "applied": APPLIED_UNKNOWN}),
    )
    config = SagaConfig(tmp_path, retry=QUICK, definitions=TRANSFER_SAGAS)
    report = recover_sagas([pg, participants(db)[1]], config)
    assert [(r.saga_id, r.action, r.finished) for r in report.resolutions] == [
        ("f1", COMPENSATED, True)
    ]
    stored = dict(db.mysql_query("SELECT idempotency_key, result FROM saga_steps"))
    assert json.loads(stored[step_key("f1", 2)])["status"] == CANCELLED
    assert db.balance("pg", "a3") == OPENING and db.balance("mysql", "a3") == OPENING
    # The step itself, run late (a stray retry), finds its key taken and changes nothing.
    late = Keyed(step_key("f1", 2), "f1", forward_step("f1", transfer, 2).request(saga_request))
    credit = run_once(participants(db)[1], late, lambda tx: pytest.fail())
    assert credit.status == CANCELLED and db.balance("mysql", "a3") == OPENING


def test_prune_keeps_unfinished_sagas_and_recent_records(db: Databases, tmp_path: Path) -> None:
    both = participants(db)
    with Orchestrator.open(both, SagaConfig(tmp_path)) as orchestrator:
        for saga_id in ("old-1", "old-2"):
            request = Transfer(AccountRef("pg", "a4"), AccountRef("mysql", "a4"), AMOUNT)
            assert run_transfer_saga(orchestrator, request, saga_id).outcome == COMPLETED
    begin = {"source": "pg:a5", "destination": "mysql:a5", "amount": "1.00"}
    _dead_orchestrator_log(tmp_path, "stuck", Record(BEGIN, "old-3", begin))
    db.pg_query(
        "INSERT INTO saga_steps VALUES (%s, 'old-3', %s, 0)",
        (step_key("old-3", 1), json.dumps({"status": "applied", "detail": {}})),
    )

    assert prune(both, tmp_path, retention=3600) == {"pg": 0, "mysql": 0}  # all recent
    pruned = prune(both, tmp_path, retention=3600, now=time.time() + 7200)
    assert pruned == {"pg": 4, "mysql": 4}  # step 1 + release on pg, step 2 + 3 on mysql, x2
    remaining: list[Any] = db.pg_query("SELECT idempotency_key FROM saga_steps")
    assert remaining == [(step_key("old-3", 1),)]  # an unfinished saga's key is never pruned


def test_a_saga_id_unfinished_in_another_log_is_refused(db: Databases, tmp_path: Path) -> None:
    """A caller-chosen saga id that a dead orchestrator left unfinished is not run again here
    (recovery finishes it); the same id unfinished in this orchestrator's own log neither."""
    begin = {"source": "pg:a4", "destination": "mysql:a4", "amount": str(AMOUNT)}
    _dead_orchestrator_log(tmp_path, "gone", Record(BEGIN, "taken-1", begin))
    before = db.balances()
    request = Transfer(AccountRef("pg", "a4"), AccountRef("mysql", "a4"), AMOUNT)
    config = SagaConfig(tmp_path, "here", retry=QUICK)
    with Orchestrator.open(participants(db), config) as orchestrator:
        with pytest.raises(SagaBusy) as refused:
            run_transfer_saga(orchestrator, request, "taken-1")
        assert str(refused.value) == (
            "saga taken-1 is unfinished in the log of orchestrator gone (dead); "
            "finish it with `twopc recover`"
        )
        orchestrator.log.append(Record(BEGIN, "mine-1", begin), force=True)
        with pytest.raises(SagaBusy, match="saga mine-1 is unfinished in this orchestrator's"):
            run_transfer_saga(orchestrator, request, "mine-1")
        assert db.balances() == before
        # A fresh id is never anyone else's, and goes through.
        assert run_transfer_saga(orchestrator, request).outcome == COMPLETED
