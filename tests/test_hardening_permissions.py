"""Logs are private to their owner whatever the umask: directories 0700, files 0600.

A coordinator's log holds its commit decisions, and whoever can open a log's LOCK file can
flock it and make a dead coordinator look alive to recovery. So every directory twopc
creates under ``$TWOPC_HOME`` (the home itself included) and every file of a log (segments,
checkpoint, its temp file, LOCK) is created private, even under ``umask 0``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Databases

from twopc.txlog import Record, TransactionLog, read_log
from twopc.txlog.files import CHECKPOINT_TEMP_NAME, atomic_write


@pytest.fixture()
def permissive_umask() -> Iterator[None]:
    """umask 0 for the test, and the child processes it starts (they inherit it)."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and of everything under it, by path relative to root."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(root: Path) -> dict[str, int]:
    found = modes(root)
    wanted = {
        name: 0o700 if (root / name).is_dir() and not (root / name).is_symlink() else 0o600
        for name in found
    }
    assert {name: oct(mode) for name, mode in found.items()} == {
        name: oct(mode) for name, mode in wanted.items()
    }
    return found


def test_a_log_is_private_under_a_permissive_umask(permissive_umask: None, tmp_path: Path) -> None:
    home = tmp_path / "home"  # missing: the log creates it, and txlog/ under it
    directory = home / "txlog" / "c1"
    seen: set[str] = set()
    with TransactionLog.open(directory, segment_bytes=256, auto_checkpoint=False) as log:
        for n in range(20):  # several segments
            log.append(Record("begin", f"tx-{n}", {"n": n}), force=True)
        seen |= set(assert_private(home))
        log.checkpoint()
        seen |= set(assert_private(home))
        log.append(Record("end", "tx-0", final=True), force=True)
    with TransactionLog.open(directory, segment_bytes=256) as log:  # resumed
        log.append(Record("end", "tx-1", final=True), force=True)
        seen |= set(assert_private(home))
    assert {".", "txlog", "txlog/c1", "txlog/c1/LOCK", "txlog/c1/checkpoint"} <= seen
    assert sum(name.endswith(".log") for name in seen) > 2
    assert len(read_log(directory).records) > 0


def test_the_checkpoint_temp_file_is_private(
    permissive_umask: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looked at just before it replaces the checkpoint (it exists only for a moment)."""
    seen: list[int] = []
    real_replace = os.replace

    def looking_replace(source: Path, target: Path) -> None:
        seen.append(stat.S_IMODE(os.stat(source).st_mode))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", looking_replace)
    atomic_write(tmp_path / "checkpoint", tmp_path / CHECKPOINT_TEMP_NAME, b"data")
    assert seen == [0o600]
    assert stat.S_IMODE((tmp_path / "checkpoint").stat().st_mode) == 0o600


def test_a_log_left_open_by_an_older_version_is_closed_on_open(tmp_path: Path) -> None:
    directory = tmp_path / "txlog" / "c1"
    with TransactionLog.open(directory) as log:
        log.append(Record("begin", "tx-1"), force=True)
    directory.chmod(0o755)
    (directory / "LOCK").chmod(0o644)
    with TransactionLog.open(directory):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE((directory / "LOCK").stat().st_mode) == 0o600


def test_everything_the_commands_write_is_private(db: Databases, permissive_umask: None) -> None:
    """Coordinator logs, saga logs, the operator's log and the recovery lock."""
    assert db.twopc("transfer", "pg:a1", "mysql:a2", "1").returncode == 0
    assert db.twopc("transfer", "pg:a1", "mysql:a2", "1", "--mode", "saga").returncode == 0
    crashed = db.twopc(
        "transfer", "pg:a3", "mysql:a4", "1", "--coordinator-id", "perm",
        "--crash-at", "after-prepare",
    )  # fmt: skip
    assert crashed.returncode < 0, crashed.stderr
    assert "txlog/perm/LOCK" in assert_private(db.home)
    (branch,) = db.pg_prepared()
    assert not isinstance(branch, str)
    resolved = db.twopc("resolve", branch.gtrid, "--rollback")
    assert resolved.returncode == 0, resolved.stderr
    recovered = db.twopc("recover")
    assert recovered.returncode == 0, recovered.stderr
    found = assert_private(db.home)
    for name in ("txlog/_operator/LOCK", "recovery/LOCK", "sagas"):
        assert name in found, sorted(found)
