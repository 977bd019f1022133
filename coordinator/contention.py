"""When to send last statements together: an optimistic choice that backs off under contention.

Sending every branch's last statement at once (:meth:`GlobalTransaction.execute_last`) saves
one server's time on the path of each transaction, but when a row is locked both branches are
rolled back and the statements run again, in order: a locked row costs about one more
transaction. So the coordinator keeps a moving average of how often the try found a row
locked. Above ``threshold`` it sends in order, and still tries together once every ``probe``
transactions, so the average notices when the contention has passed.
"""

from __future__ import annotations

import threading


class LockContention:
    """A recent rate of last statements sent together that found a row locked."""

    def __init__(self, *, threshold: float = 0.05, weight: float = 1 / 32, probe: int = 16):
        if not (0 < threshold < 1 and 0 < weight <= 1 and probe >= 1):
            raise ValueError("threshold and weight must be in (0, 1], probe at least 1")
        self.threshold = threshold
        self._weight = weight
        self._probe = probe
        self._lock = threading.Lock()
        self._rate = 0.0
        self._skipped = 0  # transactions sent in order since the last try together

    @property
    def rate(self) -> float:
        """The moving average of tries that found a row locked (0 to 1)."""
        return self._rate

    def together(self) -> bool:
        """Whether the next transaction should try sending its statements together."""
        with self._lock:
            if self._rate < self.threshold or self._skipped + 1 >= self._probe:
                self._skipped = 0
                return True
            self._skipped += 1
            return False

    def tried(self, *, locked: bool) -> None:
        """Record a try's result: whether it found a row locked."""
        with self._lock:
            self._rate += self._weight * ((1.0 if locked else 0.0) - self._rate)
