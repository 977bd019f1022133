"""Fault scenario 4: the server ends the coordinator's connections in each phase.

Transfers are held at every protocol point at once (phase 1 under way, all prepared, the
decision logged, phase 2 under way, two saga points), each on an account pair of its own.
While they are held, one server ends every client session but ours
(``pg_terminate_backend`` / MariaDB ``KILL``): the open branches, the prepared ones' old
sessions, the idle pooled connections. Then they carry on.

Before the decision a transfer may still commit or abort (exit 0 or 1). From the decision
on, the server is up and a prepared branch survives its session, so phase 2 reconnects
and finishes: exit 0. A saga's steps are local transactions on fresh connections: it
completes (exit 0). Then ``twopc recover`` and every invariant of :mod:`faultkit`.
"""

from __future__ import annotations

import pytest
from conftest import Databases
from faultkit import (
    BEFORE_DECISION,
    EVERY_POINT,
    EXIT_FAILED,
    EXIT_OK,
    Move,
    hold_at_every_point,
    kill_sessions,
    record,
    report,
)


def exits(move: Move, point: str) -> set[int]:
    if move.mode == "2pc" and point in BEFORE_DECISION:
        return {EXIT_OK, EXIT_FAILED}
    return {EXIT_OK}


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_server_ends_the_coordinators_sessions_at_every_point(db: Databases, side: str) -> None:
    killed: list[int] = []
    problems = hold_at_every_point(
        db, lambda: killed.extend(kill_sessions(db, side)), f"{side} sessions killed", exits
    )
    if not killed:
        problems.append(f"no {side} session of the held transfers was found to kill")
    record(
        "connections killed by the server",
        problems,
        connection_kills=len(killed),
        transfers=len(EVERY_POINT),
    )
    assert not problems, report(problems)
