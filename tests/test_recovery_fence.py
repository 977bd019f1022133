"""Recovery against a dead coordinator's requests that a server still runs, over fakes.

A request carrying a branch's prepare runs to its end on the server after its client died
(a statement waiting for a row lock does not notice). Recovery stops such requests of the
coordinators it judges, looks again for branches prepared meanwhile, and keeps a log while
anything of its coordinator is still prepared: a log removed too early leaves an orphan no
recovery can decide. The servers' side (finding and killing the sessions) is tested on real
servers in ``test_recovery.py``; these are the rules, without servers.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest
from fakes import FakeParticipant, raising, unavailable

from twopc.coordinator import recovery as recovery_module
from twopc.coordinator.acting import RecoveryReport, act_together
from twopc.coordinator.decisions import BranchFacts, Logged
from twopc.coordinator.facts import Prepared, coordinator_home, coordinator_logs
from twopc.coordinator.recovery import recover, recover_own
from twopc.participants import FORMAT_ID, PreparedBranch, Xid

DEAD = "dead"
GTRID = f"{DEAD}.{'ab' * 10}"


class Fenced(FakeParticipant):
    """A fake whose server may still run requests: ``running`` are the gtrids it would stop;
    ``arrives`` is a branch a request prepares between recovery's listing and its fence
    (too late to be stopped, too early to be seen by that listing)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.asked: list[list[str]] = []
        self.running: set[str] = set()
        self.arrives: Xid | None = None
        self.refuses = False

    def stop_requests(self, prefixes: Collection[str]) -> set[str]:
        self.asked.append(sorted(prefixes))
        if self.refuses:
            raise unavailable(self.name)
        if self.arrives is not None:
            self.prepared.add(self.arrives)
            self.arrives = None
        stopped = {g for g in self.running if g.startswith(tuple(prefixes))}
        self.running -= stopped
        return stopped


def dead_log(home: Path, coordinator: str = DEAD) -> None:
    """A coordinator that died without a decision: its log exists, unlocked, empty."""
    coordinator_home(home).open(coordinator).close()


def branch(participant: FakeParticipant, gtrid: str = GTRID) -> Xid:
    return Xid(FORMAT_ID, gtrid, participant.name)


def test_a_running_request_of_a_dead_coordinator_is_stopped_before_its_log_goes(
    tmp_path: Path,
) -> None:
    a = Fenced("a")
    a.running = {GTRID, "alive.0123456789abcdef0123"}
    dead_log(tmp_path)
    report = recover([a], tmp_path)
    assert a.asked == [[f"{DEAD}."]]  # only the dead coordinator's requests
    assert report.stopped_requests == [GTRID]
    assert a.running == {"alive.0123456789abcdef0123"}
    assert report.removed_logs == [DEAD] and not report.in_doubt_remains


def test_a_branch_prepared_after_the_listing_is_rolled_back_in_the_same_pass(
    tmp_path: Path,
) -> None:
    a = Fenced("a")
    late = branch(a)
    a.arrives = late
    dead_log(tmp_path)
    report = recover([a], tmp_path)
    assert [(r.gtrid, r.participant, r.action) for r in report.resolutions] == [
        (GTRID, "a", "rolled back")
    ]
    assert a.prepared == set() and a.rolled_back == {late}
    assert report.removed_logs == [DEAD] and not report.in_doubt_remains


def test_a_server_that_cannot_be_asked_to_stop_requests_keeps_the_logs(tmp_path: Path) -> None:
    a = Fenced("a")
    a.refuses = True
    dead_log(tmp_path)
    report = recover([a], tmp_path)
    assert report.removed_logs == [] and DEAD in coordinator_logs(tmp_path)
    assert report.in_doubt_remains
    assert any("still running" in p for p in report.problems), report.problems


