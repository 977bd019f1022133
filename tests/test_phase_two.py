"""Phase 2 never leaves a decided transaction unreported: protocol tests with fake participants.

Once the COMMIT record is forced, any error from a branch — a statement error, "busy", a lost
link, a bug, a server that stops answering — ends either in a commit (retried from a fresh
connection) or as InDoubt naming the unfinished branches; the other branches are still driven
to their end, the log keeps the decision without an END, and close() never hangs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fakes import FakeParticipant, hanging, raising, unavailable

from twopc.coordinator import (
    Coordinator,
    CoordinatorConfig,
    InDoubt,
    RetryPolicy,
    TransactionAborted,
    TxState,
)
from twopc.participants import BranchBusy, StatementFailed
from twopc.txlog import read_log

QUICK = RetryPolicy(initial_interval=0.01, maximum_interval=0.05, deadline=0.3)

ERRORS = {
    "statement error": StatementFailed("b: commit prepared failed: XAER_RMFAIL", code="1399"),
    "busy": BranchBusy("b: branch is prepared but held by a live session"),
    "lost link": unavailable("b"),
    "a bug": RuntimeError("a bug in phase 2"),
}


def two_fakes() -> tuple[FakeParticipant, FakeParticipant]:
    return FakeParticipant("a"), FakeParticipant("b")


def run(home: Path, a: FakeParticipant, b: FakeParticipant, **config: object):  # type: ignore[no-untyped-def]
    """Open a coordinator over the fakes and commit one transaction touching both."""
    settings = CoordinatorConfig(
        home,
        coordinator_id="fake",
        retry=QUICK,
        phase_two_grace=0.5,
        close_patience=0.5,
        **config,  # type: ignore[arg-type]
    )
    coordinator = Coordinator.open([a, b], settings)
    tx = coordinator.begin()
    tx["a"].execute("UPDATE")
    tx["b"].execute("UPDATE")
    return coordinator, tx


def kinds(home: Path) -> list[str]:
    return [r.kind for r in read_log(home / "txlog" / "fake").records]


@pytest.mark.parametrize("kind", ERRORS)
def test_an_error_once_is_retried_from_a_fresh_connection(tmp_path: Path, kind: str) -> None:
    a, b = two_fakes()
    b.faults["commit"] = raising(ERRORS[kind], times=1)
    coordinator, tx = run(tmp_path, a, b)
    with coordinator:
        outcome = tx.commit()
        tx.close()
    assert outcome.state is TxState.COMMITTED
    assert outcome.branches == {"a": "committed", "b": "committed"}
    assert a.committed and b.committed and not (a.prepared or b.prepared)
    assert b.calls["finish"] == 1  # the retry came from a new connection
    assert kinds(tmp_path) == ["COMMIT", "END"]


@pytest.mark.parametrize("kind", ERRORS)
def test_an_error_that_persists_ends_in_doubt_naming_the_branch(tmp_path: Path, kind: str) -> None:
    a, b = two_fakes()
    b.faults["commit"] = raising(ERRORS[kind])
    b.faults["finish"] = raising(ERRORS[kind] if kind != "a bug" else unavailable("b"))
    coordinator, tx = run(tmp_path, a, b)
    with coordinator:
        with pytest.raises(InDoubt) as in_doubt:
            tx.commit()
        tx.close()
        assert in_doubt.value.unfinished == ("b",)
        assert tx.state is TxState.IN_DOUBT
        assert coordinator.unsettled() == [tx]
    assert a.committed and not a.prepared  # the other branch was driven to its end
    assert b.prepared and not b.committed  # still prepared, for recovery
    assert kinds(tmp_path) == ["COMMIT"]  # the decision stays, with no END


def test_a_bug_while_retrying_still_ends_in_doubt(tmp_path: Path) -> None:
    a, b = two_fakes()
    b.faults["commit"] = raising(unavailable("b"))
    b.faults["finish"] = raising(RuntimeError("a bug in the retry"))
    coordinator, tx = run(tmp_path, a, b)
    with coordinator, pytest.raises(InDoubt):
        tx.commit()
    assert a.committed and b.prepared


def test_a_server_that_stops_answering_in_phase_two_is_cut_off_at_the_deadline(
    tmp_path: Path,
) -> None:
    """The branch's commit blocks (a frozen server). Past the retry deadline and the grace,
    phase 2 cancels and severs it and reports in doubt; close() returns."""
    a, b = two_fakes()
    b.faults["commit"] = hanging(b.severed, then=unavailable("b"))
    b.faults["finish"] = hanging(threading.Event())  # fresh connections hang too
    coordinator, tx = run(tmp_path, a, b)
    with pytest.raises(InDoubt) as in_doubt:
        tx.commit()
    assert in_doubt.value.unfinished == ("b",)
    assert b.severed.is_set()
    assert a.committed
    coordinator.close()  # must not wait for the worker still hanging in "finish"
    assert kinds(tmp_path) == ["COMMIT"]


def test_close_leaves_a_worker_stuck_in_a_hung_call(tmp_path: Path) -> None:
    """Even severing does not free the worker (the call ignores it): close() still returns."""
    a, b = two_fakes()
    stuck = threading.Event()
    b.faults["commit"] = hanging(stuck)
    coordinator, tx = run(tmp_path, a, b)
    with pytest.raises(InDoubt):
        tx.commit()
    tx.close()
    coordinator.close()
    stuck.set()  # let the worker go (the test process should not keep it)
    assert kinds(tmp_path) == ["COMMIT"]


@pytest.mark.parametrize("kind", ERRORS)
def test_rollback_after_a_no_vote_never_raises_anything_else(tmp_path: Path, kind: str) -> None:
    """a prepares; b votes NO; a's rollback fails with ``kind``: the transaction is still
    aborted (TransactionAborted, naming a as unconfirmed), and the log stays for recovery."""
    a, b = two_fakes()
    b.faults["prepare"] = raising(StatementFailed("b: prepare refused"))
    a.faults["rollback"] = raising(ERRORS[kind])
    a.faults["finish"] = raising(unavailable("a"))
    coordinator, tx = run(tmp_path, a, b)
    with coordinator:
        with pytest.raises(TransactionAborted) as aborted:
            tx.commit()
        assert aborted.value.leftover == ("a",)
        assert coordinator.unsettled() == [tx]
    assert a.prepared  # recovery presumes abort for it: the log is kept
    assert (tmp_path / "txlog" / "fake").is_dir()
    assert kinds(tmp_path) == []
