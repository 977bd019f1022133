"""The transfer slice end to end, through the installed ``twopc`` command, on real servers."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from conftest import OPENING, Databases


def test_cross_database_transfer_pg_to_mysql(db: Databases) -> None:
    result = db.twopc("transfer", "pg:a1", "mysql:a2", "125.50")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("committed: pg:a1 -> mysql:a2 125.50\n")
    assert "protocol: 2pc" in result.stdout
    assert db.balance("pg", "a1") == OPENING - Decimal("125.50")
    assert db.balance("mysql", "a2") == OPENING + Decimal("125.50")
    assert db.pg_prepared() == [] and db.mysql_prepared() == []


def test_cross_database_transfer_mysql_to_pg_json(db: Databases) -> None:
    document = db.twopc_json("transfer", "mysql:a3", "pg:a4", "0.01")
    assert document["outcome"] == "committed"
    assert document["protocol"] == "2pc"
    assert document["amount"] == "0.01"
    assert document["branches"] == {"mysql": "committed", "pg": "committed"}
    assert document["gtrid"].startswith("t-")
    assert db.balance("mysql", "a3") == Decimal("999.99")
    assert db.balance("pg", "a4") == Decimal("1000.01")


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_same_database_transfer_is_one_phase(db: Databases, side: str) -> None:
    document = db.twopc_json("transfer", f"{side}:a5", f"{side}:a6", "10")
    assert document["protocol"] == "one-phase"
    assert db.balance(side, "a5") == Decimal("990.00")
    assert db.balance(side, "a6") == Decimal("1010.00")


def test_whole_balance_can_move_and_totals_are_conserved(db: Databases) -> None:
    assert db.twopc("transfer", "pg:a1", "mysql:a1", "1000.00").returncode == 0
    assert db.twopc("transfer", "mysql:a1", "pg:a2", "2000").returncode == 0
    balances = db.balances()
    assert balances["pg:a1"] == 0 and balances["mysql:a1"] == 0
    assert balances["pg:a2"] == Decimal("3000.00")
    assert sum(balances.values()) == 2 * 10 * OPENING


REFUSED = [
    (["pg:a1", "mysql:a2", "1000.01"], 1, "transfer refused: insufficient funds in pg:a1"),
    (["mysql:a1", "pg:a2", "5000"], 1, "transfer refused: insufficient funds in mysql:a1"),
    (["pg:nope", "mysql:a2", "1"], 1, "transfer refused: unknown account pg:nope"),
    (["pg:a1", "mysql:nope", "1"], 1, "transfer refused: unknown account mysql:nope"),
    (["mysql:nope", "pg:a1", "1"], 1, "transfer refused: unknown account mysql:nope"),
    (["pg:a1", "pg:nope", "1"], 1, "transfer refused: unknown account pg:nope"),
    (["pg:a1", "pg:a1", "1"], 2, "source and destination are the same account (pg:a1)"),
    (["pg:a1", "mysql:a2", "1.001"], 2, "must be a positive decimal with at most 2 places"),
    (["--", "pg:a1", "mysql:a2", "-5"], 2, "must be a positive decimal"),
    (["pg:a1", "mysql:a2", "0"], 2, "must be greater than 0"),
    (["pg:a1", "mysql:a2", "0.00"], 2, "must be greater than 0"),
    (["pg:a1", "mysql:a2", "1e3"], 2, "must be a positive decimal"),
    (["pg:a1", "mysql:a2", "NaN"], 2, "must be a positive decimal"),
    (["pg:a1", "mysql:a2", "12345678901234567890"], 2, "must be a positive decimal"),
    (["oracle:a1", "mysql:a2", "1"], 2, "must look like pg:<id> or mysql:<id>"),
    (["pg:a1", "a2", "1"], 2, "must look like pg:<id> or mysql:<id>"),
    (["pg:a'1", "mysql:a2", "1"], 2, "must be 1-64 of [A-Za-z0-9_-]"),
]


@pytest.mark.parametrize(("args", "code", "message"), REFUSED)
def test_bad_transfer_changes_nothing(
    db: Databases, args: list[str], code: int, message: str
) -> None:
    before = db.balances()
    result = db.twopc("transfer", *args)
    assert result.returncode == code
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert db.balances() == before
    assert db.pg_prepared() == [] and db.mysql_prepared() == []


def test_balances_lists_accounts_and_totals(db: Databases) -> None:
    assert db.twopc("transfer", "pg:a2", "mysql:a10", "1.25").returncode == 0
    document = db.twopc_json("balances")
    assert document["accounts"]["pg"]["a2"] == "998.75"
    assert document["accounts"]["mysql"]["a10"] == "1001.25"
    assert list(document["accounts"]["pg"])[:3] == ["a1", "a2", "a3"]  # natural order
    assert document["totals"] == {"pg": "9998.75", "mysql": "10001.25"}
    assert document["overall"] == "20000.00"
    text = db.twopc("balances").stdout.splitlines()
    assert text[1].split() == ["pg:a2", "998.75"]
    assert text[-1].split() == ["total", "20000.00"]


def test_init_is_idempotent_and_reset_restores(db: Databases) -> None:
    assert db.twopc("transfer", "pg:a1", "mysql:a1", "100").returncode == 0
    first = db.twopc_json("init", "--accounts", "12", "--balance", "50")
    assert first["added"] == {"pg": 2, "mysql": 2}
    assert db.balance("pg", "a1") == Decimal("900.00")  # not wiped
    assert db.balance("pg", "a12") == Decimal("50.00")
    again = db.twopc_json("init", "--accounts", "12")
    assert again["added"] == {"pg": 0, "mysql": 0}
    reset = db.twopc_json("init", "--accounts", "3", "--reset")
    assert reset["added"] == {"pg": 3, "mysql": 3}
    assert db.balances() == {f"{s}:a{n}": OPENING for s in ("pg", "mysql") for n in (1, 2, 3)}


def test_empty_url_is_a_usage_error(db: Databases) -> None:
    result = db.twopc("--pg-url", "", "balances", TWOPC_PG_URL="")
    assert result.returncode == 2
    assert result.stderr == (
        "Error: pg URL is empty (--pg-url / TWOPC_PG_URL): give a URL, or leave it unset to "
        "use the servers of `twopc dev up`\n"
    )


def test_transfer_help_lists_crash_points(db: Databases) -> None:
    text = db.twopc("transfer", "--help").stdout
    for point in (
        "after-first-prepare",
        "after-prepare",
        "after-decision",
        "after-first-commit",
        "before-end",
    ):
        assert point in text


def test_json_output_is_one_object(db: Databases) -> None:
    result = db.twopc("transfer", "pg:a1", "mysql:a1", "3", "--json")
    assert isinstance(json.loads(result.stdout), dict)


def test_balances_of_chosen_accounts(db: Databases) -> None:
    document = db.twopc_json("balances", "pg:a2", "mysql:a3")
    assert document["accounts"] == {"pg": {"a2": "1000.00"}, "mysql": {"a3": "1000.00"}}
    assert document["overall"] == "20000.00"
    result = db.twopc("balances", "pg:zz")
    assert result.returncode == 1
    assert result.stderr == "Error: unknown account pg:zz\n"


def test_init_creates_what_the_coordinator_needs(db: Databases) -> None:
    for query in (db.pg_query, db.mysql_query):
        query("DROP TABLE IF EXISTS twopc_outcomes")
    assert db.twopc("init").returncode == 0
    for query in (db.pg_query, db.mysql_query):
        assert query("SELECT count(*) FROM twopc_outcomes") == [(0,)]
