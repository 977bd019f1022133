"""A saga id and its idempotency keys are bound to their request, on real servers.

A saga id given again with another request (other accounts, the source swapped, another
amount) is refused before anything runs, with what it was first used for; a key that another
request stored meanwhile is refused where the step meets it, and the saga goes backward. In
every case no money is created or destroyed, and nothing reports success that did not happen.
"""

from __future__ import annotations

import json
import signal
from decimal import Decimal
from typing import Any

import pytest
from conftest import Databases

from twopc.bank import AccountRef, Transfer
from twopc.bank.transfer_saga import describe_transfer, forward_step
from twopc.coordinator import RetryPolicy
from twopc.participants import DatabaseURL, PostgresParticipant
from twopc.saga import step_key
from twopc.saga.idempotency import Keyed, KeyReused, run_once
from twopc.saga.orchestrator import Orchestrator, SagaConfig
from twopc.saga.state import SagaState, replay_records
from twopc.saga.tables import ensure_saga_tables
from twopc.txlog import Record

FIRST = ("pg:a4", "mysql:a4", "5")


def saga(db: Databases, *args: str, home: str | None = None) -> tuple[int, Any, str]:
    env = {"TWOPC_HOME": home} if home else {}
    result = db.twopc("transfer", *args, "--mode", "saga", "--json", **env)
    document = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, document, result.stderr


def saga_rows(db: Databases) -> int:
    return sum(
        int(query("SELECT count(*) FROM saga_steps")[0][0])
        for query in (db.pg_query, db.mysql_query)
    )


@pytest.mark.parametrize(
    "second",
    [
        ("pg:a4", "pg:a5", "5"),  # other destination: would credit pg:a5 from nothing
        ("mysql:a4", "pg:a4", "5"),  # the source swapped
        ("pg:a4", "mysql:a4", "50"),  # another amount
        ("mysql:a6", "mysql:a7", "5"),  # another server's accounts entirely
    ],
    ids=["other-destination", "swapped", "other-amount", "other-accounts"],
)
def test_saga_id_reused_for_another_request_is_refused(
    db: Databases, second: tuple[str, str, str]
) -> None:
    code, document, err = saga(db, *FIRST, "--saga-id", "rep-2")
    assert code == 0 and document["outcome"] == "completed", err
    after_first, rows = db.balances(), saga_rows(db)

    code, _, err = saga(db, *second, "--saga-id", "rep-2")
    assert code == 1, err
    (line,) = err.strip().splitlines()
    assert "saga id rep-2 was first used for pg:a4 -> mysql:a4 5.00" in line, line
    assert "nothing was changed" in line
    assert db.balances() == after_first
    assert saga_rows(db) == rows
    assert not (db.home / "sagas").exists() or not any((db.home / "sagas").iterdir())


def test_the_same_request_replays_and_moves_nothing(db: Databases) -> None:
    code, _, err = saga(db, *FIRST, "--saga-id", "rep-3")
    assert code == 0, err
    after_first = db.balances()
    code, document, err = saga(db, *FIRST, "--saga-id", "rep-3")
    assert code == 0, err
    assert document["outcome"] == "completed"
    assert all(step["replayed"] for step in document["steps"]), document["steps"]
    assert db.balances() == after_first


