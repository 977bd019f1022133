"""The saga path end to end: the installed ``twopc`` as a real process against real servers.

Every test checks the truth where it lives: balances and holds on both servers, the
idempotency records (``saga_steps``) that prove each step ran at most once, and the
orchestrators' logs under ``$TWOPC_HOME/sagas``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import IO, Any

import psycopg
import pytest
from conftest import ACCOUNTS, OPENING, Databases, twopc_executable

AMOUNT = Decimal("7.25")
TOTAL = 2 * ACCOUNTS * OPENING
EXIT_UNFINISHED = 3


# -- reading the truth ------------------------------------------------------------------------


def query(db: Databases, side: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    return (db.pg_query if side == "pg" else db.mysql_query)(sql, params)


def keys(db: Databases, side: str) -> dict[str, str]:
    """idempotency key -> stored status, on one server."""
    rows = query(db, side, "SELECT idempotency_key, result FROM saga_steps")
    return {key: json.loads(stored)["status"] for key, stored in rows}


def all_keys(db: Databases) -> dict[str, str]:
    return {f"{side}:{k}": v for side in ("pg", "mysql") for k, v in keys(db, side).items()}


def holds(db: Databases) -> list[tuple[Any, ...]]:
    return [
        (side, *row)
        for side in ("pg", "mysql")
        for row in query(db, side, "SELECT saga_id, account_id, amount FROM saga_holds")
    ]


def notifications(db: Databases, side: str) -> list[str]:
    return [sid for (sid,) in query(db, side, "SELECT saga_id FROM saga_notifications")]


def saga_logs(db: Databases) -> list[str]:
    root = db.home / "sagas"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def moved(before: dict[str, Decimal], source: str, destination: str) -> dict[str, Decimal]:
    after = dict(before)
    after[source] -= AMOUNT
    after[destination] += AMOUNT
    return after


def run_json(db: Databases, *args: str, code: int = 0) -> Any:
    result = db.twopc(*args, "--json")
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


def saga(db: Databases, source: str, destination: str, *extra: str, code: int = 0) -> Any:
    return run_json(
        db, "transfer", source, destination, str(AMOUNT), "--mode", "saga", *extra, code=code
    )


def statuses(document: Any) -> list[tuple[str, str, bool]]:
    return [(s["step"], s["status"], s["replayed"]) for s in document["steps"]]


COMPLETED_STEPS = [
    ("step 1", "applied", False),
    ("step 2", "applied", False),
    ("release 1", "applied", False),
    ("step 3", "applied", False),
]


def completed_keys(saga_id: str, source: str, destination: str) -> dict[str, str]:
    src, dst = source.split(":")[0], destination.split(":")[0]
    return {
        f"{src}:{saga_id}-step-1": "applied",
        f"{src}:{saga_id}-release-1": "applied",
        f"{dst}:{saga_id}-step-2": "applied",
        f"{dst}:{saga_id}-step-3": "applied",
    }


# -- the happy path, both directions ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "destination"), [("pg:a1", "mysql:a2"), ("mysql:a3", "pg:a4")], ids=str
)
def test_saga_completes_both_directions(db: Databases, source: str, destination: str) -> None:
    before = db.balances()
    document = saga(db, source, destination, "--saga-id", "happy-1")

    assert document["outcome"] == "completed" and document["mode"] == "saga"
    assert statuses(document) == COMPLETED_STEPS
    assert [s["idempotency_key"] for s in document["steps"]] == [
        "happy-1-step-1", "happy-1-step-2", "happy-1-release-1", "happy-1-step-3",
    ]  # fmt: skip
    assert db.balances() == moved(before, source, destination)
    assert all_keys(db) == completed_keys("happy-1", source, destination)
    assert holds(db) == []  # the semantic lock is released
    assert notifications(db, destination.split(":")[0]) == ["happy-1"]
    assert saga_logs(db) == []  # a one-shot orchestrator removes its log when done


def test_text_output_says_which_steps_ran(db: Databases) -> None:
    result = db.twopc("transfer", "pg:a5", "mysql:a5", "1.50", "--mode", "saga", "--saga-id", "t1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "completed: pg:a5 -> mysql:a5 1.50"
    assert re.fullmatch(r"saga:\s+t1 \(orchestrator o-[0-9a-f]{16}\)", lines[1])
    assert [line.split()[:4] for line in lines[2:6]] == [
        ["step", "1", "debit", "pg:a5"],
        ["step", "2", "credit", "mysql:a5"],
        ["release", "1", "release", "pg:a5"],
        ["step", "3", "notify", "mysql:a5"],
    ]


# -- step 2 fails: compensated ----------------------------------------------------------------


def test_unknown_destination_is_compensated(db: Databases) -> None:
    before = db.balances()
    result = db.twopc(
        "transfer", "pg:a1", "mysql:nosuch", str(AMOUNT), "--mode", "saga", "--saga-id", "c1"
    )
    assert result.returncode == 1
    assert result.stderr == (
        "Error: saga c1 compensated: unknown account mysql:nosuch; the debit was refunded\n"
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "compensated: pg:a1 -> mysql:nosuch 7.25"
    assert "rejected: unknown account mysql:nosuch" in lines[3]
    assert lines[4].split()[:5] == ["comp", "1", "refund", "pg:a1", "7.25"]
    assert db.balances() == before
    assert holds(db) == []
    assert all_keys(db) == {
        "pg:c1-step-1": "applied",
        "mysql:c1-step-2": "rejected",
        "pg:c1-comp-1": "applied",
    }
    assert notifications(db, "mysql") == []  # the irreversible step never ran


def test_constraint_violation_on_credit_is_compensated(db: Databases) -> None:
    """DECIMAL(20,2) overflows on the credit: a permanent error, stored as a refusal."""
    db.mysql_query("UPDATE accounts SET balance = %s WHERE id = 'a2'", ("999999999999999999.00",))
    before = db.balances()
    document = saga(db, "pg:a1", "mysql:a2", "--saga-id", "c2", code=1)
    assert document["outcome"] == "compensated"
    assert statuses(document) == [
        ("step 1", "applied", False),
        ("step 2", "rejected", False),
        ("comp 1", "applied", False),
    ]
    assert "1264" in document["steps"][1]["detail"]["reason"]  # MariaDB: out of range value
    assert db.balances() == before and holds(db) == []


def test_insufficient_funds_aborts_with_nothing_to_compensate(db: Databases) -> None:
    before = db.balances()
    result = db.twopc("transfer", "mysql:a1", "pg:a1", "5000", "--mode", "saga", "--saga-id", "a1")
    assert result.returncode == 1
    assert result.stderr == (
        "Error: saga a1 aborted: insufficient funds in mysql:a1: balance 1000.00, need 5000.00;"
        " nothing changed\n"
    )
    assert all_keys(db) == {"mysql:a1-step-1": "rejected"}  # the refusal is recorded
    assert db.balances() == before and saga_logs(db) == []


def test_destination_server_down_past_the_retry_policy_is_compensated(db: Databases) -> None:
    before = db.balances()
    db.servers.stop("mysql")
    try:
        document = saga(
            db, "pg:a1", "mysql:a2", "--saga-id", "down-1", "--retry-deadline", "1", code=1
        )
    finally:
        db.servers.start("mysql")
    assert document["outcome"] == "compensated"
    assert statuses(document) == [("step 1", "applied", False), ("comp 1", "applied", False)]
    assert "mysql" in document["last_error"]
    assert db.balances() == before and holds(db) == []
    # With the server back, replaying the saga id must not credit now what was refunded.
    again = saga(db, "pg:a1", "mysql:a2", "--saga-id", "down-1", code=1)
    assert statuses(again) == [("step 1", "applied", True), ("comp 1", "applied", True)]
    assert "compensated by an earlier run" in again["last_error"]
    assert db.balances() == before
    assert all_keys(db) == {"pg:down-1-step-1": "applied", "pg:down-1-comp-1": "applied"}


# -- replays ----------------------------------------------------------------------------------


def test_replay_of_a_completed_saga_changes_nothing(db: Databases) -> None:
    before = db.balances()
    first = saga(db, "mysql:a2", "pg:a3", "--saga-id", "order-17")
    assert first["replayed"] is False
    after_first = db.balances()
    assert after_first == moved(before, "mysql:a2", "pg:a3")

    result = db.twopc(
        "transfer", "mysql:a2", "pg:a3", str(AMOUNT), "--mode", "saga", "--saga-id", "order-17"
    )
    assert result.returncode == 0, result.stderr
    assert "replayed:  every step was already done; nothing changed" in result.stdout
    assert result.stdout.count("(replayed: already stored, nothing changed)") == 4
    again = saga(db, "mysql:a2", "pg:a3", "--saga-id", "order-17")
    assert again["replayed"] is True and again["outcome"] == "completed"
    assert db.balances() == after_first
    assert all_keys(db) == completed_keys("order-17", "mysql:a2", "pg:a3")
    assert notifications(db, "pg") == ["order-17"]


def test_replay_of_a_compensated_saga_changes_nothing(db: Databases) -> None:
    before = db.balances()
    saga(db, "pg:a1", "mysql:zz", "--saga-id", "r2", code=1)
    again = saga(db, "pg:a1", "mysql:zz", "--saga-id", "r2", code=1)
    assert again["outcome"] == "compensated" and again["replayed"] is True
    assert db.balances() == before and holds(db) == []


def test_bad_saga_ids_and_options_are_misuse(db: Databases) -> None:
    bad = db.twopc("transfer", "pg:a1", "mysql:a1", "1", "--mode", "saga", "--saga-id", "a b")
    assert bad.returncode == 2 and "saga id 'a b' must be 1-64" in bad.stderr
    wrong_mode = db.twopc("transfer", "pg:a1", "mysql:a1", "1", "--saga-id", "x")
    assert wrong_mode.returncode == 2 and "only apply with --mode saga" in wrong_mode.stderr
    point = db.twopc("transfer", "pg:a1", "mysql:a1", "1", "--crash-at", "after-debit")
    assert point.returncode == 2 and "saga point" in point.stderr
    assert db.balances() == {k: OPENING for k in db.balances()}


# -- crash points -----------------------------------------------------------------------------

CRASHES = [
    # point, extra args, source, destination, outcome after recovery
    ("after-debit", (), "pg:a1", "mysql:a2", "completed"),
    ("after-credit", (), "mysql:a2", "pg:a1", "completed"),
    ("after-step-commit", (), "pg:a1", "mysql:a2", "completed"),
    ("after-step-commit", ("--at-step", "2"), "mysql:a2", "pg:a1", "completed"),
    ("after-step-commit", ("--at-step", "3"), "pg:a1", "mysql:a2", "completed"),
    ("after-compensation", (), "mysql:a2", "pg:nosuch", "compensated"),
]


DIRECTION = {"completed": "forward", "compensated": "backward"}


@pytest.mark.parametrize(
    ("point", "extra", "source", "destination", "outcome"),
    [pytest.param(*case, id=f"{case[0]}{''.join(case[1][1:])}") for case in CRASHES],
)
def test_recover_finishes_a_saga_killed_at_each_point(
    db: Databases, point: str, extra: tuple[str, ...], source: str, destination: str, outcome: str
) -> None:
    before = db.balances()
    args = ("transfer", source, destination, str(AMOUNT), "--mode", "saga", "--saga-id", "k1")
    killed = db.twopc(*args, "--crash-at", point, *extra)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout == ""

    listed = run_json(db, "sagas", code=EXIT_UNFINISHED)["sagas"]
    assert [(s["saga_id"], s["orchestrator_alive"], s["status"]) for s in listed] == [
        ("k1", False, "unfinished")
    ]
    (orchestrator,) = saga_logs(db)

    report = run_json(db, "recover")
    assert report["sagas"]["resolutions"] == [
        {
            "saga_id": "k1",
            "orchestrator": orchestrator,
            "action": outcome,
            "reason": f"resumed {DIRECTION[outcome]} from the log",
            "finished": True,
        }
    ]
    assert report["sagas"]["removed_logs"] == [orchestrator] and saga_logs(db) == []
    assert report["resolutions"] == []  # no 2PC branch was involved

    # Money conserved, each step applied at most once, the semantic lock released.
    after = db.balances()
    assert sum(after.values()) == TOTAL and holds(db) == []
    if outcome == "completed":
        assert after == moved(before, source, destination)
        assert all_keys(db) == completed_keys("k1", source, destination)
    else:
        assert after == before
        assert all_keys(db) == {
            "mysql:k1-step-1": "applied", "pg:k1-step-2": "rejected", "mysql:k1-comp-1": "applied",
        }  # fmt: skip
    assert run_json(db, "sagas")["sagas"] == []
    assert run_json(db, "recover") == {
        "resolutions": [], "ended": [], "removed_logs": [], "problems": [],
        "markers_collected": 0, "stopped_requests": [], "in_doubt_remains": False,
        "sagas": {
            "resolutions": [], "removed_logs": [], "problems": [], "unfinished_remain": False,
        },
    }  # fmt: skip


# -- a reader during an unfinished saga, and a live orchestrator --------------------------------

PAUSED = re.compile(r"paused at after-debit: pid (\d+) saga (\S+) step 1 \(")


def first_line_matching(stream: IO[str], pattern: re.Pattern[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    while True:
        line = lines.get(timeout=timeout)
        if line == "" or pattern.match(line):
            assert line, f"the process ended first; stderr: {seen}"
            return line
        seen.append(line)


@contextmanager
def paused_saga(db: Databases, *args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [twopc_executable(), "transfer", *args, "--mode", "saga", "--pause-at", "after-debit"],
        env=db.env(),
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        first_line_matching(process.stderr, PAUSED, timeout=30)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()


def test_reader_sees_the_pending_amount_while_the_saga_is_unfinished(db: Databases) -> None:
    with paused_saga(db, "pg:a1", "mysql:a2", str(AMOUNT), "--saga-id", "p1") as process:
        document = run_json(db, "balances")
        assert document["accounts"]["pg"]["a1"] == "992.75"  # committed, already debited
        assert document["pending"] == {"pg": {"a1": "7.25"}, "mysql": {}}
        assert document["pending_totals"] == {"pg": "7.25", "mysql": "0.00"}
        assert document["overall"] == str(TOTAL - AMOUNT)
        assert document["pending_overall"] == "7.25"  # committed + in flight = all the money
        text = db.twopc("balances", "pg:a1").stdout.splitlines()
        assert text[0].split() == [
            "pg:a1",
            "992.75",
            "+",
            "7.25",
            "pending",
            "(unfinished",
            "sagas)",
        ]

        # A live orchestrator's saga is listed and left alone by recovery.
        (listed,) = run_json(db, "sagas", code=EXIT_UNFINISHED)["sagas"]
        assert (listed["saga_id"], listed["orchestrator_alive"], listed["pending"]) == (
            "p1", True, "7.25",
        )  # fmt: skip
        report = run_json(db, "recover", code=EXIT_UNFINISHED)
        (left,) = report["sagas"]["resolutions"]
        assert left["action"] == "left alone" and "alive" in left["reason"]
        os.kill(process.pid, signal.SIGKILL)
    report = run_json(db, "recover")
    assert [r["action"] for r in report["sagas"]["resolutions"]] == ["completed"]
    assert run_json(db, "balances")["pending_overall"] == "0.00"
    assert db.balance("mysql", "a2") == OPENING + AMOUNT


# -- the dead letter --------------------------------------------------------------------------


@contextmanager
def key_taken(db: Databases, key: str) -> Iterator[None]:
    """Hold ``key``'s row in pg's saga_steps uncommitted from another session: a step that
    claims the same key waits for the row lock and fails for real (lock timeout)."""
    with psycopg.connect(db.pg_url) as conn:
        conn.execute(
            "INSERT INTO saga_steps (idempotency_key, saga_id, result, created_at)"
            " VALUES (%s, 'blocker', '{}', 0)",
            (key,),
        )
        yield
        conn.rollback()


def test_dead_lettered_compensation_is_listed_then_retried_by_hand(db: Databases) -> None:
    before = db.balances()
    args = ("transfer", "pg:a1", "mysql:nosuch", str(AMOUNT), "--mode", "saga", "--saga-id", "d1")
    with key_taken(db, "d1-comp-1"):
        result = db.twopc(*args, "--lock-wait", "0.2", "--retry-deadline", "0.6")
        assert result.returncode == EXIT_UNFINISHED, result.stderr
        assert "refund pg:a1 7.25: attempt 1 failed:" in result.stderr
        assert "twopc sagas retry d1" in result.stderr
        (listed,) = run_json(db, "sagas", code=EXIT_UNFINISHED)["sagas"]
        assert listed["status"] == "dead-lettered" and listed["direction"] == "backward"
        assert "lock" in listed["dead_letters"]["1"] and listed["last_error"]
        assert listed["pending"] == "7.25"
        report = run_json(db, "recover", code=EXIT_UNFINISHED)  # recovery leaves it parked
        assert report["sagas"]["resolutions"][0]["action"] == "left alone"
        assert "twopc sagas retry d1" in report["sagas"]["resolutions"][0]["reason"]
    assert db.balance("pg", "a1") == OPENING - AMOUNT  # still debited, visibly pending

    retried = run_json(db, "sagas", "retry", "d1")
    assert retried["outcome"] == "compensated"
    assert db.balances() == before and holds(db) == [] and saga_logs(db) == []
    twice = db.twopc("sagas", "retry", "d1")  # safe: nothing left to retry, nothing moves
    assert twice.returncode == 1 and "no unfinished saga d1" in twice.stderr
    replayed = saga(db, "pg:a1", "mysql:nosuch", "--saga-id", "d1", code=1)
    assert ("comp 1", "applied", True) in statuses(replayed)
    assert db.balances() == before
    assert keys(db, "pg") == {"d1-step-1": "applied", "d1-comp-1": "applied"}
