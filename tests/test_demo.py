"""``twopc demo blocking`` tells the whole story on the real servers, with measured figures."""

from __future__ import annotations

import json
from decimal import Decimal

from conftest import Databases

from twopc.bank.demo import blocking_demo
from twopc.participants import DatabaseURL, participant_for


def test_demo_blocking_narrates_kill_block_recover(db: Databases) -> None:
    result = db.twopc("demo", "blocking", "--hold", "0.5")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for step in (
        "1. Transfer pg:a1 -> mysql:a1 10.00",
        "2. kill -9",
        "3. A second transfer",
        "waiting for a row lock on pg held by in-doubt transaction",
        "5. twopc recover",
        "rolled back (no COMMIT record: presumed abort)",
        "6. The second transfer went",
        "The killed transfer left no trace",
        "(unchanged)",
    ):
        assert step in text, text
    assert db.balance("pg", "a1") == Decimal("995.00")
    assert db.balance("mysql", "a1") == Decimal("1000.00")
    assert db.balance("mysql", "a2") == Decimal("1005.00")
    assert db.pg_prepared() == [] and db.mysql_prepared() == []


def test_demo_blocking_json_figures(db: Databases) -> None:
    result = db.twopc("demo", "blocking", "--hold", "0", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["seconds_until_notice"] > 0
    assert figures["seconds_blocked"] >= figures["seconds_until_notice"]
    assert figures["total_before"] == figures["total_after"] == "20000.00"


def test_demo_drives_the_library(db: Databases) -> None:
    """The story as a library call: a coordinator process killed at a crash point through
    a hook, the second transfer's wait reported by the participants' lock-wait notice."""
    participants = [
        participant_for(name, DatabaseURL.parse(url))
        for name, url in (("pg", db.state.pg.url), ("mysql", db.state.mysql.url))
    ]
    lines: list[str] = []
    try:
        figures = blocking_demo(participants, db.home, lines.append, hold=0)
    finally:
        for participant in participants:
            participant.close()
    assert figures.total_before == figures.total_after
    assert figures.seconds_blocked >= figures.seconds_until_notice > 0
    assert figures.killed_gtrid in "\n".join(lines)
    assert any("held by in-doubt transaction " + figures.killed_gtrid in x for x in lines)
    assert db.balance("pg", "a1") == Decimal("995.00")
    assert db.balance("mysql", "a2") == Decimal("1005.00")
    assert db.pg_prepared() == [] and db.mysql_prepared() == []


def test_demo_refuses_when_something_is_already_in_doubt(db: Databases) -> None:
    crash = db.twopc("transfer", "pg:a3", "mysql:a3", "1", "--crash-at", "after-prepare")
    assert crash.returncode == -9
    result = db.twopc("demo", "blocking")
    assert result.returncode == 1
    assert "run `twopc recover` first" in result.stderr
