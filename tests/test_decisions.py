"""The recovery rule table, every cell, without servers (coordinator/decisions.py)."""

from __future__ import annotations

import itertools

import pytest

from twopc.coordinator.decisions import (
    Action,
    BranchFacts,
    Logged,
    decide,
    decide_resolution,
    known_decision,
)

ALL_FACTS = [
    BranchFacts(logged, alive, evidence)
    for logged, alive, evidence in itertools.product(Logged, (False, True), (False, True))
]


def expected_action(facts: BranchFacts) -> Action:
    """The table of the module docstring, written out independently of ``decide``."""
    table = {
        # (logged, alive, evidence): action
        (Logged.COMMIT, False, False): Action.COMMIT,
        (Logged.COMMIT, False, True): Action.COMMIT,
        (Logged.COMMIT, True, False): Action.LEAVE,
        (Logged.COMMIT, True, True): Action.LEAVE,
        (Logged.NONE, False, False): Action.ROLL_BACK,
        (Logged.NONE, False, True): Action.COMMIT,
        (Logged.NONE, True, False): Action.LEAVE,
        (Logged.NONE, True, True): Action.LEAVE,
        (Logged.LOG_MISSING, False, False): Action.LEAVE,
        (Logged.LOG_MISSING, False, True): Action.COMMIT,
        (Logged.LOG_MISSING, True, False): Action.LEAVE,
        (Logged.LOG_MISSING, True, True): Action.COMMIT,
        (Logged.LOG_UNREADABLE, False, False): Action.LEAVE,
        (Logged.LOG_UNREADABLE, False, True): Action.COMMIT,
        (Logged.LOG_UNREADABLE, True, False): Action.LEAVE,
        (Logged.LOG_UNREADABLE, True, True): Action.COMMIT,
    }
    return table[facts.logged, facts.alive, facts.evidence]


@pytest.mark.parametrize("facts", ALL_FACTS, ids=str)
def test_every_cell_of_the_recovery_table(facts: BranchFacts) -> None:
    assert decide(facts).action is expected_action(facts)


def test_abort_is_presumed_only_from_a_readable_log_of_a_dead_coordinator() -> None:
    presumed = [f for f in ALL_FACTS if decide(f).action is Action.ROLL_BACK]
    assert presumed == [BranchFacts(Logged.NONE, alive=False, evidence=False)]


def test_a_committed_branch_is_never_answered_with_a_rollback() -> None:
    for facts in ALL_FACTS:
        if facts.evidence:
            assert decide(facts).action is not Action.ROLL_BACK, facts


def test_reasons_name_the_rule() -> None:
    assert "presumed abort" in decide(BranchFacts(Logged.NONE, False, False)).reason
    assert "evidence" in decide(BranchFacts(Logged.NONE, False, True)).reason
    assert "orphan" in decide(BranchFacts(Logged.LOG_MISSING, False, False)).reason
    assert "damaged" in decide(BranchFacts(Logged.LOG_UNREADABLE, False, False)).reason
    assert "alive" in decide(BranchFacts(Logged.COMMIT, True, False)).reason


@pytest.mark.parametrize(
    ("facts", "known"),
    [
        (BranchFacts(Logged.COMMIT, False, False), True),
        (BranchFacts(Logged.NONE, False, False), False),
        (BranchFacts(Logged.NONE, False, True), True),
        (BranchFacts(Logged.LOG_MISSING, False, False), None),
        (BranchFacts(Logged.LOG_MISSING, False, True), True),
        (BranchFacts(Logged.LOG_UNREADABLE, False, False), None),
    ],
)
def test_known_decision(facts: BranchFacts, known: bool | None) -> None:
    assert known_decision(facts) is known


# -- manual resolution ----------------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("commit", [False, True])
@pytest.mark.parametrize("facts", ALL_FACTS, ids=str)
def test_every_cell_of_the_resolution_table(facts: BranchFacts, commit: bool, force: bool) -> None:
    verdict = decide_resolution(facts, commit=commit, force=force)
    known = known_decision(facts)
    heuristic = known is not None and known != commit
    live = facts.logged.readable and facts.alive
    assert verdict.heuristic is heuristic
    assert verdict.breaks_atomicity is (not commit and facts.evidence)
    if force:
        assert verdict.refusal is None
    else:
        assert (verdict.refusal is not None) is (heuristic or live)


def test_rolling_back_after_a_branch_committed_says_it_breaks_atomicity() -> None:
    facts = BranchFacts(Logged.COMMIT, alive=False, evidence=True)
    verdict = decide_resolution(facts, commit=False, force=False)
    assert verdict.refusal is not None and "break atomicity" in verdict.refusal
    forced = decide_resolution(facts, commit=False, force=True)
    assert forced.refusal is None and forced.heuristic and forced.breaks_atomicity


def test_an_orphan_may_be_resolved_either_way_without_force() -> None:
    facts = BranchFacts(Logged.LOG_MISSING, alive=False, evidence=False)
    for commit in (False, True):
        verdict = decide_resolution(facts, commit=commit, force=False)
        assert verdict.refusal is None and not verdict.heuristic
