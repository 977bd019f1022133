"""Each server's participant turns its own error codes into the typed errors, for real statements.

Every case runs a statement that fails on the real server, once inside a branch and once in a
local transaction, and expects the typed error, chained to the driver's own exception. The
layers above catch these types; none of them reads a SQLSTATE or an errno.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pymysql
import pytest
from conftest import Databases

from twopc.participants import (
    FORMAT_ID,
    ConstraintViolation,
    DatabaseURL,
    DuplicateKey,
    DuplicateObject,
    InvalidValue,
    MySQLParticipant,
    Participant,
    PermissionDenied,
    PostgresParticipant,
    StatementFailed,
    UndefinedColumn,
    UndefinedTable,
    Xid,
)

DRIVER_ERROR = {"pg": psycopg.Error, "mysql": pymysql.err.Error}


@dataclass(frozen=True)
class Case:
    statement: str
    error: type[StatementFailed]
    in_branch: bool = True  # MariaDB refuses DDL inside an XA branch (XAER_RMFAIL) whatever it is


CASES = {
    "duplicate key": Case("INSERT INTO accounts (id, balance) VALUES ('a1', 1)", DuplicateKey),
    "missing table": Case("SELECT balance FROM no_such_table", UndefinedTable),
    "missing column": Case("SELECT no_such_column FROM accounts", UndefinedColumn),
    "value out of range": Case("UPDATE accounts SET balance = 1e30 WHERE id = 'a1'", InvalidValue),
    "NOT NULL": Case("INSERT INTO accounts (id, balance) VALUES ('zz', NULL)", ConstraintViolation),
    "CHECK": Case("UPDATE accounts SET balance = -1 WHERE id = 'a1'", ConstraintViolation),
    "table exists": Case("CREATE TABLE accounts (id INTEGER)", DuplicateObject, in_branch=False),
}


def participant(db: Databases, side: str) -> Participant:
    return db.pg() if side == "pg" else db.mysql()


def run_in(participant: Participant, where: str, statement: str) -> None:
    """Run ``statement`` in a branch or a local transaction of ``participant``."""
    if where == "local transaction":
        with participant.local_transaction() as local:
            local.execute(statement)
        return
    branch = participant.begin(Xid(FORMAT_ID, "errors.0123456789abcdef", participant.name))
    try:
        branch.execute(statement)
    finally:
        branch.rollback()
        branch.close()


PLACES = [
    pytest.param(case, where, id=f"{case}-{where}")
    for case, expected in CASES.items()
    for where in ("branch", "local transaction")
    if where != "branch" or expected.in_branch
]


@pytest.mark.parametrize(("case", "where"), PLACES)
@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_each_server_raises_the_typed_error(
    db: Databases, side: str, case: str, where: str
) -> None:
    rm = participant(db, side)
    expected = CASES[case]
    with pytest.raises(StatementFailed) as raised:
        run_in(rm, where, expected.statement)
    assert type(raised.value) is expected.error, raised.value
    assert isinstance(raised.value.__cause__, DRIVER_ERROR[side])  # translated once, chained
    assert str(raised.value).startswith(f"{rm.server}: execute failed: ")
    rm.close()
    assert db.balance(side, "a1") > 0  # nothing was changed


# -- a permission refusal, from a second database user that may only read ---------------------

READER = "twopc_reader"
READER_PASSWORD = "reader-pw-1"


@pytest.fixture()
def reader_urls(db: Databases) -> Iterator[dict[str, DatabaseURL]]:
    """URLs of a user that may read ``accounts`` and do nothing else, on each server."""
    db.pg_query(f"CREATE ROLE {READER} LOGIN PASSWORD '{READER_PASSWORD}'")
    db.pg_query(f"GRANT SELECT ON accounts TO {READER}")
    db.mysql_query(f"CREATE USER '{READER}'@'127.0.0.1' IDENTIFIED BY %s", (READER_PASSWORD,))
    db.mysql_query(f"GRANT SELECT ON {db.state.mysql.database}.accounts TO '{READER}'@'127.0.0.1'")
    pg, my = db.state.pg, db.state.mysql
    try:
        yield {
            "pg": DatabaseURL.parse(
                f"postgresql://{READER}:{READER_PASSWORD}@127.0.0.1:{pg.port}/{pg.database}"
            ),
            "mysql": DatabaseURL.parse(
                f"mysql://{READER}:{READER_PASSWORD}@127.0.0.1:{my.port}/{my.database}"
            ),
        }
    finally:
        db.pg_query(f"DROP OWNED BY {READER}")
        db.pg_query(f"DROP ROLE {READER}")
        db.mysql_query(f"DROP USER '{READER}'@'127.0.0.1'")


@pytest.mark.parametrize("where", ["branch", "local transaction"])
@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_a_refused_permission_is_permission_denied(
    db: Databases, reader_urls: dict[str, DatabaseURL], side: str, where: str
) -> None:
    kind = PostgresParticipant if side == "pg" else MySQLParticipant
    reader = kind(side, reader_urls[side])
    run_in(reader, where, "SELECT balance FROM accounts WHERE id = 'a1'")  # reading is allowed
    with pytest.raises(PermissionDenied) as raised:
        run_in(reader, where, "UPDATE accounts SET balance = 0 WHERE id = 'a1'")
    assert isinstance(raised.value.__cause__, DRIVER_ERROR[side])
    reader.close()
    assert db.balance(side, "a1") > 0
