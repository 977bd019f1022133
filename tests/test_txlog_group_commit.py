"""Group commit: one sync covers many appenders, nobody returns before its item is synced,
and a failed sync poisons the log instead of being retried."""

from __future__ import annotations

import threading
import time

import pytest

from twopc.txlog import LogError
from twopc.txlog.group_commit import GroupCommit


class SlowDisk:
    """A sink whose sync takes a while and remembers what it made durable."""

    def __init__(self, fail_on_sync: int | None = None) -> None:
        self.written: list[int] = []
        self.durable: set[int] = set()
        self.syncs = 0
        self._fail_on_sync = fail_on_sync

    def write(self, batch: list[int], sync: bool) -> None:
        self.written.extend(batch)
        if sync:
            self.syncs += 1
            time.sleep(0.002)
            if self.syncs == self._fail_on_sync:
                raise OSError(5, "Input/output error")
            self.durable.update(self.written)


def test_each_forced_append_returns_after_its_item_is_synced_and_syncs_are_shared() -> None:
    disk = SlowDisk()
    commit = GroupCommit[int](disk.write, lambda item: None, buffer_bytes=1 << 20)
    early: list[int] = []

    def appender(base: int) -> None:
        for item in range(base, base + 50):
            commit.append(item, 8, force=True)
            if item not in disk.durable:
                early.append(item)

    threads = [threading.Thread(target=appender, args=(n * 1000,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert early == []
    assert len(disk.durable) == 800
    assert disk.syncs < 800 / 4, f"{disk.syncs} syncs for 800 records: no batching"


def test_unforced_items_wait_for_the_next_sync() -> None:
    disk = SlowDisk()
    commit = GroupCommit[int](disk.write, lambda item: None, buffer_bytes=1 << 20)
    commit.append(1, 8, force=False)
    assert disk.written == []
    commit.append(2, 8, force=True)
    assert disk.durable == {1, 2} and disk.syncs == 1
    commit.barrier()
    assert disk.syncs == 2


def test_a_failed_sync_fails_every_waiter_and_every_later_call() -> None:
    disk = SlowDisk(fail_on_sync=3)
    commit = GroupCommit[int](disk.write, lambda item: None, buffer_bytes=1 << 20)
    outcomes: list[str] = []

    def appender(base: int) -> None:
        try:
            for item in range(base, base + 20):
                commit.append(item, 8, force=True)
        except (OSError, LogError) as err:
            outcomes.append(type(err).__name__)

    threads = [threading.Thread(target=appender, args=(n * 100,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(outcomes)) in (["LogError", "OSError"], ["OSError"])
    assert len(outcomes) == 8
    with pytest.raises(LogError, match="unusable"):
        commit.append(0, 8, force=False)
    with pytest.raises(LogError, match="unusable"):
        commit.barrier()
