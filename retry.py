"""The retry policy of both engines — phase 2 and rolling back prepared branches in 2PC, a
saga's steps and compensations — as data, validated once."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with a ceiling, bounded by a total deadline.

    Defaults: first retry after 50 ms, doubling each time, never more than 2 s apart, giving
    up after 60 s. Giving up on phase 2 of a logged commit loses nothing: the decision is in
    the log and ``twopc recover`` finishes the branch.
    """

    initial_interval: float = 0.05
    backoff_coefficient: float = 2.0
    maximum_interval: float = 2.0
    deadline: float = 60.0

    def __post_init__(self) -> None:
        values = (self.initial_interval, self.backoff_coefficient, self.maximum_interval)
        if not all(math.isfinite(v) for v in (*values, self.deadline)):
            raise ValueError("retry policy values must be finite numbers")
        if self.initial_interval <= 0:
            raise ValueError("initial_interval must be > 0")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be >= 1")
        if self.maximum_interval < self.initial_interval:
            raise ValueError("maximum_interval must be >= initial_interval")
        if self.deadline < 0:
            raise ValueError("deadline must be >= 0")

    def pauses(self) -> Iterator[float]:
        """Sleep between attempts; yields the attempt number's pause until the deadline passes."""
        give_up_at = time.monotonic() + self.deadline
        interval = self.initial_interval
        while (left := give_up_at - time.monotonic()) > 0:
            pause = min(interval, left)
            time.sleep(pause)
            yield pause
            interval = min(interval * self.backoff_coefficient, self.maximum_interval)
