"""A same-database transfer commits in one phase, with no vote and no log record. When its
connection is lost as the commit goes out, nobody can say whether it committed: the transfer
says so and exits 3 (in doubt), never "nothing was changed" with exit 1."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import Databases

from twopc.participants.branch import Branch
from twopc.participants.mysql_branch import MySQLBranch
from twopc.participants.postgres_branch import PostgresBranch

EXIT_IN_DOUBT = 3
BRANCHES: dict[str, type[Branch]] = {"pg": PostgresBranch, "mysql": MySQLBranch}


def lose_the_link_at_commit(monkeypatch: pytest.MonkeyPatch, side: str) -> None:
    """The connection dies just as the one-phase commit is sent (the server never answers)."""
    branch = BRANCHES[side]
    real = branch._sql_commit_one_phase

    def lost(self: Any) -> None:
        self._sql_sever()
        real(self)

    monkeypatch.setattr(branch, "_sql_commit_one_phase", lost)


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_a_one_phase_commit_whose_answer_is_lost_is_in_doubt(
    db: Databases, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    before = db.balances()
    lose_the_link_at_commit(monkeypatch, side)
    result = db.twopc("transfer", f"{side}:a1", f"{side}:a2", "1")
    assert result.returncode == EXIT_IN_DOUBT, (result.stdout, result.stderr)
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and "commit outcome unknown" in line, line
    assert "twopc balances" in line and "nothing was changed" not in line, line
    # Here the server never got the COMMIT (its link was cut first): it rolled back.
    assert db.balances() == before


def test_its_json_document_says_in_doubt(db: Databases, monkeypatch: pytest.MonkeyPatch) -> None:
    lose_the_link_at_commit(monkeypatch, "pg")
    result = db.twopc("transfer", "pg:a1", "pg:a2", "1", "--json")
    assert result.returncode == EXIT_IN_DOUBT, (result.stdout, result.stderr)
    document = json.loads(result.stdout)
    assert document["outcome"] == "in doubt" and document["exit_code"] == EXIT_IN_DOUBT
    assert "commit outcome unknown" in document["error"]
