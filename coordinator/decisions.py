"""The recovery rules as pure functions: facts about one prepared branch in, an action out.

Nothing here reads a log or talks to a server. Recovery, the in-doubt listing and manual
``resolve`` gather the facts and call these functions, so the whole rule table lives here,
where it is tested exhaustively without servers (``tests/test_decisions.py``).

The facts about a prepared branch of ours:

- ``logged``: what its coordinator's log says about its gtrid — a COMMIT record
  (``COMMIT``), no COMMIT record (``NONE``: presumed abort), no log at all (``LOG_MISSING``),
  or a log damaged anywhere but a torn tail (``LOG_UNREADABLE``);
- ``alive``: whether that coordinator holds its log's lock (it finishes its own branches);
- ``evidence``: whether some branch of the same gtrid has committed (its outcome marker is
  visible). A committed branch proves the decision was COMMIT, whatever the log says or lacks.

Recovery (:func:`decide`)::

    logged          alive   evidence   action     why
    COMMIT          no      any        commit     the log's decision
    NONE            no      no         roll back  presumed abort
    NONE            no      yes        commit     evidence beats presumption (a lost record)
    LOG_MISSING     -       no         leave      an orphan: the decision is unknown
    LOG_MISSING     -       yes        commit     evidence: a sibling committed
    LOG_UNREADABLE  any     no         leave      decisions may be lost: never presume
    LOG_UNREADABLE  any     yes        commit     evidence: a sibling committed
    any readable    yes     any        leave      a live coordinator finishes its own

(A coordinator whose log is missing or unreadable cannot be told alive or dead by its log,
and it does not matter: only evidence lets recovery act on its branches.)

Manual resolution (:func:`decide_resolution`) goes the operator's way. It is *heuristic* when
it goes against what is known — rolling back a logged or evidenced commit, or committing
what has no COMMIT record and no evidence — and then needs ``force``; so does touching a live
coordinator's branch. A heuristic rollback of a transaction with a committed branch breaks
atomicity: it is recorded as a violation, which ``audit`` reports from then on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Logged(enum.Enum):
    """What a coordinator's log says about one gtrid."""

    COMMIT = "commit"
    NONE = "none"  # no COMMIT record: presumed abort
    LOG_MISSING = "log missing"
    LOG_UNREADABLE = "log unreadable"

    @property
    def readable(self) -> bool:
        return self in (Logged.COMMIT, Logged.NONE)


class Action(enum.Enum):
    """What recovery does with a prepared branch."""

    COMMIT = "commit"
    ROLL_BACK = "roll back"
    LEAVE = "leave alone"


@dataclass(frozen=True)
class BranchFacts:
    """Everything the rules need to know about one prepared branch of ours."""

    logged: Logged
    alive: bool
    evidence: bool


@dataclass(frozen=True)
class Verdict:
    """An action and the reason to print beside it."""

    action: Action
    reason: str


def decide(facts: BranchFacts) -> Verdict:
    """What recovery does with a prepared branch (the table in the module docstring)."""
    if facts.logged.readable and facts.alive:
        return Verdict(Action.LEAVE, "its coordinator is alive: it finishes its own branches")
    if facts.logged is Logged.COMMIT:
        return Verdict(Action.COMMIT, "COMMIT record in the log")
    if facts.evidence:
        return Verdict(Action.COMMIT, _EVIDENCE[facts.logged])
    if facts.logged is Logged.NONE:
        return Verdict(Action.ROLL_BACK, "no COMMIT record: presumed abort")
    if facts.logged is Logged.LOG_MISSING:
        return Verdict(Action.LEAVE, ORPHAN)
    return Verdict(Action.LEAVE, DAMAGED)


ORPHAN = (
    "no log for its coordinator (an orphan) and no committed branch: the decision is unknown; "
    "resolve it by hand with `twopc resolve GTRID --commit|--rollback`"
)
DAMAGED = (
    "its coordinator's log is damaged and no branch has committed: decisions may be lost, so "
    "abort is not presumed; see `twopc log verify`, then `twopc resolve`"
)
_EVIDENCE = {
    Logged.NONE: "no COMMIT record, but a branch of it has committed: the record was lost; "
    "evidence beats presumption",
    Logged.LOG_MISSING: "no log, but a branch of it has committed: the decision was COMMIT",
    Logged.LOG_UNREADABLE: "log damaged, but a branch of it has committed: the decision was COMMIT",
}


def known_decision(facts: BranchFacts) -> bool | None:
    """True when the transaction is known to have committed (a COMMIT record or evidence),
    False when it is known not to have (no COMMIT record in a readable log, no evidence),
    None when nothing is known (no log or a damaged one, and no evidence)."""
    if facts.logged is Logged.COMMIT or facts.evidence:
        return True
    if facts.logged is Logged.NONE:
        return False
    return None


@dataclass(frozen=True)
class ManualVerdict:
    """What an operator's ``resolve`` may do: ``refusal`` is None when it may go ahead."""

    refusal: str | None
    heuristic: bool  # against the known decision
    breaks_atomicity: bool  # a rollback while some branch has committed


def decide_resolution(facts: BranchFacts, *, commit: bool, force: bool) -> ManualVerdict:
    """Whether the operator may finish a transaction's branches as ``commit`` says."""
    known = known_decision(facts)
    heuristic = known is not None and known != commit
    breaks = not commit and facts.evidence
    refusal = None
    if facts.logged.readable and facts.alive:
        refusal = "its coordinator is alive and will finish it itself"
    elif heuristic:
        refusal = _AGAINST[commit, facts.evidence]
    if refusal is not None and not force:
        return ManualVerdict(refusal, heuristic, breaks)
    return ManualVerdict(None, heuristic, breaks)


_AGAINST = {
    (False, True): "a branch of it has already committed: rolling back the rest would break "
    "atomicity (a heuristic outcome that audit reports as a violation)",
    (False, False): "the log records a COMMIT decision: rolling it back would be a heuristic "
    "outcome (some branches may already be committed)",
    (True, False): "the log has no COMMIT record (presumed abort): committing it would be a "
    "heuristic outcome (a branch may never have prepared)",
}
