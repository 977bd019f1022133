"""kill -9 of the coordinator at each protocol point leaves exactly the state DESIGN.md predicts.

Every test runs the installed ``twopc transfer`` as a real process against the real servers,
kills it (``--crash-at``, or ``--pause-at`` plus our own SIGKILL), then reads the truth from
three places: each server's list of prepared branches, the coordinator's log directory, and
the balances. The crashed process prints no gtrid, so it is recovered from the branches and
the log, which must agree.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO

import pytest
from conftest import AMOUNT, Databases, Direction, twopc_executable

from twopc.participants import FORMAT_ID, Xid
from twopc.txlog import LogContents, Record, is_locked, read_log

SIDES = ("pg", "mysql")


DIRECTIONS = [Direction("pg", "a1", "mysql", "a2"), Direction("mysql", "a2", "pg", "a1")]


@dataclass(frozen=True)
class Expected:
    """What a kill at one point leaves: branch state per role, and the log's verdict."""

    source: str  # "active" (nothing prepared, nothing changed), "prepared" or "committed"
    destination: str
    commit_logged: bool


EXPECTED = {
    "after-first-prepare": Expected("prepared", "active", commit_logged=False),
    "after-prepare": Expected("prepared", "prepared", commit_logged=False),
    "after-decision": Expected("prepared", "prepared", commit_logged=True),
    "after-first-commit": Expected("committed", "prepared", commit_logged=True),
    "before-end": Expected("committed", "committed", commit_logged=True),
}

CASES = [pytest.param(p, d, id=f"{p}-{d}") for p in EXPECTED for d in DIRECTIONS]


# -- reading the state a dead coordinator left behind -----------------------------------------


def log_dir(db: Databases, coordinator_id: str) -> Path:
    return db.home / "txlog" / coordinator_id


def prepared(db: Databases) -> dict[str, list[Xid | str]]:
    """Every prepared branch on each server (the fixture starts each test with none)."""
    return {"pg": db.pg_prepared(), "mysql": db.mysql_prepared()}


def both_prepared(gtrid: str) -> dict[str, list[Xid | str]]:
    return {side: [Xid(FORMAT_ID, gtrid, side)] for side in SIDES}


def gtrids_of(branches: dict[str, list[Xid | str]]) -> set[str]:
    return {x.gtrid for listed in branches.values() for x in listed if isinstance(x, Xid)}


def records_of(contents: LogContents, kind: str) -> list[Record]:
    return [record for record in contents.records if record.kind == kind]


def expected_balances(
    before: dict[str, Decimal], direction: Direction, expect: Expected
) -> dict[str, Decimal]:
    after = dict(before)
    if expect.source == "committed":
        after[f"{direction.source}:{direction.source_account}"] -= AMOUNT
    if expect.destination == "committed":
        after[f"{direction.destination}:{direction.destination_account}"] += AMOUNT
    return after


def branch_entries(db: Databases) -> list[dict[str, str]]:
    """The COMMIT record's ``branches`` body for a pg+mysql transaction, sorted by name."""
    servers = {"pg": db.pg().server, "mysql": db.mysql().server}
    return [{"name": s, "server": servers[s], "bqual": s} for s in sorted(SIDES)]


# -- --crash-at, every point, both directions ---------------------------------------------------


@pytest.mark.parametrize(("point", "direction"), CASES)
def test_kill_at_point_leaves_predicted_state(
    db: Databases, point: str, direction: Direction
) -> None:
    expect = EXPECTED[point]
    coordinator_id = f"crash-{point}-{direction.source}"
    before = db.balances()

    result = db.twopc(
        "transfer", *direction.args, "--coordinator-id", coordinator_id, "--crash-at", point
    )

    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert f"{coordinator_id}." not in result.stderr  # the gtrid is printed nowhere
    directory = log_dir(db, coordinator_id)
    assert not is_locked(directory)  # the kernel dropped the dead coordinator's lock
    contents = read_log(directory)
    branches = prepared(db)

    # One gtrid, the same on every server and in the log, owned by this coordinator.
    gtrids = gtrids_of(branches) | {record.txid for record in contents.records}
    assert len(gtrids) == 1, (gtrids, branches, contents.records)
    (gtrid,) = gtrids
    assert re.fullmatch(rf"{re.escape(coordinator_id)}\.[0-9a-f]{{20}}", gtrid), gtrid

    # Servers: exactly the branches still prepared at this point, with our xids.
    roles = {direction.source: expect.source, direction.destination: expect.destination}
    for side, role in roles.items():
        want = [Xid(FORMAT_ID, gtrid, side)] if role == "prepared" else []
        assert branches[side] == want, (side, role, branches)

    # Log: nothing before the decision (presumed abort); after it, COMMIT and never END.
    assert records_of(contents, "END") == []
    commits = records_of(contents, "COMMIT")
    if point == "after-first-prepare":
        assert contents.records == []
    if not expect.commit_logged:
        assert commits == []
        assert contents.unfinished() == {}
    else:
        assert len(commits) == 1, contents.records
        (commit,) = commits
        assert commit.txid == gtrid and not commit.final
        entries = sorted(commit.body["branches"], key=lambda entry: entry["name"])
        assert entries == branch_entries(db)
        assert list(contents.unfinished()) == [gtrid]

    # Balances: only committed branches moved money; no other account changed.
    assert db.balances() == expected_balances(before, direction, expect)


