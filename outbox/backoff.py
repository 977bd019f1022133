"""Back-off as data: how long to wait after the n-th failure in a row."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: ``initial`` seconds, times ``coefficient`` per attempt, at most
    ``maximum``."""

    initial: float = 1.0
    coefficient: float = 2.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.initial, self.coefficient, self.maximum)):
            raise ValueError("back-off values must be finite")
        if self.initial <= 0 or self.coefficient < 1 or self.maximum < self.initial:
            raise ValueError("back-off needs initial > 0, coefficient >= 1, maximum >= initial")

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (1, 2, …)."""
        return min(self.initial * self.coefficient ** max(0, attempt - 1), self.maximum)
