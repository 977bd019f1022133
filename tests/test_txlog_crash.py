"""Kill -9 a process appending forced records: nothing it reported durable may be lost.

Also the lock: a SIGKILLed writer's lock is free at once (the kernel drops it).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from twopc.txlog import TransactionLog, is_locked, read_log, verify_log

PROJECT = Path(__file__).resolve().parents[1]

# Even-numbered transactions never end: they must survive every kill, roll and checkpoint.
# Odd ones end with a forced final record: once reported, they must never be unfinished.
APPENDER = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from twopc.txlog import Record, TransactionLog

    log = TransactionLog.open(Path(sys.argv[1]), segment_bytes=32 * 1024)
    out = open(sys.argv[2], "a", buffering=1)
    printing = threading.Lock()

    def report(line):
        with printing:
            out.write(line + "\\n")
            out.flush()

    def appender(thread):
        for n in range(10**9):
            txid = f"{sys.argv[3]}-{thread}-{n}"
            log.append(Record("begin", txid, {"n": n}), force=True)
            report("B " + txid)
            if n % 2:
                log.append(Record("end", txid, final=True), force=True)
                report("E " + txid)

    report("READY")
    for thread in range(8):
        threading.Thread(target=appender, args=(thread,), daemon=True).start()
    threading.Event().wait()
    """
)


def start_appender(directory: Path, report: Path, round_id: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-c", APPENDER, str(directory), str(report), round_id]
    return subprocess.Popen(command, env=env, cwd=PROJECT)


def wait_ready(report: Path, marker_count: int, deadline: float) -> None:
    while report.read_text().count("READY") < marker_count:
        assert time.monotonic() < deadline, "appender did not start"
        time.sleep(0.01)


def reported(report: Path) -> tuple[set[str], set[str]]:
    """txids reported begun and ended (only whole lines: a kill may cut the last one)."""
    lines = [line for line in report.read_text().split("\n")[:-1] if line != "READY"]
    begun = {line[2:] for line in lines if line.startswith("B ")}
    ended = {line[2:] for line in lines if line.startswith("E ")}
    return begun, ended


def test_records_reported_durable_survive_sigkill(tmp_path: Path) -> None:
    directory, report = tmp_path / "log", tmp_path / "reported.txt"
    report.touch()
    chooser = random.Random(os.getpid())
    for round_number in range(6):
        child = start_appender(directory, report, f"r{round_number}")
        wait_ready(report, round_number + 1, time.monotonic() + 10)
        time.sleep(chooser.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert not is_locked(directory)
        check_survivors(directory, report)
    with TransactionLog.open(directory) as log:
        begun, _ended = reported(report)
        assert {t for t in begun if int(t.rsplit("-", 1)[1]) % 2 == 0} <= set(log.unfinished())


def check_survivors(directory: Path, report: Path) -> None:
    begun, ended = reported(report)
    contents = read_log(directory)
    unfinished = contents.unfinished()
    assert verify_log(directory).ok
    never_ending = {txid for txid in begun if int(txid.rsplit("-", 1)[1]) % 2 == 0}
    assert never_ending <= set(unfinished), "a forced record reported durable was lost"
    assert not ended & set(unfinished), "a forced final record reported durable was lost"
    assert begun, "the appender reported nothing: the test proves nothing"


def test_lock_is_free_once_the_holder_is_sigkilled(tmp_path: Path) -> None:
    directory, report = tmp_path / "log", tmp_path / "reported.txt"
    report.touch()
    child = start_appender(directory, report, "lock")
    try:
        wait_ready(report, 1, time.monotonic() + 10)
        assert is_locked(directory)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert not is_locked(directory)
    TransactionLog.open(directory).close()
