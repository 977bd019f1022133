"""Errors of the saga path (participant errors never escape a step: they become events)."""

from __future__ import annotations


class SagaError(Exception):
    """The orchestrator cannot do what was asked; the message says what to do instead."""


class SagaBusy(SagaError):
    """Another orchestrator (alive, or dead and awaiting recovery) owns this saga or log."""


class SagaNotFound(SagaError):
    """No unfinished saga with this id in the logs."""


class SagaIdReused(SagaError):
    """A saga id given again with a different request: refused before anything ran."""


class CompensationFailed(Exception):
    """A step's action found the world not as the saga left it (the row it must change is
    gone): retried like a participant error, and dead-lettered if it keeps failing."""