def test_a_branch_recovery_could_not_finish_keeps_its_coordinators_log(tmp_path: Path) -> None:
    a = Fenced("a")
    stuck = branch(a)
    a.prepared.add(stuck)
    a.faults["finish"] = raising(unavailable("a"))
    dead_log(tmp_path)
    report = recover([a], tmp_path)
    assert a.prepared == {stuck}
    assert report.removed_logs == [] and DEAD in coordinator_logs(tmp_path)
    assert report.in_doubt_remains

    del a.faults["finish"]  # the next recovery can: presumed abort, and the log goes
    again = recover([a], tmp_path)
    assert a.rolled_back == {stuck} and again.removed_logs == [DEAD]


def test_a_restarting_coordinator_stops_its_previous_runs_requests_first(tmp_path: Path) -> None:
    a = Fenced("a")
    a.running = {GTRID}
    txlog = coordinator_home(tmp_path).open(DEAD)
    try:
        report = recover_own(txlog, DEAD, [a])
    finally:
        txlog.close()
    assert a.asked == [[f"{DEAD}."]] and report.stopped_requests == [GTRID]


def test_recover_says_which_requests_it_stopped(tmp_path: Path) -> None:
    from twopc.commands.recovery import _recovery_text

    a = Fenced("a")
    a.running = {GTRID}
    dead_log(tmp_path)
    lines = _recovery_text(recover([a], tmp_path)).splitlines()
    assert lines[0].startswith(f"{GTRID}  request stopped: its coordinator is dead"), lines


def test_coordinators_others_wait_on_are_recovered_first_by_themselves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recovery_module, "LOGS_AT_ONCE", 2)
    chunks = recovery_module._chunks
    coordinators = ["a", "b", "c", "d", "e", "f"]
    assert chunks(coordinators, {"e"}, set()) == [["e"], ["a", "b"], ["c", "d"], ["f"]]
    assert chunks(coordinators, {"a", "c", "f"}, set()) == [["a", "c"], ["f"], ["b", "d"], ["e"]]
    assert chunks(coordinators, set(), set()) == [["a", "b"], ["c", "d"], ["e", "f"]]
    # A dead coordinator whose request waits on another's branch is fenced no later than the
    # branch's row is freed: its chunk comes first.
    assert chunks(coordinators, {"a", "e"}, {"d", None}) == [["d", "a"], ["e"], ["b", "c"], ["f"]]
    monkeypatch.setattr(recovery_module, "LOGS_AT_ONCE", 1)
    assert chunks(coordinators, {"a"}, {"f"})[:2] == [["f"], ["a"]]


def test_branches_are_finished_in_batches_of_one_server_and_one_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recovery_module, "BRANCHES_PER_REQUEST", 2)
    pg, mysql = FakeParticipant("pg"), FakeParticipant("mysql")
    commit = BranchFacts(Logged.COMMIT, alive=False, evidence=False)
    abort = BranchFacts(Logged.NONE, alive=False, evidence=False)

    def plan(rm: FakeParticipant, n: int, facts: BranchFacts) -> tuple[Prepared, BranchFacts]:
        xid = Xid(FORMAT_ID, f"dead.{n:020d}", rm.name)
        rm.prepared.add(xid)
        return Prepared(rm, PreparedBranch(rm.name, str(xid), xid, None)), facts

    plans = [plan(pg, n, commit) for n in range(5)] + [plan(mysql, n, abort) for n in range(3)]
    waited = {plans[3][0].xid, plans[6][0].xid}
    cut = recovery_module.batches(plans, waited)
    names = [[(p.participant.name, int(p.gtrid[-2:])) for p, _ in batch] for batch in cut]
    assert names[:2] == [[("pg", 3)], [("mysql", 1)]]  # waited on: alone, and first
    assert sorted(names[2:]) == [
        [("mysql", 0), ("mysql", 2)],
        [("pg", 0), ("pg", 1)],
        [("pg", 2), ("pg", 4)],
    ]
    assert all(len({f for _, f in batch}) == 1 for batch in cut)  # one verdict each
    report = RecoveryReport()
    for batch in cut:
        act_together(batch, report)
    assert pg.committed == {p.xid for p, _ in plans[:5]}
    assert mysql.rolled_back == {p.xid for p, _ in plans[5:]}
    assert pg.prepared == set() and mysql.prepared == set()
    assert len(report.resolutions) == 8 and all(r.finished for r in report.resolutions)
