"""Group commit: many appenders, one fsync per batch (leader/follower, no timed waits).

Appenders put their item in a shared buffer. A forced appender becomes the *leader* if no
flush is in flight: it takes the whole buffer, writes and syncs it with the lock released.
Forced appenders that arrive meanwhile buffer their items and queue up. When a flush ends,
the leader wakes exactly the queued appenders its sync covered and hands leadership to the
first one still waiting, which flushes everything buffered since with one sync. So batches
grow exactly as fast as fsyncs are slow, a lone appender pays one write + one sync, and no
thread is woken just to go back to sleep.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from twopc.txlog.errors import LogError

Item = TypeVar("Item")
#: Writes a batch in order; syncs it to stable storage iff the flag is true.
Sink = Callable[[list[Item], bool], None]
Action = Callable[[], None]


class _Waiter:
    """A forced appender (or a barrier) waiting until its sequence number is synced."""

    __slots__ = ("_woken", "action", "lead", "sequence")

    def __init__(self, sequence: int, action: Action | None) -> None:
        self.sequence = sequence
        self.action = action
        self.lead = False
        self._woken = threading.Lock()
        self._woken.acquire()

    def wake(self, *, lead: bool) -> None:
        self.lead = lead
        self._woken.release()

    def wait(self) -> None:
        self._woken.acquire()


class GroupCommit(Generic[Item]):
    """Orders items into a sink, batching the syncs of concurrent forced appenders.

    ``on_enqueue`` runs under the lock, so its effects are ordered exactly like the items.
    Unforced items are buffered (no write, no sync) until a forced item, a barrier, or more
    than ``buffer_bytes`` of them are pending. After a sink failure (for example fsync's
    EIO, after which the kernel may already have dropped the dirty pages) every later call
    raises :class:`LogError`: retrying could report durability that does not exist.
    """

    def __init__(
        self, sink: Sink[Item], on_enqueue: Callable[[Item], None], buffer_bytes: int
    ) -> None:
        self._sink = sink
        self._on_enqueue = on_enqueue
        self._buffer_bytes = buffer_bytes
        self._lock = threading.Lock()
        self._pending: list[Item] = []
        self._pending_bytes = 0
        self._appended = 0  # sequence number of the last item buffered
        self._durable = 0  # every item up to this sequence number is synced
        self._flushing = False  # a leader owns the sink (or has been chosen)
        self._waiters: deque[_Waiter] = deque()  # in sequence order
        self._failure: BaseException | None = None
        self._closed = False

    def append(self, item: Item, size: int, *, force: bool) -> None:
        """Buffer ``item``; if ``force``, return only once it is synced by some leader."""
        with self._lock:
            self._check_usable()
            self._on_enqueue(item)
            self._pending.append(item)
            self._pending_bytes += size
            self._appended += 1
            if not force and not self._should_write_unforced():
                return
            waiter = self._join(self._appended if force else None, None)
        if waiter is not None:
            self._serve(waiter, sync=force)

    def barrier(
        self, action: Action | None = None, *, close: bool = False, sync: bool = True
    ) -> None:
        """Sync everything buffered (only write it, without ``sync``), then run ``action``
        while no other flush can run.

        With ``close``, later appends raise :class:`LogError`.
        """
        with self._lock:
            self._check_usable()
            self._closed = close
            waiter = self._join(self._appended, action)
        if waiter is not None:
            self._serve(waiter, sync=sync)

    def _should_write_unforced(self) -> bool:
        # Bounds memory under a stream of unforced items; never waits for a flush.
        return self._pending_bytes >= self._buffer_bytes and not self._flushing

    def _join(self, sequence: int | None, action: Action | None) -> _Waiter | None:
        """Under the lock: lead now if the sink is free, else queue (unforced: just leave)."""
        waiter = _Waiter(self._appended if sequence is None else sequence, action)
        if not self._flushing:
            self._flushing = waiter.lead = True
            return waiter
        if sequence is None:
            return None
        self._waiters.append(waiter)
        return waiter

    def _serve(self, waiter: _Waiter, *, sync: bool) -> None:
        if not waiter.lead:
            waiter.wait()
        if waiter.lead:
            self._lead(waiter, sync=sync)
        elif self._failure is not None:
            raise LogError(f"log write failed: {self._failure!r}") from self._failure

    def _lead(self, waiter: _Waiter, *, sync: bool) -> None:
        with self._lock:
            batch, upto = self._pending, self._appended
            self._pending, self._pending_bytes = [], 0
        failure: BaseException | None = None
        try:
            self._sink(batch, sync)
            if waiter.action is not None:
                waiter.action()
        except BaseException as err:
            failure = err
            raise
        finally:
            with self._lock:
                self._finish(upto if sync else self._durable, failure)

    def _finish(self, durable: int, failure: BaseException | None) -> None:
        """Under the lock: wake the waiters this flush covered, hand leadership on."""
        if failure is not None:
            self._failure = self._failure or failure
            durable = -1  # nobody is covered; everyone wakes to see the failure
        self._durable = max(self._durable, durable)
        covered: list[_Waiter] = []
        while self._waiters and self._covered(self._waiters[0]):
            covered.append(self._waiters.popleft())
        if self._waiters and self._failure is None:
            self._waiters.popleft().wake(lead=True)
        else:
            self._flushing = False
            covered.extend(self._waiters)
            self._waiters.clear()
        for each in covered:
            each.wake(lead=False)

    def _covered(self, waiter: _Waiter) -> bool:
        if self._failure is not None:
            return True
        return waiter.action is None and waiter.sequence <= self._durable

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise LogError(f"log unusable after an earlier write failure: {self._failure!r}")
        if self._closed:
            raise LogError("log is closed")
