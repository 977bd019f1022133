"""Group commit: many appenders, one fsync per batch (leader/follower, no timed waits).

Appenders put their item in a shared buffer. A forced appender whose item is not yet
durable becomes the *leader* if no flush is in flight: it takes the whole buffer, writes
and syncs it with the lock released, then wakes everyone. Appenders that arrive meanwhile
buffer their items and wait; the next leader flushes all of them with one sync. So batches
grow exactly as fast as fsyncs are slow, and a lone appender pays one write + one fsync.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from txlog.errors import LogError

Item = TypeVar("Item")
#: Writes a batch in order; syncs it to stable storage iff the flag is true.
Sink = Callable[[list[Item], bool], None]


class GroupCommit(Generic[Item]):
    """Orders items into a sink, batching the syncs of concurrent forced appenders.

    ``on_enqueue`` runs under the lock, so its effects are ordered exactly like the items.
    Unforced items are buffered (no write, no sync) until a forced item, a flush, or more
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
        self._flushed = threading.Condition(self._lock)
        self._pending: list[Item] = []
        self._pending_bytes = 0
        self._appended = 0  # sequence number of the last item buffered
        self._durable = 0  # every item up to this sequence number is synced
        self._flushing = False
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
            if force:
                self._wait_durable(self._appended)
            elif self._pending_bytes >= self._buffer_bytes and not self._flushing:
                self._lead(sync=False)

    def barrier(self, action: Callable[[], None] | None = None, *, close: bool = False) -> None:
        """Sync everything buffered, then run ``action`` while no flush can run.

        With ``close``, later appends raise :class:`LogError`.
        """
        with self._lock:
            self._check_usable()
            while self._flushing:
                self._flushed.wait()
            self._closed = close
            self._lead(sync=True, action=action)
            self._check_usable(closing=close)

    def _wait_durable(self, sequence: int) -> None:
        while self._durable < sequence:
            self._check_usable(closing=True)
            if self._flushing:
                self._flushed.wait()
            else:
                self._lead(sync=True)

    def _lead(self, *, sync: bool, action: Callable[[], None] | None = None) -> None:
        # Called with the lock held; does the I/O with it released.
        batch, upto = self._pending, self._appended
        self._pending, self._pending_bytes, self._flushing = [], 0, True
        failure: BaseException | None = None
        self._lock.release()
        try:
            self._sink(batch, sync)
            if action is not None:
                action()
        except BaseException as err:
            failure = err
            raise
        finally:
            self._lock.acquire()
            self._finish_flush(upto if sync else self._durable, failure)

    def _finish_flush(self, durable: int, failure: BaseException | None) -> None:
        self._flushing = False
        if failure is None:
            self._durable = durable
        else:
            self._failure = self._failure or failure
        self._flushed.notify_all()

    def _check_usable(self, *, closing: bool = False) -> None:
        if self._failure is not None:
            raise LogError(f"log unusable after an earlier write failure: {self._failure!r}")
        if self._closed and not closing:
            raise LogError("log is closed")
