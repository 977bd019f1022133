"""One watchdog thread per participant, instead of a timer thread per statement.

A statement that may wait on a lock registers "tell me if I am still running after N
seconds" and unregisters when it returns. The deadlines sit in one heap, watched by one
daemon thread that starts on first use and stops on :meth:`Watchdog.close`; most statements
return long before their deadline and cost a heap push and pop, never a thread. The thread is
woken only for a deadline earlier than the one it sleeps until: one that is left to pass
finds nothing due and sleeps on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Alarm = Callable[[], None]
#: Seconds close() waits for the thread to end: an alarm it is running may be slow (it asks
#: a server), and the thread is a daemon that ends by itself once the alarm returns.
_CLOSE_PATIENCE = 1.0


@dataclass(order=True)
class _Deadline:
    at: float  # time.monotonic() when the alarm is due
    number: int  # registration order: ties and equality never compare alarms
    alarm: Alarm = field(compare=False)


class Watchdog:
    """Runs each registered alarm once its deadline passes, unless it was unregistered first.

    Every alarm runs on the watchdog's own thread, one at a time: a slow alarm delays the ones
    due after it. An alarm only reports, so an exception it raises is logged and dropped.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._condition = threading.Condition()
        self._deadlines: list[_Deadline] = []  # a heap, earliest first
        self._numbers = itertools.count()
        self._thread: threading.Thread | None = None  # the running watcher, if any
        self._wakes_at = math.inf  # when the sleeping watcher wakes by itself

    @contextmanager
    def watching(self, seconds: float, alarm: Alarm) -> Iterator[None]:
        """Run ``alarm`` (on the watchdog's thread) if the block still runs after ``seconds``."""
        deadline = self._register(seconds, alarm)
        try:
            yield
        finally:
            self._unregister(deadline)

    def arm(self, seconds: float, alarm: Alarm) -> object:
        """Run ``alarm`` after ``seconds`` unless :meth:`disarm` is given the returned token
        first (what :meth:`watching` does around a block)."""
        return self._register(seconds, alarm)

    def disarm(self, token: object) -> None:
        """Cancel an alarm :meth:`arm` set (nothing if it ran, runs, or was cancelled)."""
        if isinstance(token, _Deadline):
            self._unregister(token)

    @property
    def running(self) -> bool:
        """Whether the watchdog's thread is started (it starts with the first registration)."""
        with self._condition:
            return self._thread is not None

    def close(self) -> None:
        """Stop the thread and drop pending alarms; a later registration starts a new thread."""
        with self._condition:
            thread, self._thread = self._thread, None
            self._deadlines.clear()
            self._condition.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(_CLOSE_PATIENCE)

    def _register(self, seconds: float, alarm: Alarm) -> _Deadline:
        deadline = _Deadline(time.monotonic() + seconds, next(self._numbers), alarm)
        with self._condition:
            heapq.heappush(self._deadlines, deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name=self._name, daemon=True)
                self._thread.start()
            elif deadline.at < self._wakes_at:
                self._wakes_at = deadline.at
                self._condition.notify()  # the thread sleeps until a later deadline
        return deadline

    def _unregister(self, deadline: _Deadline) -> None:
        with self._condition:
            try:
                self._deadlines.remove(deadline)
            except ValueError:
                return  # already due (its alarm ran or is running) or dropped by close()
            heapq.heapify(self._deadlines)

    def _watch(self) -> None:
        me = threading.current_thread()
        while (alarm := self._next_due(me)) is not None:
            try:
                alarm()
            except Exception:
                log.exception("%s: an alarm failed", self._name)

    def _next_due(self, me: threading.Thread) -> Alarm | None:
        """Sleep until the earliest deadline passes and take it off the heap; None once this
        thread is no longer the watchdog's (closed)."""
        with self._condition:
            while self._thread is me:
                if not self._deadlines:
                    self._wakes_at = math.inf
                    self._condition.wait()
                    continue
                self._wakes_at = self._deadlines[0].at
                left = self._wakes_at - time.monotonic()
                if left <= 0:
                    return heapq.heappop(self._deadlines).alarm
                self._condition.wait(left)
            return None
