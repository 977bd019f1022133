"""Recovery and audit tell the truth about money: the defects a hostile user found, on real
servers through the installed ``twopc``.

- outcome markers outlive the END records that cover them (a restarting coordinator);
- a committed branch's marker beats presumed abort when a COMMIT record is lost;
- a forced rollback that breaks atomicity stays a violation in ``audit``;
- the markers of dead coordinators are collected by recovery;
- two recoveries at once take turns, and neither reports what the other finished.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import AMOUNT, Databases, Direction, twopc_executable
from test_recovery import (
    MYSQL_TO_PG,
    NOTHING_PREPARED,
    PG_TO_MYSQL,
    SIDES,
    TOTAL,
    actions,
    crash,
    crash_after_decision,
    in_doubt_by_server,
    log_dir,
    only,
    prepared,
    run_json,
    total,
)

from twopc.txlog import read_log
from twopc.txlog.framing import FILE_HEADER_SIZE


def markers_of(db: Databases, coordinator: str) -> dict[str, int]:
    """Outcome markers on each server whose gtrid ``coordinator`` minted."""
    pattern = coordinator + ".%"
    return {
        "pg": int(
            db.pg_query("SELECT count(*) FROM twopc_outcomes WHERE gtrid LIKE %s", (pattern,))[0][0]
        ),
        "mysql": int(
            db.mysql_query("SELECT count(*) FROM twopc_outcomes WHERE gtrid LIKE %s", (pattern,))[
                0
            ][0]
        ),
    }


# -- 3. a restarting coordinator keeps the markers until its END records are durable ----------


def test_restarting_coordinator_keeps_markers_until_its_ends_are_durable(db: Databases) -> None:
    before = db.balances()
    first = crash_after_decision(db, coordinator="stable-1")
    # The same id again: it commits `first` from its log before new work, then dies before
    # its next forced append (nothing of the new transfer is decided).
    second = crash(db, MYSQL_TO_PG, "after-first-prepare", "stable-1")
    assert second != first

    # The END of `first` is durable, so audit still knows it committed (its markers may go).
    audit = run_json(db, "audit", code=0)
    assert {e["gtrid"]: e["verdict"] for e in audit["transactions"]} == {first: "committed"}
    report = run_json(db, "recover", code=0)
    assert report["problems"] == [], report  # no heuristic outcome reported
    assert actions(report) == {(second, "mysql"): "rolled back"}  # presumed abort
    assert prepared(db) == NOTHING_PREPARED
    assert db.balances() == PG_TO_MYSQL.moved(before)  # the first moved once, the second not


# -- 5. evidence beats presumption ---------------------------------------------------------------


def truncate_segments(directory: Path) -> None:
    """Disk loss: every record of the log gone, the segment files' headers left."""
    for segment in directory.glob("segment-*.log"):
        with segment.open("r+b") as file:
            file.truncate(FILE_HEADER_SIZE)


def test_lost_commit_record_is_answered_by_the_committed_branch(db: Databases) -> None:
    before = db.balances()
    coordinator = "truncated-1"
    gtrid = crash(db, PG_TO_MYSQL, "after-first-commit", coordinator)
    assert prepared(db) == only(gtrid, "mysql")  # the source committed, the other prepared
    truncate_segments(log_dir(db, coordinator))

    listed = in_doubt_by_server(db)
    assert listed["mysql"]["decision"] == "none"
    assert listed["mysql"]["evidence"] is True
    assert listed["mysql"]["recovery"] == "commit"
    dry = run_json(db, "recover", "--dry-run", code=0)
    assert actions(dry) == {(gtrid, "mysql"): "would commit"}

    report = run_json(db, "recover", code=0)
    assert actions(report) == {(gtrid, "mysql"): "committed"}
    (resolution,) = report["resolutions"]
    assert "evidence" in resolution["reason"], resolution
    assert prepared(db) == NOTHING_PREPARED
    assert db.balances() == PG_TO_MYSQL.moved(before)
    assert run_json(db, "audit", code=0)["violations"] == 0


def test_orphan_with_a_committed_branch_is_committed(db: Databases) -> None:
    """No log at all, but one branch committed: the decision was COMMIT."""
    before = db.balances()
    coordinator = "lost-2"
    gtrid = crash(db, MYSQL_TO_PG, "after-first-commit", coordinator)
    for segment in log_dir(db, coordinator).iterdir():
        segment.unlink()
    log_dir(db, coordinator).rmdir()

    report = run_json(db, "recover", code=0)
    assert actions(report) == {(gtrid, "pg"): "committed"}
    assert db.balances() == MYSQL_TO_PG.moved(before)
    # Nothing of it is prepared any more: its markers are evidence for nothing, and go.
    assert markers_of(db, coordinator) == {"pg": 0, "mysql": 0}
    assert not log_dir(db, coordinator).exists()


def test_lost_decision_without_evidence_is_presumed_abort(db: Databases) -> None:
    coordinator = "lost-3"
    gtrid = crash(db, PG_TO_MYSQL, "after-decision", coordinator)
    truncate_segments(log_dir(db, coordinator))  # the decision is lost, nothing committed
    report = run_json(db, "recover", code=0)
    # A readable log of a dead coordinator without the record, nothing committed: presumed
    # abort, atomic (the decision was never acted on).
    assert actions(report) == {(gtrid, side): "rolled back" for side in SIDES}
    assert total(db.balances()) == TOTAL


