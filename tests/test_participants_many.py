"""Global transactions over any number of named participants, several on one server.

Four branches — two PostgreSQL databases (``pg``: twopc, ``pg-a``: twopc_a) and two MariaDB
databases (``mysql``: twopc, ``mysql-a``: twopc_a) — through each crash point, killed with
SIGKILL by the protocol hook as ``twopc transfer --crash-at`` is, then ``twopc recover``
over the four configured participants. MariaDB's ``XA RECOVER`` is server-wide, so two
participants on one server see each other's branches there: each must list (and so finish)
only its own. The truth is read from the servers themselves: ``pg_prepared_xacts`` (every
database) and ``XA RECOVER`` (the whole server), the rows each branch changed, and the log.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from conftest import Databases

from twopc.participants import FORMAT_ID, DatabaseURL, Participant, Xid, participant_for
from twopc.txlog import read_log

FOUR = ("pg", "pg-a", "mysql", "mysql-a")  # enlisted in this order: pg is the first branch
DATABASES = {"pg": "twopc", "pg-a": "twopc_a", "mysql": "twopc", "mysql-a": "twopc_a"}

# What a transaction of ours does in each branch: one row per database, counted up.
_RESET = (
    "DROP TABLE IF EXISTS many_rows",
    "CREATE TABLE many_rows (id VARCHAR(16) PRIMARY KEY, n INTEGER NOT NULL)",
    "INSERT INTO many_rows (id, n) VALUES ('r1', 0)",
)

# A coordinator of the four, run as its own process so that the hook's SIGKILL kills it.
_COORDINATOR = """
import sys
from pathlib import Path
from twopc.coordinator import Coordinator, CoordinatorConfig, CrashPoint, KillAt
from twopc.participants import DatabaseURL, participant_for

home, coordinator_id, point, *pairs = sys.argv[1:]
participants = [
    participant_for(name, DatabaseURL.parse(url))
    for name, _, url in (pair.partition("=") for pair in pairs)
]
hooks = None if point == "none" else KillAt(CrashPoint(point))
config = CoordinatorConfig(Path(home), coordinator_id, hooks=hooks)
with Coordinator.open(participants, config) as coordinator:
    with coordinator.transaction() as tx:
        for participant in participants:
            tx[participant.name].execute("UPDATE many_rows SET n = n + 1 WHERE id = 'r1'")
