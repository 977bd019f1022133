"""Recovery of in-doubt transactions on real servers, through the installed ``twopc`` command.

Each test leaves a dead (or live) coordinator's branches prepared — by ``--crash-at``, by
``--pause-at``, or by hand through the library — then drives ``in-doubt``, ``recover``,
``resolve`` and ``audit`` as separate processes and checks the truth on the servers (prepared
branches, balances, outcome markers) and in the logs after every step.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import psycopg
import pymysql
import pytest
from conftest import ACCOUNTS, AMOUNT, OPENING, Databases, Direction, twopc_executable

from twopc.coordinator import recovery as recovery_module
from twopc.coordinator.ids import coordinator_of
from twopc.participants import FORMAT_ID, Xid
from twopc.txlog import Record, TransactionLog, read_log

SIDES = ("pg", "mysql")
TOTAL = 2 * ACCOUNTS * OPENING  # every account on both servers: money is never made or lost
EXIT_IN_DOUBT = 3
ONE_SHOT = re.compile(r"t-[0-9a-f]{16}")


PG_TO_MYSQL = Direction("pg", "a1", "mysql", "a2")
MYSQL_TO_PG = Direction("mysql", "a2", "pg", "a1")


@dataclass(frozen=True)
class Left:
    """What a kill at one point leaves: which roles stay prepared, and the log's decision."""

    prepared: tuple[str, ...]  # "source" and/or "destination"
    decision: str  # what `in-doubt` says: "commit" or "none" (presumed abort)
    committed: bool  # the money moves once recovery is done
    ended_by_recovery: bool  # recovery writes END for it


LEFT = {
    "after-first-prepare": Left(("source",), "none", committed=False, ended_by_recovery=False),
    "after-prepare": Left(("source", "destination"), "none", False, False),
    "after-decision": Left(("source", "destination"), "commit", True, True),
    "after-first-commit": Left(("destination",), "commit", True, True),
    "before-end": Left((), "commit", True, True),
}


# -- reading state ----------------------------------------------------------------------------


def prepared(db: Databases) -> dict[str, list[Xid | str]]:
    return {"pg": db.pg_prepared(), "mysql": db.mysql_prepared()}


def only(gtrid: str, *sides: str) -> dict[str, list[Xid | str]]:
    """The prepared listing when exactly ``sides`` hold a branch of ``gtrid``."""
    return {side: [Xid(FORMAT_ID, gtrid, side)] if side in sides else [] for side in SIDES}


NOTHING_PREPARED: dict[str, list[Xid | str]] = {"pg": [], "mysql": []}


def log_dir(db: Databases, coordinator: str) -> Path:
    return db.home / "txlog" / coordinator


def total(balances: dict[str, Decimal]) -> Decimal:
    return sum(balances.values(), Decimal(0))


def markers(db: Databases, side: str) -> int:
    query = db.pg_query if side == "pg" else db.mysql_query
    return int(query("SELECT count(*) FROM twopc_outcomes")[0][0])


def run_json(db: Databases, *args: str, code: int) -> Any:
    """Run ``twopc ARGS --json``, check its exit status, and parse its stdout."""
    result = db.twopc(*args, "--json")
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


def in_doubt(db: Databases) -> list[dict[str, Any]]:
    document = run_json(db, "in-doubt", code=0)
    assert isinstance(document, list), document  # one shape for machines, foreign or not
    return document


def in_doubt_by_server(db: Databases) -> dict[str, dict[str, Any]]:
    entries = in_doubt(db)
    by_server = {entry["server"]: entry for entry in entries}
    assert len(by_server) == len(entries), entries
    return by_server


