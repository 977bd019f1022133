"""No call on a participant's connection waits forever for a server that stopped answering.

Each server is frozen (SIGSTOP) while a connection to it is open; the next call on that
connection must fail as ParticipantUnavailable once ``lock_wait + io_timeout`` has passed,
instead of hanging until the server resumes. (The pytest timeout turns a hang into a failure.)
"""

from __future__ import annotations

import pytest
from conftest import Databases
from faultkit import frozen

from twopc.participants import (
    FORMAT_ID,
    DatabaseURL,
    MySQLParticipant,
    ParticipantUnavailable,
    PostgresParticipant,
    Xid,
)
from twopc.participants.base import Participant


def participant(db: Databases, side: str) -> Participant:
    url = DatabaseURL.parse(db.pg_url if side == "pg" else db.mysql_url)
    kind = PostgresParticipant if side == "pg" else MySQLParticipant
    return kind(side, url, lock_wait=1, io_timeout=1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_a_statement_on_a_frozen_server_fails_at_the_limit(db: Databases, side: str) -> None:
    rm = participant(db, side)
    assert rm.statement_limit == 2
    branch = rm.begin(Xid(FORMAT_ID, "bounds.00000000000000000001", side))
    branch.execute("SELECT balance FROM accounts WHERE id = %s", ("a1",))
    with frozen(db, side), pytest.raises(ParticipantUnavailable):
        branch.execute("SELECT balance FROM accounts WHERE id = %s", ("a2",))
    branch.close()  # its connection is closed, never given back for reuse
    rm.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_recovery_reads_of_a_frozen_server_fail_at_the_limit(db: Databases, side: str) -> None:
    """The listing recovery starts with: a connect that completes (the kernel accepts) then
    a query that would never be answered."""
    rm = participant(db, side)
    with frozen(db, side), pytest.raises(ParticipantUnavailable):
        rm.prepared_branches()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 1e308])
def test_limits_must_be_positive_and_finite(db: Databases, bad: float) -> None:
    url = DatabaseURL.parse(db.pg_url)
    with pytest.raises(ValueError):
        PostgresParticipant("pg", url, io_timeout=bad)
    with pytest.raises(ValueError):
        PostgresParticipant("pg", url, lock_wait=bad)
