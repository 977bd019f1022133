"""Bad input and failure output of the installed ``twopc`` on real servers: refusals change
nothing on either server, ``--json`` failures are documents, ``twopc sagas`` reports what is
unfinished by its exit status, Ctrl-C stops a paused saga, and a server lost under
``twopc bench transfers`` is one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from conftest import OPENING, Databases, twopc_executable
from test_interrupts import Lines

EXIT_IN_DOUBT = 3
NOTHING: dict[str, list[Any]] = {"pg": [], "mysql": []}
TRANSFER = ("transfer", "pg:a1", "mysql:a2")


def prepared(db: Databases) -> dict[str, list[Any]]:
    return {"pg": db.pg_prepared(), "mysql": db.mysql_prepared()}


def one_error_line(stderr: str) -> str:
    """The last line of stderr, which must be the only ``Error:`` line and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and stderr.splitlines()[-1] == errors[0], stderr
    return errors[0]


# -- refusals change nothing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        (*TRANSFER, "1", "--lock-wait", "3000000"),
        (*TRANSFER, "1", "--lock-wait", "nan"),
        (*TRANSFER, "\u0665"),
        (*TRANSFER, " 0.5 "),
        (*TRANSFER, "1", "--at-step", "2"),
        (*TRANSFER, "1", "--mode", "saga", "--retry-deadline", "nan"),
        ("--pg-url", "", *TRANSFER, "1"),
        ("--mysql-url", "", *TRANSFER, "1", "--mode", "saga"),
        ("resolve", "garbage", "--commit"),
    ],
    ids=lambda args: " ".join(args).strip() or "empty",
)
def test_refused_input_changes_nothing(db: Databases, args: tuple[str, ...]) -> None:
    before = db.balances()
    result = db.twopc(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: ")
    assert db.balances() == before and prepared(db) == NOTHING
    assert not (db.home / "txlog").exists() and not (db.home / "sagas").exists()


@pytest.mark.parametrize("how", ["option", "environment"])
def test_an_empty_url_does_not_fall_back_to_running_dev_servers(db: Databases, how: str) -> None:
    home = str(db.servers.root.parent)  # the dev servers of this session run under it
    assert db.twopc("--home", home, "dev", "status").returncode == 0
    if how == "option":
        result = db.twopc("--home", home, "--mysql-url", "", "balances")
    else:
        result = db.twopc("--home", home, "balances", TWOPC_MYSQL_URL="")
    assert result.returncode == 2, result.stdout
    assert result.stderr == (
        "Error: mysql URL is empty (--mysql-url / TWOPC_MYSQL_URL): give a URL, or leave it "
        "unset to use the servers of `twopc dev up`\n"
    )


# -- transfer --json: a document for every failure -----------------------------------------------


def test_a_refused_transfer_prints_a_json_document(db: Databases) -> None:
    result = db.twopc(*TRANSFER, "5000", "--json")
    error = "transfer refused: insufficient funds in pg:a1: balance 1000.00, need 5000.00; "
    error += "nothing was changed"
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"outcome": "refused", "error": error, "exit_code": 1}
    assert result.stderr == f"Error: {error}\n"
    assert db.balances() == {key: OPENING for key in db.balances()}


