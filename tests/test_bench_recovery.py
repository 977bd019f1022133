"""``twopc bench recovery`` on the real servers, small: in-doubt transactions of dead
coordinators are made, a transfer blocks on one of them (on either server), and recovery
finishes every branch, the transfer going through once its row is freed."""

from __future__ import annotations

from decimal import Decimal

import pytest
from conftest import Databases

from twopc.benchmarks.bench_recovery import run_recovery_benchmark

NOTHING_PREPARED: dict[str, list[object]] = {"pg": [], "mysql": []}


@pytest.mark.parametrize("blocked_on", ["pg", "mysql"])
def test_recovery_frees_the_row_a_transfer_waits_for(db: Databases, blocked_on: str) -> None:
    before = db.balances()
    participants = [db.pg(), db.mysql()]
    for participant in participants:
        participant.ensure_outcome_table()  # as any coordinator's start (and `twopc init`)
    try:
        result = run_recovery_benchmark(
            participants, db.home, in_doubt=6, coordinators=3, blocked_on=blocked_on
        )
    finally:
        for participant in participants:
            participant.close()
    assert result["branches"] == 12 and result["left_in_doubt"] == 0, result
    assert result["problems"] == [] and result["blocked_on"] == blocked_on
    done = result["blocked_transfer_done_s"]
    assert isinstance(done, float) and done > 0, done  # not an error, not still waiting
    assert {"pg": db.pg_prepared(), "mysql": db.mysql_prepared()} == NOTHING_PREPARED
    after = db.balances()
    assert after["pg:a1"] == before["pg:a1"] - Decimal("0.01")
    assert after["mysql:a1"] == before["mysql:a1"] + Decimal("0.01")


def test_the_blocked_server_must_be_one_of_the_two(db: Databases) -> None:
    with pytest.raises(ValueError, match="blocked_on must be one of pg, mysql"):
        run_recovery_benchmark([], db.home, in_doubt=1, blocked_on="oracle")