def test_a_key_taken_by_another_request_meanwhile_sends_the_saga_backward(
    db: Databases, tmp_path: Any
) -> None:
    """Saga R (pg:a5 -> mysql:a6) dies after its debit. Meanwhile another fleet (its own
    home) runs saga id R for mysql:a7 -> mysql:a8 and completes: its keys are on MariaDB
    only, where R had none yet. Recovering R, its credit meets R-step-2 stored for the other
    request: refused, so R refunds its debit. Before keys were bound to requests, R's credit
    "replayed" the other saga's result and R reported success for a credit never made."""
    before = db.balances()
    killed = db.twopc(
        "transfer", "pg:a5", "mysql:a6", "5", "--mode", "saga", "--saga-id", "R",
        "--crash-at", "after-debit",
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    other_home = str(tmp_path / "other-fleet")
    code, document, err = saga(db, "mysql:a7", "mysql:a8", "5", "--saga-id", "R", home=other_home)
    assert code == 0 and document["outcome"] == "completed", err

    recovered = db.twopc("recover", "--json")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    (resolution,) = json.loads(recovered.stdout)["sagas"]["resolutions"]
    assert resolution["saga_id"] == "R" and resolution["action"] == "compensated", resolution

    expected = dict(before)
    expected["mysql:a7"] -= Decimal("5")
    expected["mysql:a8"] += Decimal("5")
    assert db.balances() == expected  # R moved nothing in the end; the other moved 5
    stored = dict(db.mysql_query("SELECT idempotency_key, request FROM saga_steps"))
    assert "mysql:a7 -> mysql:a8 5.00" in stored["R-step-2"]  # untouched by R


def test_run_once_refuses_a_key_stored_for_another_request(db: Databases) -> None:
    pg = PostgresParticipant("pg", DatabaseURL.parse(db.pg_url))
    ensure_saga_tables(pg)
    first = Transfer(AccountRef("pg", "a1"), AccountRef("pg", "a2"), Decimal("1.00"))
    other = Transfer(AccountRef("pg", "a1"), AccountRef("pg", "a3"), Decimal("1.00"))
    debit = forward_step("k", first, 1)
    keyed = Keyed(step_key("k", 1), "k", debit.request(describe_transfer(first)))
    assert run_once(pg, keyed, debit.change).status == "applied"
    balance = db.balance("pg", "a1")

    stranger = Keyed(step_key("k", 1), "k", debit.request(describe_transfer(other)))
    with pytest.raises(KeyReused) as refused:
        run_once(pg, stranger, lambda tx: pytest.fail("must not run"))
    assert "pg:a1 -> pg:a2 1.00" in str(refused.value)
    assert db.balance("pg", "a1") == balance


# -- retry policies are the run's own -----------------------------------------------------------


def begin(**policies: object) -> Record:
    body = {"source": "pg:a1", "destination": "mysql:a2", "amount": "1.00", **policies}
    return Record("SAGA_BEGIN", "s1", body)


def test_a_resumed_saga_keeps_its_own_run_retry_policy(tmp_path: Any) -> None:
    recorded = RetryPolicy(initial_interval=0.01, maximum_interval=0.5, deadline=1.5)
    record = begin(
        retry={"initial_interval": 0.01, "backoff_coefficient": 2.0, "maximum_interval": 0.5,
               "deadline": 1.5},
        compensation_retry={"initial_interval": 0.01, "backoff_coefficient": 2.0,
                            "maximum_interval": 0.5, "deadline": 1.5},
    )  # fmt: skip
    state = replay_records("s1", [record])
    assert state.problems == () and state.retry == recorded == state.compensation_retry

    configured = RetryPolicy(deadline=30.0)
    own = Orchestrator([], SagaConfig(tmp_path, retry=configured), txlog=None)  # type: ignore[arg-type]
    assert own._retry(state) == recorded
    assert own._compensation_retry(state) == recorded
    told = Orchestrator(
        [], SagaConfig(tmp_path, retry=configured, recorded_retry=False), txlog=None
    )  # type: ignore[arg-type]
    assert told._retry(state) == configured
    assert own._retry(SagaState("old")) == configured  # logs from before policies were kept


@pytest.mark.parametrize(
    "policy", [{"deadline": 1}, "fast", {"initial_interval": "nan", "backoff_coefficient": 2,
                                          "maximum_interval": 1, "deadline": 1}]
)  # fmt: skip
def test_a_malformed_recorded_policy_is_a_problem_not_a_guess(policy: object) -> None:
    state = replay_records("s1", [begin(retry=policy)])
    assert state.problems and "malformed" in state.problems[0]


def test_the_cli_resumes_sagas_with_their_own_deadline_unless_given_one(tmp_path: Any) -> None:
    """`twopc sagas retry` and `twopc recover` build their orchestrator with this."""
    from twopc.commands.common import Context
    from twopc.commands.sagas import saga_config

    obj = Context(tmp_path, {"pg": None, "mysql": None})
    assert saga_config(obj, None, None).recorded_retry is True
    told = saga_config(obj, None, 2.5)
    assert told.recorded_retry is False and told.retry.deadline == 2.5
