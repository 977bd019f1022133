"""The threads that run branches' prepares and commits, shared by a coordinator's transactions.

Unlike ``concurrent.futures.ThreadPoolExecutor``, whose threads the interpreter joins at exit,
these are daemon threads and :meth:`Workers.close` waits for them only so long: a worker stuck
in a call to a server that stopped answering must not keep a coordinator from closing, nor a
process from exiting. Nothing is lost by leaving it: a branch it was finishing is prepared or
finished on its server, and the decision is in the log for recovery.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

_T = TypeVar("_T")
_Job = tuple[Future[Any], Callable[[], Any]]


class Workers:
    """Up to ``size`` daemon threads, started as work arrives, running submitted calls."""

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one thread, got {size}")
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def started(self) -> int:
        """How many threads this pool has started so far."""
        with self._lock:
            return len(self._threads)

    def submit(self, call: Callable[[], _T]) -> Future[_T]:
        """Run ``call`` on a worker; its result or exception lands in the returned future."""
        future: Future[_T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name} workers are closed")
            self._jobs.put((future, call))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._size:
                self._start_thread()
        return future

    def close(self, timeout: float) -> bool:
        """Take no more work; wait up to ``timeout`` seconds for the running work to end.
        Returns whether every worker ended (the others are left to finish on their own)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._jobs.put(None)
        give_up = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, give_up - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as err:  # delivered to whoever waits on the future
                    future.set_exception(err)
            self._idle.release()
