"""Listing in-doubt branches while live coordinators finish theirs, over fakes: a live
coordinator that finishes its branches and removes its log between the listing and the lock
probe (the warning a transfer prints before it starts) or the log's inspection (`twopc
in-doubt`) is not taken for a dead one (a concurrent transfer ending was reported as an
in-doubt transaction of a dead coordinator)."""

from __future__ import annotations

from pathlib import Path

from fakes import FakeParticipant

from twopc.coordinator.facts import coordinator_home
from twopc.coordinator.listing import find_in_doubt, in_doubt_of_dead
from twopc.participants import FORMAT_ID, PreparedBranch, Xid


class FinishingMeanwhile(FakeParticipant):
    """Lists its prepared branches, then its (live) coordinator finishes ``finishing`` at
    once: the next listing no longer holds them, and their coordinator has no log left."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.finishing: set[Xid] = set()

    def prepared_branches(self) -> list[PreparedBranch]:
        listed = super().prepared_branches()
        for xid in self.finishing:
            self.prepared.discard(xid)
        self.finishing = set()
        return listed


ENDED = Xid(FORMAT_ID, f"ended.{'ab' * 10}", "pg")
DEAD = Xid(FORMAT_ID, f"dead.{'cd' * 10}", "pg")


def ending_meanwhile() -> FinishingMeanwhile:
    """A server holding a dead coordinator's branch and one that a live coordinator finishes
    (removing its log) right after the first listing."""
    rm = FinishingMeanwhile("pg")
    rm.prepared |= {ENDED, DEAD}
    rm.finishing = {ENDED}
    return rm


def counting_listings(rm: FinishingMeanwhile) -> list[int]:
    """Counts ``rm``'s listings (one entry each) in the returned list."""
    calls: list[int] = []
    listing = rm.prepared_branches

    def counted() -> list[PreparedBranch]:
        calls.append(1)
        return listing()

    rm.prepared_branches = counted  # type: ignore[method-assign]
    return calls


def test_a_coordinator_that_finished_meanwhile_is_not_dead(tmp_path: Path) -> None:
    assert in_doubt_of_dead([ending_meanwhile()], tmp_path) == {DEAD.gtrid}


def test_nothing_in_doubt_needs_one_listing(tmp_path: Path) -> None:
    rm = FinishingMeanwhile("pg")
    calls = counting_listings(rm)
    assert in_doubt_of_dead([rm], tmp_path) == set()
    assert len(calls) == 1


def test_in_doubt_leaves_out_a_branch_finished_while_its_log_was_read(tmp_path: Path) -> None:
    # `twopc in-doubt`: the branch of a coordinator that ended (and removed its log) between
    # the listing and the log's inspection was shown once as one with no log, abort presumed.
    report = find_in_doubt([ending_meanwhile()], tmp_path)
    assert [(b.gtrid, b.coordinator_alive) for b in report.branches] == [(DEAD.gtrid, None)]


def test_in_doubt_of_live_coordinators_needs_one_listing(tmp_path: Path) -> None:
    rm = FinishingMeanwhile("pg")
    live = Xid(FORMAT_ID, f"live.{'ef' * 10}", "pg")
    rm.prepared.add(live)
    calls = counting_listings(rm)
    with coordinator_home(tmp_path).open("live"):
        report = find_in_doubt([rm], tmp_path)
    assert [(b.gtrid, b.coordinator_alive) for b in report.branches] == [(live.gtrid, True)]
    assert len(calls) == 1