# -- 4. a forced heuristic that broke atomicity stays a violation -----------------------------


def test_forced_rollback_after_a_commit_is_a_violation_for_good(db: Databases) -> None:
    coordinator = "heuristic-1"
    gtrid = crash(db, PG_TO_MYSQL, "after-first-commit", coordinator)
    refused = db.twopc("resolve", gtrid, "--rollback")
    assert refused.returncode == 1, refused.stderr
    assert "break atomicity" in refused.stderr
    assert prepared(db) == only(gtrid, "mysql")

    outcome = run_json(db, "resolve", gtrid, "--rollback", "--force", code=0)
    assert outcome["heuristic"] is True and outcome["violation"] is True
    assert outcome["outcome"] == {"mysql/mysql": "rolled back", "pg/pg": "committed"}
    assert total(db.balances()) == TOTAL - AMOUNT  # the money the operator destroyed

    for _ in range(2):  # before and after recovery has tidied the coordinator's log away
        audit = db.twopc("audit", "--json")
        assert audit.returncode == 1, audit.stdout + audit.stderr
        document = run_json_text(audit.stdout)
        assert document["violations"] == 1
        verdicts = {e["gtrid"]: e["verdict"] for e in document["transactions"]}
        assert verdicts[gtrid] == "VIOLATION"
        run_json(db, "recover", code=0)
    assert not log_dir(db, coordinator).exists()


def run_json_text(text: str) -> dict[str, object]:
    document = json.loads(text)
    assert isinstance(document, dict)
    return document


# -- 6. the markers of dead coordinators are collected ----------------------------------------

KILLED_AFTER_TRANSFERS = textwrap.dedent(
    """
    import os, signal, sys
    from decimal import Decimal
    from pathlib import Path
    from twopc.bank import AccountRef, Transfer, run_transfer
    from twopc.coordinator import Coordinator, CoordinatorConfig
    from twopc.participants import DatabaseURL, MySQLParticipant, PostgresParticipant

    home, pg_url, mysql_url, coordinator_id, count = sys.argv[1:6]
    pg = PostgresParticipant("pg", DatabaseURL.parse(pg_url))
    mysql = MySQLParticipant("mysql", DatabaseURL.parse(mysql_url))
    config = CoordinatorConfig(Path(home), coordinator_id=coordinator_id)
    coordinator = Coordinator.open([pg, mysql], config)
    for n in range(int(count)):
        transfer = Transfer(AccountRef.parse("pg:a1"), AccountRef.parse("mysql:a2"), Decimal("1"))
        run_transfer(coordinator, transfer)
    os.kill(os.getpid(), signal.SIGKILL)  # before the coordinator collects its markers
    """
)


def test_recovery_collects_the_markers_of_dead_coordinators(db: Databases) -> None:
    for n in range(3):
        coordinator = f"killed-{n}"
        subprocess.run(
            [
                sys.executable,
                "-c",
                KILLED_AFTER_TRANSFERS,
                str(db.home),
                db.pg_url,
                db.mysql_url,
                *(coordinator, "5"),
            ],
            env=db.env(),
            timeout=120,
            check=False,
        )
        assert markers_of(db, coordinator) == {"pg": 5, "mysql": 5}
    run_json(db, "recover", code=0)
    for n in range(3):
        assert markers_of(db, f"killed-{n}") == {"pg": 0, "mysql": 0}
        assert not log_dir(db, f"killed-{n}").exists()
    assert run_json(db, "audit", code=0)["violations"] == 0


def test_markers_of_a_transaction_committed_by_evidence_are_collected(db: Databases) -> None:
    coordinator = "keep-1"
    crash(db, PG_TO_MYSQL, "after-first-commit", coordinator)
    assert markers_of(db, coordinator) == {"pg": 1, "mysql": 0}  # mysql's is uncommitted
    truncate_segments(log_dir(db, coordinator))
    run_json(db, "recover", code=0)
    assert prepared(db) == NOTHING_PREPARED
    assert markers_of(db, coordinator) == {"pg": 0, "mysql": 0}


# -- 12. two recoveries at once take turns -------------------------------------------------------


def test_concurrent_recoveries_take_turns(db: Databases) -> None:
    before = db.balances()
    directions = [Direction("pg", f"a{2 * n + 1}", "mysql", f"a{2 * n + 2}") for n in range(3)]
    gtrids = []
    for n, direction in enumerate(directions):
        killed = db.twopc(
            "transfer",
            *direction.args,
            "--coordinator-id",
            f"turns-{n}",
            "--crash-at",
            "after-decision",
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        (gtrid,) = read_log(log_dir(db, f"turns-{n}")).unfinished()
        gtrids.append(gtrid)
    processes = [
        subprocess.Popen(
            [twopc_executable(), "recover", "--json"],
            env=db.env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = [(p.communicate(timeout=120), p.returncode) for p in processes]
    for (out, err), code in results:
        assert code == 0, (code, out, err)
        assert "resolve it by hand" not in out + err
    done = [run_json_text(out) for (out, _), _ in results]
    committed = sorted(g for d in done for g, _ in actions(d))  # type: ignore[arg-type]
    assert committed == sorted(g for g in gtrids for _ in SIDES)  # each branch once, by one
    assert prepared(db) == NOTHING_PREPARED
    after = before
    for direction in directions:
        after = direction.moved(after)
    assert db.balances() == after