def actions(report: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(gtrid, server) -> action, from a `recover --json` or `resolve --json` document."""
    listed = report["resolutions"] if "resolutions" in report else report["branches"]
    found = {(r["gtrid"], r["server"]): r["action"] for r in listed}
    assert len(found) == len(listed), listed
    return found


def gtrid_from(db: Databases, coordinator: str) -> str:
    """The one gtrid a crashed coordinator left on the servers or in its log."""
    on_servers = {x.gtrid for xs in prepared(db).values() for x in xs if isinstance(x, Xid)}
    in_log = set(read_log(log_dir(db, coordinator)).unfinished())
    gtrids = on_servers | in_log
    assert len(gtrids) == 1, (on_servers, in_log)
    (gtrid,) = gtrids
    assert re.fullmatch(rf"{re.escape(coordinator)}\.[0-9a-f]{{20}}", gtrid), gtrid
    return gtrid


def crash(db: Databases, direction: Direction, point: str, coordinator: str | None = None) -> str:
    """Kill a transfer at ``point``; returns the gtrid it left behind."""
    named = ("--coordinator-id", coordinator) if coordinator else ()
    result = db.twopc("transfer", *direction.args, *named, "--crash-at", point)
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr)
    if coordinator is None:
        (only_log,) = (db.home / "txlog").iterdir()
        coordinator = only_log.name
        assert ONE_SHOT.fullmatch(coordinator), coordinator
    return gtrid_from(db, coordinator)


def crash_after_decision(db: Databases, direction: Direction = PG_TO_MYSQL, **kw: str) -> str:
    gtrid = crash(db, direction, "after-decision", **kw)
    assert prepared(db) == only(gtrid, *SIDES)
    return gtrid


class Lines:
    """A child's stream read line by line on a thread, so a test can wait for one line."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):
            pass  # the test closed the stream: it has seen all it wanted
        self._queue.put(None)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no such line within {timeout}s; seen: {self.seen}")
            if line is None:
                pytest.fail(f"the stream ended first; seen: {self.seen}")
            self.seen.append(line)
            if wanted(line):
                return line

    def rest(self, timeout: float = 10) -> str:
        """Everything after what was read, once the stream ends."""
        deadline = time.monotonic() + timeout
        try:
            while line := self._queue.get(timeout=max(0.0, deadline - time.monotonic())):
                self.seen.append(line)
        except queue.Empty:
            pass  # still running: what was seen so far will do
        return "".join(self.seen)


def start(db: Databases, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [twopc_executable(), *args],
        env=db.env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


# -- 1. every crash point, both directions: in-doubt, then recover ----------------------------

CASES = [
    pytest.param(point, direction, id=f"{point}-{direction}")
    for point in LEFT
    for direction in (PG_TO_MYSQL, MYSQL_TO_PG)
]


@pytest.mark.parametrize(("point", "direction"), CASES)
def test_recover_finishes_what_a_crash_left(
    db: Databases, point: str, direction: Direction
) -> None:
    left = LEFT[point]
    before = db.balances()
    gtrid = crash(db, direction, point)
    coordinator = gtrid.rpartition(".")[0]
    sides = tuple(getattr(direction, role) for role in left.prepared)
    assert prepared(db) == only(gtrid, *sides)

    listed = in_doubt(db)
    assert sorted(entry["server"] for entry in listed) == sorted(sides)
    for entry in listed:
        assert isinstance(entry["prepared_seconds"], int | float), entry
        assert entry["prepared_seconds"] >= 0
        assert {k: entry[k] for k in ("gtrid", "coordinator", "coordinator_alive")} == {
            "gtrid": gtrid,
            "coordinator": coordinator,
            "coordinator_alive": False,
        }
        assert entry["decision"] == left.decision
        assert (entry["blocking"], entry["foreign"]) == ([], False)

    report = run_json(db, "recover", code=0)
    done = "committed" if left.decision == "commit" else "rolled back"
    assert actions(report) == {(gtrid, side): done for side in sides}
    assert all(r["finished"] for r in report["resolutions"])
    assert report["ended"] == ([gtrid] if left.ended_by_recovery else [])
    assert report["removed_logs"] == [coordinator]
    assert (report["problems"], report["in_doubt_remains"]) == ([], False)
    assert not log_dir(db, coordinator).exists()

    after = db.balances()
    assert after == (direction.moved(before) if left.committed else before)
    assert total(after) == TOTAL
    assert prepared(db) == NOTHING_PREPARED
    listing = db.twopc("in-doubt")
    assert (listing.returncode, listing.stdout.strip()) == (0, "nothing in doubt")


# -- 2. a live coordinator's branches are never touched ----------------------------------------

PAUSED = re.compile(r"paused at after-prepare: pid (\d+) gtrid (\S+) \(")


def test_live_coordinator_is_left_alone_until_it_dies(db: Databases) -> None:
    before = db.balances()
    process = start(
        db, "transfer", *PG_TO_MYSQL.args, "--pause-at", "after-prepare", "--pause-seconds", "60"
    )
    try:
        assert process.stderr is not None
        line = Lines(process.stderr).wait_for(lambda s: s.startswith("paused at "), timeout=30)
        match = PAUSED.match(line)
        assert match, line
        assert int(match.group(1)) == process.pid
        gtrid = match.group(2)
        coordinator = gtrid.rpartition(".")[0]
        assert prepared(db) == only(gtrid, *SIDES)

        report = run_json(db, "recover", code=EXIT_IN_DOUBT)
        assert actions(report) == {(gtrid, side): "left alone" for side in SIDES}
        assert all("alive" in r["reason"] for r in report["resolutions"]), report
        assert report["removed_logs"] == [] and report["in_doubt_remains"] is True
        listed = in_doubt_by_server(db)
        assert {s: (e["coordinator"], e["coordinator_alive"]) for s, e in listed.items()} == {
            side: (coordinator, True) for side in SIDES
        }
        assert prepared(db) == only(gtrid, *SIDES)

        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop(process)

    report = run_json(db, "recover", code=0)
    assert actions(report) == {(gtrid, side): "rolled back" for side in SIDES}
    assert report["removed_logs"] == [coordinator]
    assert prepared(db) == NOTHING_PREPARED
    assert db.balances() == before


# -- 3. a transfer blocked by an in-doubt branch says who blocks it ----------------------------


@dataclass(frozen=True)
class Blocking:
    crashed: Direction
    blocked: tuple[str, str]  # the second transfer's source and destination
    side: str  # the server where the second transfer waits


BLOCKING = [
    pytest.param(Blocking(PG_TO_MYSQL, ("pg:a1", "mysql:a3"), "pg"), id="pg"),
    pytest.param(Blocking(MYSQL_TO_PG, ("mysql:a2", "pg:a5"), "mysql"), id="mysql"),
]


@pytest.mark.parametrize("case", BLOCKING)
def test_blocked_transfer_waits_until_recovery(db: Databases, case: Blocking) -> None:
    opening = db.balances()
    gtrid = crash_after_decision(db, case.crashed)
    (source, destination) = case.blocked

    # With a short lock wait the blocked transfer gives up and changes nothing.
    given_up = db.twopc("transfer", source, destination, "1", "--lock-wait", "2")
    assert given_up.returncode == 1, (given_up.stdout, given_up.stderr)
    error = [line for line in given_up.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, given_up.stderr
    assert "lock" in error[0].lower() and "timeout" in error[0].lower(), error
    assert "(lock-wait limit 2s)" in error[0], error  # says which limit ran out
    assert "nothing was changed" in error[0]
    assert db.balances() == opening
    assert prepared(db) == only(gtrid, *SIDES)

    # With a long one it says what blocks it, and gets through once recovery commits.
    process = start(db, "transfer", source, destination, "1", "--lock-wait", "60")
    try:
        assert process.stderr is not None
        lines = Lines(process.stderr)
        notice = lines.wait_for(lambda s: s.startswith("waiting for"), timeout=15)
        assert (
            f"waiting for a row lock on {case.side} held by in-doubt transaction {gtrid}" in notice
        )
        assert "twopc recover" in notice

        listed = in_doubt(db)
        crashed = {e["server"]: e for e in listed if e["gtrid"] == gtrid}
        waiters = crashed[case.side]["blocking"]
        assert any("UPDATE accounts" in str(w["query"]) for w in waiters), waiters
        # Waiting on MySQL, the transfer's PostgreSQL branch is already prepared (its
        # statements went out with their prepare, together with MySQL's): listed, as a live
        # coordinator's, and left alone by recovery.
        own = {(e["gtrid"], e["server"]): e["coordinator_alive"] for e in listed}
        del own[(gtrid, "pg")], own[(gtrid, "mysql")]
        assert list(own.values()) == ([] if case.side == "pg" else [True]), listed
        assert [server for (_, server) in own] == ([] if case.side == "pg" else ["pg"]), listed

        expected = {(gtrid, side): "committed" for side in SIDES}
        expected |= {key: "left alone" for key in own}
        report = run_json(db, "recover", code=EXIT_IN_DOUBT if own else 0)
        assert actions(report) == expected
        assert process.wait(timeout=30) == 0, lines.rest()
    finally:
        stop(process)

    after = case.crashed.moved(opening)
    for account, delta in ((source, Decimal(-1)), (destination, Decimal(1))):
        after[account] += delta
    assert db.balances() == after
    assert after[source] == OPENING - AMOUNT - 1
    assert prepared(db) == NOTHING_PREPARED


@pytest.mark.parametrize("logs_at_once", [128, 1])
@pytest.mark.parametrize("case", BLOCKING)
def test_a_transfer_killed_while_it_waits_never_prepares_behind_recovery(
    db: Databases, case: Blocking, logs_at_once: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transfer killed while its request waits for a row an in-doubt transaction holds:
    the server would run the rest of that request (marker, prepare) once recovery freed the
    row, leaving a branch prepared after recovery removed the dead transfer's log, an orphan
    no recovery could decide. Recovery stops the request first, even when it takes the two
    logs in different rounds (one log at a time). Waiting on MySQL, the transfer's PostgreSQL
    branch is already prepared (the branches went out together): no decision, so recovery
    rolls it back."""
    monkeypatch.setattr(recovery_module, "LOGS_AT_ONCE", logs_at_once)  # recover runs here
    opening = db.balances()
    gtrid = crash_after_decision(db, case.crashed)
    process = start(db, "transfer", *case.blocked, "1", "--lock-wait", "60")
    try:
        assert process.stderr is not None
        Lines(process.stderr).wait_for(lambda s: s.startswith("waiting for"), timeout=15)
        listed = in_doubt(db)
        waiting = [(e["server"], e["coordinator_alive"]) for e in listed if e["gtrid"] != gtrid]
        assert waiting == ([] if case.side == "pg" else [("pg", True)])
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop(process)

    report = run_json(db, "recover", code=0)
    [killed] = report["stopped_requests"]  # its request, still waiting on case.side
    assert coordinator_of(killed) not in (None, coordinator_of(gtrid))
    expected = {(gtrid, side): "committed" for side in SIDES}
    if case.side == "mysql":
        expected[(killed, "pg")] = "rolled back"
    assert actions(report) == expected
    assert set(report["removed_logs"]) == {coordinator_of(gtrid), coordinator_of(killed)}
    assert prepared(db) == NOTHING_PREPARED
    assert db.balances() == case.crashed.moved(opening)


# -- 4. resolve by hand ------------------------------------------------------------------------


def test_resolve_follows_a_logged_commit_and_refuses_to_go_against_it(db: Databases) -> None:
    coordinator = "resolve-1"
    before = db.balances()
    gtrid = crash_after_decision(db, coordinator=coordinator)

    refused = db.twopc("resolve", gtrid, "--rollback")
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "heuristic" in refused.stderr and "--force" in refused.stderr
    assert prepared(db) == only(gtrid, *SIDES)
    assert db.balances() == before

    outcome = run_json(db, "resolve", gtrid, "--commit", code=0)
    assert actions(outcome) == {(gtrid, side): "committed" for side in SIDES}
    assert outcome["heuristic"] is False and outcome["logged_decision"] == "commit"
    assert prepared(db) == NOTHING_PREPARED
    assert db.balances() == PG_TO_MYSQL.moved(before)
    directory = log_dir(db, coordinator)
    if directory.exists():
        shown = run_json(db, "log", "show", "--coordinator", coordinator, code=0)
        kinds = [(r["kind"], r["txid"]) for r in shown[0]["records"]]
        assert ("END", gtrid) in kinds, kinds
        assert read_log(directory).unfinished() == {}
    operator = read_log(db.home / "txlog" / "_operator").records
    assert [(r.kind, r.txid, r.body["decision"]) for r in operator] == [
        ("RESOLVE", gtrid, "commit")
    ]


def test_resolve_refuses_to_commit_a_presumed_abort(db: Databases) -> None:
    before = db.balances()
    gtrid = crash(db, PG_TO_MYSQL, "after-prepare")

    refused = db.twopc("resolve", gtrid, "--commit")
    assert refused.returncode == 1 and "heuristic" in refused.stderr, refused.stderr
    assert prepared(db) == only(gtrid, *SIDES)

    outcome = run_json(db, "resolve", gtrid, "--rollback", code=0)
    assert actions(outcome) == {(gtrid, side): "rolled back" for side in SIDES}
    assert outcome["heuristic"] is False
    assert prepared(db) == NOTHING_PREPARED
    assert db.balances() == before

    unknown = db.twopc("resolve", gtrid, "--rollback")  # nothing of it is prepared any more
    assert unknown.returncode == 1 and gtrid in unknown.stderr, unknown.stderr
    undecided = db.twopc("resolve", gtrid)
    assert undecided.returncode == 2, undecided.stderr


def test_forced_rollback_of_a_logged_commit_is_a_heuristic_outcome(db: Databases) -> None:
    before = db.balances()
    gtrid = crash_after_decision(db, coordinator="resolve-2")

    outcome = run_json(db, "resolve", gtrid, "--rollback", "--force", code=0)
    assert actions(outcome) == {(gtrid, side): "rolled back" for side in SIDES}
    assert outcome["heuristic"] is True
    assert prepared(db) == NOTHING_PREPARED
    assert db.balances() == before

    report = run_json(db, "audit", code=0)
    assert [(h["gtrid"], h["decision"]) for h in report["heuristic_resolutions"]] == [
        (gtrid, "rollback")
    ]
    assert report["violations"] == 0  # both branches rolled back: atomic, if heuristic


def test_heuristic_resolution_stays_on_record_after_recovery(db: Databases) -> None:
    """`recover` must not take the operator's log for a coordinator's and delete it."""
    gtrid = crash_after_decision(db, coordinator="resolve-3")
    run_json(db, "resolve", gtrid, "--rollback", "--force", code=0)
    operator = db.home / "txlog" / "_operator"
    assert [(r.kind, r.txid) for r in read_log(operator).records] == [("RESOLVE", gtrid)]

    report = run_json(db, "recover", code=0)
    assert report["removed_logs"] == [], report
    assert [(r.kind, r.txid) for r in read_log(operator).records] == [("RESOLVE", gtrid)]
    audit = run_json(db, "audit", code=0)
    assert [h["gtrid"] for h in audit["heuristic_resolutions"]] == [gtrid]


# -- 5. a damaged or missing log: abort is never presumed -------------------------------------


def test_corrupt_log_stops_recovery_of_its_branches(db: Databases) -> None:
    coordinator = "corrupt-1"
    gtrid = crash_after_decision(db, coordinator=coordinator)
    (segment,) = sorted(log_dir(db, coordinator).glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    at = data.find(gtrid.encode())  # inside the COMMIT record's payload
    assert at > 0
    at += len(gtrid) - 1
    data[at] = ord("0") if data[at] != ord("0") else ord("1")
    segment.write_bytes(bytes(data))

    report = run_json(db, "recover", code=EXIT_IN_DOUBT)
    assert actions(report) == {(gtrid, side): "left alone" for side in SIDES}
    (problem,) = report["problems"]
    assert "damaged" in problem and "abort is not presumed" in problem, problem
    assert report["ended"] == [] and report["removed_logs"] == []
    assert prepared(db) == only(gtrid, *SIDES)
    listed = in_doubt_by_server(db)
    assert {side: e["decision"] for side, e in listed.items()} == {
        side: "log unreadable" for side in SIDES
    }
    assert segment.read_bytes() == bytes(data)  # recovery did not "repair" the evidence


def test_missing_log_leaves_orphans_alone(db: Databases) -> None:
    coordinator = "lost-1"
    gtrid = crash(db, PG_TO_MYSQL, "after-prepare", coordinator)
    shutil.rmtree(log_dir(db, coordinator))

    report = run_json(db, "recover", code=EXIT_IN_DOUBT)
    assert actions(report) == {(gtrid, side): "left alone" for side in SIDES}
    assert all("orphan" in r["reason"] for r in report["resolutions"]), report
    assert prepared(db) == only(gtrid, *SIDES)
    listed = in_doubt_by_server(db)
    assert {side: e["decision"] for side, e in listed.items()} == {
        side: "log missing" for side in SIDES
    }


# -- 6. foreign prepared transactions are never touched ---------------------------------------

FOREIGN_MYSQL = "X'666f7265',X'62',1"


def prepare_foreign(db: Databases) -> None:
    with psycopg.connect(db.pg_url, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 'a9'")
        conn.execute("PREPARE TRANSACTION 'foreign-gid'")
    info = db.state.mysql
    conn = pymysql.connect(
        host=info.host, port=info.port, user=info.user, database=info.database, autocommit=True
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"XA START {FOREIGN_MYSQL}")
            cursor.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 'a9'")
            cursor.execute(f"XA END {FOREIGN_MYSQL}")
            cursor.execute(f"XA PREPARE {FOREIGN_MYSQL}")
    finally:
        conn.close()


def test_foreign_prepared_transactions_survive_recovery(db: Databases) -> None:
    prepare_foreign(db)
    foreign = {"pg": ["foreign-gid"], "mysql": [Xid(1, "fore", "b")]}
    assert prepared(db) == foreign

    report = run_json(db, "recover", code=0)
    assert report["resolutions"] == [] and report["in_doubt_remains"] is False
    assert prepared(db) == foreign
    assert set(db.balances().values()) == {OPENING}

    listed = in_doubt(db)
    assert sorted(e["server"] for e in listed) == ["mysql", "pg"], listed
    assert all((e["foreign"], e["decision"]) == (True, "foreign") for e in listed), listed


# -- 7. MariaDB's "not yet": the preparing session is still connected -------------------------

NYET = "nyet.0123456789abcdef0123"


def test_branch_held_by_a_live_session_is_not_claimed_done(db: Databases) -> None:
    for participant in (db.pg(), db.mysql()):
        participant.ensure_outcome_table()
    pg_branch = db.pg().begin(Xid(FORMAT_ID, NYET, "pg"))
    pg_branch.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", ("a1",))
    pg_branch.prepare()
    pg_branch.close()
    mysql_branch = db.mysql().begin(Xid(FORMAT_ID, NYET, "mysql"))
    try:
        mysql_branch.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", ("a1",))
        mysql_branch.prepare()
        entries = [{"name": s, "server": "x", "bqual": s} for s in SIDES]
        with TransactionLog.open(log_dir(db, "nyet")) as decisions:
            decisions.append(Record("COMMIT", NYET, {"branches": entries}), force=True)
        assert prepared(db) == only(NYET, *SIDES)

        report = run_json(db, "recover", code=EXIT_IN_DOUBT)
        assert actions(report) == {(NYET, "pg"): "committed", (NYET, "mysql"): "left alone"}
        assert report["ended"] == [] and report["removed_logs"] == []
        assert prepared(db) == only(NYET, "mysql")
        contents = read_log(log_dir(db, "nyet"))
        assert [r.kind for r in contents.records] == ["COMMIT"]
        assert list(contents.unfinished()) == [NYET]
        assert db.balance("pg", "a1") == OPENING + 1
    finally:
        mysql_branch.close()

    report = run_json(db, "recover", code=0)
    assert actions(report) == {(NYET, "mysql"): "committed"}
    assert report["ended"] == [NYET] and report["removed_logs"] == ["nyet"]
    assert not log_dir(db, "nyet").exists()
    assert prepared(db) == NOTHING_PREPARED
    assert (db.balance("pg", "a1"), db.balance("mysql", "a1")) == (OPENING + 1, OPENING + 1)


# -- 8. coordinators at start-up --------------------------------------------------------------


def test_named_coordinator_recovers_itself_before_new_work(db: Databases) -> None:
    crashed = db.twopc(
        "transfer", "pg:a1", "mysql:a2", "5", "--coordinator-id", "bank-1",
        "--crash-at", "after-decision",
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    gtrid = gtrid_from(db, "bank-1")
    assert prepared(db) == only(gtrid, *SIDES)

    result = db.twopc("transfer", "pg:a3", "mysql:a4", "1", "--coordinator-id", "bank-1")
    assert result.returncode == 0, result.stderr
    assert f"recovered {gtrid} pg: committed" in result.stderr
    assert f"recovered {gtrid} mysql: committed" in result.stderr
    assert prepared(db) == NOTHING_PREPARED
    balances = db.balances()
    assert [balances[a] for a in ("pg:a1", "mysql:a2", "pg:a3", "mysql:a4")] == [
        OPENING - 5, OPENING + 5, OPENING - 1, OPENING + 1
    ]  # fmt: skip
    assert read_log(log_dir(db, "bank-1")).unfinished() == {}


def test_one_shot_transfer_warns_but_leaves_others_in_doubt(db: Databases) -> None:
    gtrid = crash_after_decision(db, coordinator="other-1")
    result = db.twopc("transfer", "pg:a3", "mysql:a4", "1")
    assert result.returncode == 0, result.stderr
    assert "warning: 1 in-doubt transaction(s) of dead coordinators" in result.stderr
    assert "recovered" not in result.stderr
    assert prepared(db) == only(gtrid, *SIDES)
    balances = db.balances()
    assert [balances[a] for a in ("pg:a1", "mysql:a2", "pg:a3", "mysql:a4")] == [
        OPENING, OPENING, OPENING - 1, OPENING + 1
    ]  # fmt: skip


# -- 9. audit ----------------------------------------------------------------------------------


def xa_rollback_by_hand(db: Databases, xid: Xid) -> None:
    """``XA ROLLBACK`` from a fresh session, once MariaDB has reaped the killed client's."""
    deadline = time.monotonic() + 10
    while True:
        try:
            db.mysql_query(f"XA ROLLBACK {xid.mysql_literal()}")
            return
        except pymysql.err.OperationalError as err:
            if err.args[0] != 1397 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_audit_reports_a_branch_rolled_back_against_the_log(db: Databases) -> None:
    coordinator = "audit-1"
    gtrid = crash(db, PG_TO_MYSQL, "after-first-commit", coordinator)
    assert prepared(db) == only(gtrid, "mysql")
    in_doubt_audit = db.twopc("audit")
    assert in_doubt_audit.returncode == EXIT_IN_DOUBT, in_doubt_audit.stdout

    xa_rollback_by_hand(db, Xid(FORMAT_ID, gtrid, "mysql"))
    assert prepared(db) == NOTHING_PREPARED

    report = run_json(db, "audit", code=1)
    assert report["transactions"] == [
        {
            "gtrid": gtrid,
            "coordinator": coordinator,
            "verdict": "VIOLATION",
            "branches": {"pg": "committed", "mysql": "rolled back"},
        }
    ]
    assert report["violations"] == 1

    recovery = run_json(db, "recover", code=EXIT_IN_DOUBT)
    assert recovery["ended"] == [] and recovery["resolutions"] == []
    (problem,) = recovery["problems"]
    assert gtrid in problem and "heuristic" in problem, problem
    assert list(read_log(log_dir(db, coordinator)).unfinished()) == [gtrid]


# -- 10. outcome markers are garbage-collected ------------------------------------------------


def test_outcome_markers_are_collected(db: Databases) -> None:
    for participant in (db.pg(), db.mysql()):
        participant.ensure_outcome_table()
    db.pg_query("DELETE FROM twopc_outcomes")  # earlier tests may leave markers on purpose
    db.mysql_query("DELETE FROM twopc_outcomes")

    for source, destination in [
        ("pg:a1", "mysql:a2"),
        ("mysql:a3", "pg:a4"),
        ("pg:a5", "mysql:a6"),
    ]:
        done = db.twopc("transfer", source, destination, "1", "--coordinator-id", "gc-1")
        assert done.returncode == 0, done.stderr
    assert (markers(db, "pg"), markers(db, "mysql")) == (0, 0)

    gtrid = crash_after_decision(db, coordinator="gc-1")
    # The prepared branch's marker is there (uncommitted: only a dirty read shows its time).
    (branch,) = db.mysql().prepared_branches()
    assert branch.xid == Xid(FORMAT_ID, gtrid, "mysql") and branch.prepared_at is not None
    report = run_json(db, "recover", code=0)
    assert report["ended"] == [gtrid]
    assert (markers(db, "pg"), markers(db, "mysql")) == (0, 0)
    assert total(db.balances()) == TOTAL


def test_balances_warn_that_a_half_committed_transfer_shows_half_applied(db: Databases) -> None:
    """Plain reads do not wait for a prepared branch: after a crash between the two commits,
    balances show the debit without the credit until recovery, and say so."""
    opening = total(db.balances())
    gtrid = crash(db, PG_TO_MYSQL, "after-first-commit")
    assert prepared(db) == only(gtrid, "mysql")

    half = db.twopc("balances", "--json")
    assert half.returncode == 0, half.stderr
    document = json.loads(half.stdout)
    assert Decimal(document["overall"]) == opening - AMOUNT  # the credit is not visible yet
    assert document["in_doubt"] == [
        {"gtrid": gtrid, "prepared_on": ["mysql"], "decision": "commit"}
    ]
    (warning,) = half.stderr.splitlines()
    assert warning.startswith("warning: 1 transaction(s) in doubt;") and "twopc recover" in warning

    assert db.twopc("recover").returncode == 0
    whole = db.twopc("balances", "--json")
    assert json.loads(whole.stdout)["in_doubt"] == [] and whole.stderr == ""
    assert Decimal(json.loads(whole.stdout)["overall"]) == opening
