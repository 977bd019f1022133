"""Attempts at one unit of saga work under a retry policy, and which policy applies.

Policies are data (:class:`twopc.coordinator.RetryPolicy`). A step may bring its own; a saga
keeps the orchestrator's policies its run began with (recorded in its BEGIN record), so a
saga resumed later retries as its own run did — unless an operator gives a policy of their
own, which then applies to every step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twopc.participants import ParticipantError
from twopc.retry import RetryPolicy
from twopc.saga.errors import CompensationFailed
from twopc.saga.idempotency import CommitUncertain, StepResult

#: Told of each failed attempt: (attempt number, the error).
FailureListener = Callable[[int, str], None]


@dataclass(frozen=True)
class Exhausted:
    """Every attempt the retry policy allowed failed."""

    error: str
    attempts: int
    uncertain: bool  # some attempt failed while committing, or was cut off: it may apply


def retry_policy(
    own: RetryPolicy | None,
    recorded: RetryPolicy | None,
    configured: RetryPolicy,
    *,
    keep_recorded: bool = True,
) -> RetryPolicy:
    """The policy for one step's work: an operator's (``configured`` when not
    ``keep_recorded``) over the step's ``own``, over the saga run's ``recorded`` one, over
    the orchestrator's ``configured`` default."""
    if not keep_recorded:
        return configured
    return own or recorded or configured


def attempt(
    policy: RetryPolicy, once: Callable[[], StepResult], on_failure: FailureListener
) -> StepResult | Exhausted:
    """``once()`` until it returns, or the policy's deadline passes. Participant errors
    (a timeout among them) and :class:`CompensationFailed` are retried; anything else is a
    bug and propagates."""
    pauses = policy.pauses()
    tries, uncertain = 0, False
    while True:
        tries += 1
        try:
            return once()
        except (ParticipantError, CompensationFailed) as err:
            uncertain = uncertain or isinstance(err, CommitUncertain)
            error = str(err)
        on_failure(tries, error)
        if next(pauses, None) is None:
            return Exhausted(error, tries, uncertain)
