"""The worker threads every benchmark of many requests shares: each request taken once, timed,
and its result recorded one at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def drive(
    items: Iterable[_Item],
    workers: int,
    act: Callable[[_Item], _Result],
    record: Callable[[_Item, _Result, float], object],
    *,
    lock: threading.Lock,
    halt: threading.Event,
) -> float:
    """Run ``act(item)`` for every item on ``workers`` threads, taking no new item once
    ``halt`` is set; ``record(item, result, seconds)`` runs under ``lock`` after each.
    Returns the wall-clock seconds from the first thread's start to the last one's end."""
    queue = iter(items)
    take = threading.Lock()

    def worker() -> None:
        while not halt.is_set():
            with take:
                item = next(queue, None)
            if item is None:
                return
            started = time.perf_counter()
            result = act(item)
            elapsed = time.perf_counter() - started
            with lock:
                record(item, result, elapsed)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started