def test_one_shot_coordinator_killed_after_decision_keeps_its_log(db: Databases) -> None:
    """Without --coordinator-id the log is only removed on a clean close, never on a crash."""
    result = db.twopc("transfer", "pg:a3", "mysql:a4", "1", "--crash-at", "after-decision")
    assert result.returncode == -signal.SIGKILL, result.stderr
    branches = prepared(db)
    (gtrid,) = gtrids_of(branches)
    coordinator_id = gtrid.rpartition(".")[0]
    assert re.fullmatch(r"t-[0-9a-f]{16}", coordinator_id), gtrid
    assert [p.name for p in (db.home / "txlog").iterdir()] == [coordinator_id]
    contents = read_log(log_dir(db, coordinator_id))
    assert [(r.kind, r.txid) for r in contents.records] == [("COMMIT", gtrid)]
    assert branches == both_prepared(gtrid)


# -- --pause-at: a live coordinator holds its lock; kill -9 releases it -------------------------

PAUSED = re.compile(r"paused at after-prepare: pid (\d+) gtrid (\S+) \(")


def read_paused_line(stream: IO[str], timeout: float) -> str:
    """The first ``paused at`` line on ``stream``; fails the test after ``timeout`` seconds."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")  # end of stream

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no 'paused at' line within {timeout}s; stderr so far: {seen}")
        if line == "":
            pytest.fail(f"twopc ended before pausing; stderr: {seen}")
        if line.startswith("paused at "):
            return line
        seen.append(line)


def test_paused_coordinator_is_alive_until_killed(db: Databases) -> None:
    coordinator_id = "pause-after-prepare"
    directory = log_dir(db, coordinator_id)
    before = db.balances()
    args = ("transfer", *DIRECTIONS[0].args, "--coordinator-id", coordinator_id)
    process = subprocess.Popen(
        [twopc_executable(), *args, "--pause-at", "after-prepare", "--pause-seconds", "60"],
        env=db.env(),
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        match = PAUSED.match(read_paused_line(process.stderr, timeout=30))
        assert match, "malformed 'paused at' line"
        pid, gtrid = int(match.group(1)), match.group(2)
        assert pid == process.pid
        assert gtrid.startswith(f"{coordinator_id}.")
        assert prepared(db) == both_prepared(gtrid)
        assert is_locked(directory)  # a live coordinator: recovery must not touch its branches
        assert records_of(read_log(directory), "COMMIT") == []

        os.kill(pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL

        assert not is_locked(directory)
        assert prepared(db) == both_prepared(gtrid)  # prepared branches outlive their coordinator
        assert read_log(directory).records == []
        assert db.balances() == before
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()


# -- the happy path leaves a clean log ----------------------------------------------------------


def test_completed_transfer_logs_commit_then_end(db: Databases) -> None:
    coordinator_id = "happy-path"
    document = db.twopc_json(
        "transfer", "mysql:a5", "pg:a6", "3.50", "--coordinator-id", coordinator_id
    )
    gtrid = document["gtrid"]
    assert gtrid.startswith(f"{coordinator_id}.")
    directory = log_dir(db, coordinator_id)
    assert not is_locked(directory)
    contents = read_log(directory)
    assert [(r.kind, r.txid, r.final) for r in contents.records] == [
        ("COMMIT", gtrid, False),
        ("END", gtrid, True),
    ]
    assert sorted(contents.records[0].body["branches"], key=lambda e: e["name"]) == (
        branch_entries(db)
    )
    assert contents.unfinished() == {}
    assert prepared(db) == {"pg": [], "mysql": []}


def test_one_shot_coordinator_leaves_no_log_after_success(db: Databases) -> None:
    document = db.twopc_json("transfer", "pg:a7", "mysql:a8", "2")
    assert document["outcome"] == "committed" and document["protocol"] == "2pc"
    txlog = db.home / "txlog"
    leftovers = list(txlog.iterdir()) if txlog.exists() else []
    assert leftovers == []
    assert db.balance("pg", "a7") == Decimal("998.00")
    assert db.balance("mysql", "a8") == Decimal("1002.00")
