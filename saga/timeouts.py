"""Cutting off an attempt at a step that does not answer within the step's timeout.

A step with a timeout runs each attempt on a daemon thread of its own; once the timeout
passes, the orchestrator stops waiting, counts the attempt as failed with an unknown outcome
and, as the retry policy allows, runs the step again under the SAME idempotency key.

The abandoned attempt is not stopped: a local transaction cannot be interrupted from another
thread through the participant interface, so it ends on its own, bounded by its
participant's statement limit. Nothing applies twice: the retry's claim of the key waits on
the abandoned attempt's uncommitted key row, then finds its stored result if it committed,
or applies the change itself if it rolled back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TypeVar

from twopc.saga.idempotency import CommitUncertain

_T = TypeVar("_T")


class StepTimedOut(CommitUncertain):
    """An attempt did not answer within its step's timeout: it may still apply (once)."""


def within(seconds: float | None, what: str, call: Callable[[], _T]) -> _T:
    """``call()``'s result; :class:`StepTimedOut` if it takes longer than ``seconds``
    (None: no limit, and no thread)."""
    if seconds is None:
        return call()
    future: Future[_T] = Future()
    thread = threading.Thread(target=_deliver, args=(future, call), name="saga-step", daemon=True)
    thread.start()
    done, _ = wait([future], timeout=seconds)
    if not done:  # (the call's own TimeoutError, if it raised one, is not this)
        raise StepTimedOut(
            f"{what}: no answer within {seconds:g}s (cut off; retried under the same key)"
        )
    return future.result()


def _deliver(future: Future[_T], call: Callable[[], _T]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(call())
    except BaseException as err:  # delivered to the caller, if it still waits
        future.set_exception(err)