def test_a_lock_timeout_prints_an_aborted_json_document(db: Databases) -> None:
    crashed = db.twopc("transfer", "pg:a1", "mysql:a1", "1", "--crash-at", "after-prepare")
    assert crashed.returncode == -signal.SIGKILL  # its branches keep pg:a1 locked
    result = db.twopc(*TRANSFER, "1", "--lock-wait", "0.5", "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["outcome"] == "aborted" and document["exit_code"] == 1
    assert document["error"].endswith("rolled back, nothing was changed")
    assert one_error_line(result.stderr) == f"Error: {document['error']}"


@contextmanager
def paused(
    db: Databases, *args: str, ignore_sigint: bool = False
) -> Iterator[tuple[subprocess.Popen[str], Lines, str]]:
    """``twopc ARGS`` holding at its ``--pause-at`` point: the process, its stderr, and the
    gtrid or saga id it printed."""

    def sigint_ignored() -> None:  # as a shell script's background job starts
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(
        [twopc_executable(), *args],
        env=db.env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=sigint_ignored if ignore_sigint else None,
    )
    try:
        assert process.stderr is not None
        stderr = Lines(process.stderr)
        line = stderr.wait_for("paused at ", timeout=30)
        match = re.match(r"paused at \S+: pid \d+ (?:gtrid|saga) (\S+) ", line)
        assert match, line
        yield process, stderr, match.group(1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def finish(process: subprocess.Popen[str], stderr: Lines, timeout: float) -> tuple[int, str, str]:
    assert process.stdout is not None
    code = process.wait(timeout=timeout)
    return code, process.stdout.read(), stderr.rest(timeout=10)


def test_an_interrupted_transfer_in_doubt_prints_a_json_document(db: Databases) -> None:
    with paused(db, *TRANSFER, "2", "--pause-at", "after-decision", "--json") as (
        process,
        stderr,
        gtrid,
    ):
        os.kill(process.pid, signal.SIGINT)
        code, out, err = finish(process, stderr, timeout=60)
    assert code == EXIT_IN_DOUBT, err
    document = json.loads(out)
    assert (document["outcome"], document["exit_code"], document["in_doubt"]) == (
        "in doubt",
        EXIT_IN_DOUBT,
        [gtrid],
    )
    assert one_error_line(err).startswith(f"Error: interrupted: transaction {gtrid} is in doubt")
    assert db.twopc("recover").returncode == 0


# -- twopc sagas: exit 3 while anything is unfinished --------------------------------------------


def test_sagas_exits_3_while_a_saga_is_unfinished(db: Databases) -> None:
    args = (*TRANSFER, "2", "--mode", "saga", "--saga-id", "u1", "--crash-at", "after-debit")
    assert db.twopc(*args).returncode == -signal.SIGKILL
    listed = db.twopc("sagas")
    assert listed.returncode == EXIT_IN_DOUBT, listed.stderr
    assert listed.stdout.startswith("u1  unfinished  pg:a1 -> mysql:a2 2.00  going forward")
    as_json = db.twopc("sagas", "--json")
    assert as_json.returncode == EXIT_IN_DOUBT
    assert [s["saga_id"] for s in json.loads(as_json.stdout)["sagas"]] == ["u1"]
    assert db.twopc("recover").returncode == 0
    finished = db.twopc("sagas")
    assert (finished.returncode, finished.stdout) == (0, "no unfinished sagas\n")


@contextmanager
def refund_blocked(db: Databases, key: str) -> Iterator[None]:
    """Hold ``key``'s row in pg's saga_steps from another session: the refund that claims
    it waits for the row lock and fails, until it is dead-lettered."""
    with psycopg.connect(db.pg_url) as conn:
        conn.execute(
            "INSERT INTO saga_steps (idempotency_key, saga_id, result, created_at)"
            " VALUES (%s, 'blocker', '{}', 0)",
            (key,),
        )
        yield
        conn.rollback()


def test_sagas_exits_3_while_a_saga_is_dead_lettered(db: Databases) -> None:
    args = ("transfer", "pg:a1", "mysql:nosuch", "2", "--mode", "saga", "--saga-id", "d1")
    with refund_blocked(db, "d1-comp-1"):
        result = db.twopc(*args, "--lock-wait", "0.2", "--retry-deadline", "0.6")
        assert result.returncode == EXIT_IN_DOUBT, result.stderr
    listed = db.twopc("sagas", "--json")
    assert listed.returncode == EXIT_IN_DOUBT
    assert [s["status"] for s in json.loads(listed.stdout)["sagas"]] == ["dead-lettered"]
    assert db.twopc("sagas", "retry", "d1").returncode == 0
    assert db.twopc("sagas").returncode == 0


# -- Ctrl-C stops a paused saga --------------------------------------------------------------------


STOPS = [
    pytest.param(signal.SIGINT, False, id="SIGINT"),
    pytest.param(signal.SIGINT, True, id="SIGINT-started-ignored"),
    pytest.param(signal.SIGTERM, False, id="SIGTERM"),
]


@pytest.mark.parametrize(("sig", "ignored"), STOPS)
def test_a_paused_saga_stops_on_a_signal_and_recovery_finishes_it(
    db: Databases, sig: signal.Signals, ignored: bool
) -> None:
    before = db.balances()
    args = (*TRANSFER, "2", "--mode", "saga", "--pause-at", "after-debit", "--pause-seconds", "60")
    with paused(db, *args, ignore_sigint=ignored) as (process, stderr, saga_id):
        started = time.monotonic()
        os.kill(process.pid, sig)
        code, out, err = finish(process, stderr, timeout=20)
    assert time.monotonic() - started < 10  # promptly, not when the pause runs out
    assert (code, out) == (EXIT_IN_DOUBT, ""), err
    line = one_error_line(err)
    assert re.fullmatch(
        rf"Error: interrupted: saga {saga_id} is unfinished \(orchestrator \S+\); "
        r"`twopc recover` finishes it",
        line,
    ), line
    assert db.balance("pg", "a1") == OPENING - Decimal("2.00")  # debited, held as pending
    recovered = db.twopc("recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    after = dict(before)
    after["pg:a1"] -= Decimal("2.00")
    after["mysql:a2"] += Decimal("2.00")
    assert db.balances() == after


def test_a_paused_saga_interrupted_with_json_prints_a_document(db: Databases) -> None:
    args = (*TRANSFER, "2", "--mode", "saga", "--pause-at", "after-debit", "--json")
    with paused(db, *args) as (process, stderr, saga_id):
        os.kill(process.pid, signal.SIGINT)
        code, out, err = finish(process, stderr, timeout=20)
    assert code == EXIT_IN_DOUBT, err
    document = json.loads(out)
    assert (document["outcome"], document["unfinished"]) == ("unfinished", [saga_id])
    assert one_error_line(err) == f"Error: {document['error']}"
    assert db.twopc("recover").returncode == 0


# -- bench transfers: a server lost under the auditor -------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_bench_transfers_reports_a_lost_server_in_one_line(db: Databases) -> None:
    args = ("bench", "transfers", "--modes", "2pc", "--workers", "2", "--transfers", "20000")
    process = subprocess.Popen(
        [twopc_executable(), *args],
        env=db.env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Under way once the benchmark's coordinator has a log (it writes one per transfer).
        wait_until(lambda: any((db.home / "txlog").glob("*")), timeout=30)
        time.sleep(0.5)
        db.servers.stop("pg")  # the auditor's connection is cut
        db.servers.start("pg")  # and the transfers' phase 2 can finish again
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, err
    assert out == ""
    line = one_error_line(err)
    assert line.startswith(
        "Error: 2pc run with 2 worker(s) stopped: the auditor could not read the servers ("
    ), line
    assert line.endswith("); see `twopc in-doubt` once they are back"), line
    assert err.count("\n") == 1
