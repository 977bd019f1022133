"""A home of logs (one per owner, locked while its owner lives), without servers: the one
mechanism coordinators, orchestrators, recovery and the CLI find and probe logs with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twopc.coordinator.facts import OPERATOR_LOG, coordinator_home
from twopc.coordinator.ids import InvalidCoordinatorId
from twopc.coordinator.recovery import recover
from twopc.saga.ids import InvalidSagaId
from twopc.saga.logs import orchestrator_home
from twopc.saga.orchestrator import SagaConfig
from twopc.saga.recovery import recover_sagas
from twopc.txlog import LogLocked, LogMissing, Record
from twopc.txlog import log as log_module
from twopc.txlog.locking import WriterLock


def test_owners_are_the_valid_ids_with_a_log(tmp_path: Path) -> None:
    logs = coordinator_home(tmp_path)
    assert logs.root == tmp_path / "txlog" and logs.owners() == []
    for owner in ("b-2", "a1", OPERATOR_LOG):
        logs.open(owner).close()
    (logs.root / "not an id!").mkdir()  # no coordinator could have this name
    (logs.root / "stray-file").write_text("")  # not a directory
    assert logs.owners() == ["a1", "b-2"]  # the operator's log is no coordinator's
    assert logs.exists(OPERATOR_LOG) and not logs.exists("c3")
    with pytest.raises(InvalidCoordinatorId):
        logs.path("../escape")


def test_a_live_writer_holds_the_lock_and_readers_need_none(tmp_path: Path) -> None:
    logs = orchestrator_home(tmp_path)
    assert logs.root == tmp_path / "sagas"
    with logs.open("orch-1") as log:
        log.append(Record("BEGIN", "saga-1", {"n": 1}), force=True)
        assert logs.alive("orch-1")
        with pytest.raises(LogLocked):
            logs.open("orch-1")
        assert [r.txid for r in logs.read("orch-1").records] == ["saga-1"]
    assert not logs.alive("orch-1")
    with pytest.raises(LogMissing):
        logs.open("orch-2", create=False)
    with pytest.raises(InvalidSagaId):
        logs.path("no/slashes")


def test_a_dead_owner_is_not_alive(tmp_path: Path) -> None:
    """The lock goes with the process, however it dies: a SIGKILLed writer is dead."""
    script = (
        "import os, signal, sys; from pathlib import Path;"
        "from twopc.coordinator.facts import coordinator_home;"
        "log = coordinator_home(Path(sys.argv[1])).open('killed');"
        "print('open', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -9 and done.stdout.strip() == "open", done.stderr
    logs = coordinator_home(tmp_path)
    assert logs.owners() == ["killed"] and not logs.alive("killed")
    logs.open("killed", create=False).close()  # taken over, as recovery does


def test_a_log_being_created_is_never_taken_for_a_dead_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recovery that runs while a coordinator creates its log (here: just before the new
    log's lock is taken) neither takes that log over nor removes it. The directory appears
    with its lock already held; made first and locked after, it was for a moment a log with
    no live writer, which recovery removed as a dead coordinator's (and the start failed)."""
    real_lock = log_module.WriterLock
    seen: list[tuple[list[str], list[str]]] = []

    def recovery_then_lock(directory: Path) -> WriterLock:
        if not seen:  # once: recovery opens logs through the same lock
            seen.append((coordinator_home(tmp_path).owners(), recover([], tmp_path).removed_logs))
        return real_lock(directory)

    monkeypatch.setattr(log_module, "WriterLock", recovery_then_lock)
    with coordinator_home(tmp_path).open("starting") as log:
        assert coordinator_home(tmp_path).alive("starting")
        log.append(Record("COMMIT", "tx-1", {}), force=True)
    assert seen == [([], [])]
    assert [r.txid for r in coordinator_home(tmp_path).read("starting").records] == ["tx-1"]
    assert sorted(p.name for p in coordinator_home(tmp_path).root.iterdir()) == ["starting"]


def _left_half_created(root: Path, name: str, *, age: float, lock: bool = True) -> Path:
    """A ``_new-…`` directory as a creator that died before its rename leaves it."""
    path = root / name
    path.mkdir(parents=True)
    if lock:
        WriterLock(path).release()  # the LOCK file, no longer held
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_logs_left_half_created_are_removed_once_old_and_unheld(tmp_path: Path) -> None:
    logs = coordinator_home(tmp_path)
    logs.open("kept").close()
    old = _left_half_created(logs.root, "_new-old", age=3600)
    bare = _left_half_created(logs.root, "_new-bare", age=3600, lock=False)  # died before LOCK
    young = _left_half_created(logs.root, "_new-young", age=1)  # its creator may be running
    held = _left_half_created(logs.root, "_new-held", age=3600)
    holder = WriterLock(held)  # a creator stopped before its rename: never removed under it
    other = _left_half_created(logs.root, "_new-other", age=3600)
    (other / "segment").write_bytes(b"x")  # holds more than a lock: not ours to judge
    try:
        assert logs.remove_leftovers() == ["_new-bare", "_new-old"]
    finally:
        holder.release()
    assert not old.exists() and not bare.exists()
    assert young.exists() and held.exists() and other.exists()
    assert logs.owners() == ["kept"]


def test_recovery_removes_logs_left_half_created(tmp_path: Path) -> None:
    homes = (coordinator_home(tmp_path), orchestrator_home(tmp_path))
    left = [_left_half_created(home.root, "_new-x", age=3600) for home in homes]
    recover([], tmp_path)
    assert not left[0].exists() and left[1].exists()  # each recovery cleans its own home
    recover_sagas([], SagaConfig(tmp_path))
    assert not left[1].exists()