print(tx.gtrid)
"""


@dataclass(frozen=True)
class Expected:
    """What a kill at one point leaves: the first branch's state, the others', the log."""

    first: str  # "active" (never prepared: gone with the process), "prepared", "committed"
    others: str
    commit_logged: bool


EXPECTED = {
    "after-first-prepare": Expected("prepared", "active", commit_logged=False),
    "after-prepare": Expected("prepared", "prepared", commit_logged=False),
    "after-decision": Expected("prepared", "prepared", commit_logged=True),
    "after-first-commit": Expected("committed", "prepared", commit_logged=True),
    "before-end": Expected("committed", "committed", commit_logged=True),
}


class Many:
    """The test servers' databases as named participants, with what each server holds."""

    def __init__(self, db: Databases) -> None:
        self.db = db
        self.urls = {
            "pg": db.pg_url,
            "mysql": db.mysql_url,
            **{name: db.state.pg.url_of(DATABASES[name]) for name in ("pg-a",)},
            **{name: db.state.mysql.url_of(DATABASES[name]) for name in ("mysql-a",)},
        }

    def kind(self, name: str) -> str:
        return "pg" if name.startswith("pg") else "mysql"

    def query(self, name: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` on participant ``name``'s database, autocommit."""
        if self.kind(name) == "pg":
            with psycopg.connect(self.urls[name], autocommit=True) as conn:
                cursor = conn.execute(sql, params)  # type: ignore[arg-type]
                return cursor.fetchall() if cursor.description else []
        info = self.db.state.mysql
        conn = pymysql.connect(
            host=info.host, port=info.port, user=info.user, database=DATABASES[name],
            autocommit=True,
        )  # fmt: skip
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
        finally:
            conn.close()

    def reset(self, names: Sequence[str] = FOUR) -> None:
        """Fresh ``many_rows`` in each database, and no outcome markers of other tests."""
        for name in names:
            for statement in _RESET:
                self.query(name, statement)
            self.participant(name).ensure_outcome_table()
            self.query(name, "DELETE FROM twopc_outcomes")

    def counts(self, names: Sequence[str] = FOUR) -> dict[str, int]:
        return {
            n: int(self.query(n, "SELECT n FROM many_rows WHERE id = 'r1'")[0][0]) for n in names
        }

    def participant(self, name: str) -> Participant:
        return participant_for(name, DatabaseURL.parse(self.urls[name]), lock_wait=5)

    def pairs(self, names: Sequence[str]) -> list[str]:
        return [f"{name}={self.urls[name]}" for name in names]

    def env(self, names: Sequence[str] = FOUR) -> dict[str, str]:
        """The CLI's configuration of ``names`` (pg and mysql come from the fixture's URLs)."""
        extra = [pair for pair in self.pairs(names) if pair.split("=")[0] not in ("pg", "mysql")]
        return {"TWOPC_PARTICIPANTS": " ".join(extra)}

    def run_coordinator(
        self, coordinator_id: str, point: str, names: Sequence[str] = FOUR
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", _COORDINATOR, str(self.db.home), coordinator_id, point]
        return subprocess.run(
            [*argv, *self.pairs(names)], text=True, capture_output=True, timeout=120, check=False
        )

    # -- what the servers hold prepared, read from the servers themselves ---------------------

    def server_prepared(self) -> list[tuple[str, str, Xid | None]]:
        """Every prepared transaction on both servers: (server, where, xid). PostgreSQL says
        the database; MariaDB's XA RECOVER does not (``where`` is "?")."""
        found = [
            ("pg", database, Xid.from_pg_gid(gid))
            for gid, database in self.db.pg_query("SELECT gid, database FROM pg_prepared_xacts")
        ]
        for fmt, glen, blen, data in self.db.mysql_query("XA RECOVER"):
            found.append(
                ("mysql", "?", Xid.from_mysql_recover(int(fmt), int(glen), int(blen), data))
            )
        return sorted(found, key=str)

    def listed(self, names: Sequence[str] = FOUR) -> dict[str, list[Xid | None]]:
        """What each participant lists as prepared."""
        listing = {}
        for name in names:
            participant = self.participant(name)
            try:
                listing[name] = [b.xid for b in participant.prepared_branches()]
            finally:
                participant.close()
        return listing


@pytest.fixture()
def many(db: Databases) -> Iterator[Many]:
    handle = Many(db)
    handle.reset()
    yield handle


def twopc_json(many: Many, *args: str, code: int = 0, names: Sequence[str] = FOUR) -> Any:
    result = many.db.twopc(*args, "--json", **many.env(names))
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


def expected_states(expect: Expected, names: Sequence[str] = FOUR) -> dict[str, str]:
    return {name: expect.first if n == 0 else expect.others for n, name in enumerate(names)}


def gtrid_of(many: Many, coordinator_id: str) -> str | None:
    found = {x.gtrid for _, _, x in many.server_prepared() if x is not None}
    records = read_log(many.db.home / "txlog" / coordinator_id).records
    found |= {record.txid for record in records}
    assert len(found) <= 1, found
    return next(iter(found), None)


# -- four branches on two servers, through every crash point ---------------------------------


@pytest.mark.parametrize("point", list(EXPECTED))
def test_four_branches_through_each_crash_point_then_recover(many: Many, point: str) -> None:
    expect = EXPECTED[point]
    coordinator_id = f"four-{point}"
    killed = many.run_coordinator(coordinator_id, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    gtrid = gtrid_of(many, coordinator_id)
    states = expected_states(expect)
    if (
        point == "after-first-prepare"
        or expect.first != "committed"
        or expect.others == "committed"
    ):
        assert gtrid is not None or not expect.commit_logged

    # The servers: exactly the prepared branches this point leaves, each in its database.
    prepared = {n for n, s in states.items() if s == "prepared"}
    assert gtrid is not None or not prepared
    want = sorted(
        (
            (
                many.kind(n),
                DATABASES[n] if many.kind(n) == "pg" else "?",
                Xid(FORMAT_ID, str(gtrid), n),
            )
            for n in prepared
        ),
        key=str,
    )
    assert many.server_prepared() == want
    # Each participant lists only its own branch, though MariaDB shows both to everyone.
    assert many.listed() == {
        n: [Xid(FORMAT_ID, str(gtrid), n)] if n in prepared else [] for n in FOUR
    }
    assert many.counts() == {n: int(s == "committed") for n, s in states.items()}

    # The log: COMMIT with the four branches once decided, never END.
    contents = read_log(many.db.home / "txlog" / coordinator_id)
    kinds = [(r.kind, r.txid) for r in contents.records]
    assert kinds == ([("COMMIT", gtrid)] if expect.commit_logged else [])
    if expect.commit_logged:
        branches = contents.records[0].body["branches"]
        assert sorted((b["name"], b["bqual"]) for b in branches) == sorted((n, n) for n in FOUR)

    # The in-doubt listing names each prepared branch once, by its participant.
    listing = twopc_json(many, "in-doubt")
    assert sorted((b["gtrid"], b["server"]) for b in listing) == sorted(
        (gtrid, n) for n in prepared
    )
    decision = "commit" if expect.commit_logged else "none"
    assert {b["decision"] for b in listing} <= {decision}

    # Recovery finishes every branch through its own participant, and the log goes.
    report = twopc_json(many, "recover")
    action = "committed" if expect.commit_logged else "rolled back"
    assert sorted((r["gtrid"], r["server"], r["action"]) for r in report["resolutions"]) == (
        sorted((gtrid, n, action) for n in prepared)
    )
    assert report["removed_logs"] == [coordinator_id]
    assert many.server_prepared() == []
    assert many.counts() == {n: int(expect.commit_logged) for n in FOUR}
    assert twopc_json(many, "in-doubt") == []
    audit = twopc_json(many, "audit")
    assert audit["atomic"] is True, audit


def test_four_branches_commit_with_two_phase_commit(many: Many) -> None:
    done = many.run_coordinator("four-happy", "none")
    assert done.returncode == 0, done.stderr
    gtrid = done.stdout.strip()
    assert gtrid.startswith("four-happy.")
    assert many.counts() == dict.fromkeys(FOUR, 1)
    assert many.server_prepared() == []
    # A coordinator with a stable id keeps its log, with nothing left unfinished in it.
    assert read_log(many.db.home / "txlog" / "four-happy").unfinished() == {}


# -- two branches on one server ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "action"), [("after-decision", "committed"), ("after-prepare", "rolled back")]
)
def test_two_branches_on_one_mariadb_server(many: Many, point: str, action: str) -> None:
    """mysql (twopc) and mysql-a (twopc_a): one gtrid, two bquals, one XA RECOVER list."""
    pair = ("mysql", "mysql-a")
    killed = many.run_coordinator(f"pair-{point}", point, pair)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    gtrid = gtrid_of(many, f"pair-{point}")
    assert gtrid is not None
    ours = [Xid(FORMAT_ID, gtrid, "mysql"), Xid(FORMAT_ID, gtrid, "mysql-a")]
    assert many.server_prepared() == sorted((("mysql", "?", x) for x in ours), key=str)
    assert many.listed(pair) == {"mysql": [ours[0]], "mysql-a": [ours[1]]}

    # Configured with mysql only, recovery leaves mysql-a's branch alone (it cannot know
    # which database it wrote to) and keeps the log for a recovery that has it: without a
    # log, that branch would be an orphan whose decision nobody could presume.
    alone = many.db.twopc("recover", "--json", TWOPC_PARTICIPANTS="")
    assert alone.returncode in (0, 3), alone.stderr
    assert [(r["server"], r["action"]) for r in json.loads(alone.stdout)["resolutions"]] == [
        ("mysql", action)
    ]
    assert many.server_prepared() == [("mysql", "?", ours[1])]
    assert (many.db.home / "txlog" / f"pair-{point}").is_dir()
    if action == "rolled back":  # nothing unfinished in the log: said why it stays
        assert any("its log is kept" in p for p in json.loads(alone.stdout)["problems"])

    report = twopc_json(many, "recover", names=pair)
    assert [(r["server"], r["action"]) for r in report["resolutions"]] == [("mysql-a", action)]
    assert many.server_prepared() == []
    assert many.counts(pair) == dict.fromkeys(pair, int(action == "committed"))
    assert not (many.db.home / "txlog" / f"pair-{point}").exists()


def test_two_branches_on_one_postgresql_server(many: Many) -> None:
    pair = ("pg", "pg-a")
    killed = many.run_coordinator("pg-pair", "after-decision", pair)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    gtrid = gtrid_of(many, "pg-pair")
    assert gtrid is not None
    assert many.server_prepared() == [
        ("pg", "twopc", Xid(FORMAT_ID, gtrid, "pg")),
        ("pg", "twopc_a", Xid(FORMAT_ID, gtrid, "pg-a")),
    ]
    assert many.listed(pair) == {
        "pg": [Xid(FORMAT_ID, gtrid, "pg")],
        "pg-a": [Xid(FORMAT_ID, gtrid, "pg-a")],
    }
    report = twopc_json(many, "recover", names=pair)
    assert sorted((r["server"], r["action"]) for r in report["resolutions"]) == [
        ("pg", "committed"),
        ("pg-a", "committed"),
    ]
    assert many.counts(pair) == {"pg": 1, "pg-a": 1} and many.server_prepared() == []


# -- what an in-doubt branch blocks, over many participants ------------------------------------


class Writer(threading.Thread):
    """Another session updating ``many_rows`` in one database: it waits for the in-doubt
    branch's row lock until recovery frees it."""

    def __init__(self, many: Many, name: str) -> None:
        super().__init__(daemon=True)
        self.many, self.participant_name = many, name
        self.error: BaseException | None = None

    def run(self) -> None:
        participant = self.many.participant(self.participant_name)
        try:
            with participant.local_transaction() as local:
                local.execute("UPDATE many_rows SET n = n + 10 WHERE id = 'r1'")
        except BaseException as err:  # reported by the test
            self.error = err
        finally:
            participant.close()


def test_in_doubt_shows_what_each_branch_blocks(many: Many) -> None:
    killed = many.run_coordinator("blocking", "after-decision")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    writers = [Writer(many, name) for name in ("pg-a", "mysql-a")]
    for writer in writers:
        writer.start()

    deadline = time.monotonic() + 15
    while True:
        listing = twopc_json(many, "in-doubt")
        blocking = {b["server"]: len(b["blocking"]) for b in listing}
        if (blocking.get("pg-a") and blocking.get("mysql-a")) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    # One entry per branch, and each wait under the branch it waits for, once.
    assert sorted(blocking) == sorted(FOUR)
    assert blocking == {"pg": 0, "pg-a": 1, "mysql": 0, "mysql-a": 1}
    text = many.db.twopc("in-doubt", **many.env())
    assert text.returncode == 0
    assert sum("blocks session" in line for line in text.stdout.splitlines()) == 2
    assert any(
        line.split()[1] == "mysql-a" for line in text.stdout.splitlines() if "coordinator" in line
    )

    twopc_json(many, "recover")
    for writer in writers:
        writer.join(timeout=30)
        assert not writer.is_alive() and writer.error is None, writer.error
    assert many.counts() == {"pg": 1, "pg-a": 11, "mysql": 1, "mysql-a": 11}


def test_the_dev_servers_hold_the_extra_databases(db: Databases) -> None:
    """`twopc dev up` made them: the flight booking's and the many-branch tests'."""
    pg = {name for (name,) in db.pg_query("SELECT datname FROM pg_database")}
    mysql = {name for (name,) in db.mysql_query("SHOW DATABASES")}
    assert {"twopc", "flights", "payments", "twopc_a", "twopc_b"} <= pg
    assert {"twopc", "bookings", "twopc_a", "twopc_b"} <= mysql
    assert set(db.state.participants()) == {
        "flights", "payments", "pg-a", "pg-b", "bookings", "mysql-a", "mysql-b",
    }  # fmt: skip


def test_a_participant_name_must_be_a_bqual(db: Databases) -> None:
    url = DatabaseURL.parse(db.pg_url)
    for bad in ("", "a b", "x" * 65):
        with pytest.raises(ValueError, match="bqual"):
            participant_for(bad, url)
    assert Path(db.pg_url).name == "twopc"
