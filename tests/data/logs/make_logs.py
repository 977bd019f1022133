"""Generate the stored logs that tests/test_txlog_replay.py replays (run once, commit).

    PYTHONPATH=. python tests/data/logs/make_logs.py   # from the project root

Each sub-folder is a log directory; ``expected.json`` says what reading each must give.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

from twopc.txlog import Record, TransactionLog
from twopc.txlog.files import LOCK_NAME
from twopc.txlog.framing import FILE_HEADER_SIZE, scan_frames

HERE = Path(__file__).resolve().parent
SEGMENT_BYTES = 600


def write_good(directory: Path) -> None:
    """Coordinator-like transactions over several segments, checkpointed midway."""
    with TransactionLog.open(directory, segment_bytes=SEGMENT_BYTES, auto_checkpoint=False) as log:
        for number in range(1, 4):
            txid = f"coord-a-{number}"
            log.append(Record("commit", txid, {"branches": ["postgres", "mysql"]}), force=True)
            log.append(Record("end", txid, final=True), force=False)
        log.append(Record("commit", "coord-a-pending", {"branches": ["postgres"]}), force=True)
        log.checkpoint()
        for number in range(4, 14):
            txid = f"coord-a-{number}"
            log.append(Record("commit", txid, {"branches": ["postgres", "mysql"]}), force=True)
            if number != 6:
                log.append(Record("end", txid, final=True), force=False)
    (directory / LOCK_NAME).unlink()


def frames_of(segment: Path) -> list[int]:
    data = segment.read_bytes()
    return [f.offset for f in scan_frames(segment, data, FILE_HEADER_SIZE, tail=True).frames]


def live_segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.log"))


def make_torn(directory: Path) -> int:
    last = live_segments(directory)[-1]
    cut = frames_of(last)[-1] + 7
    last.write_bytes(last.read_bytes()[:cut])
    return cut


def make_mid_corrupt(directory: Path) -> tuple[Path, int]:
    first = live_segments(directory)[0]
    offset = frames_of(first)[1]
    data = bytearray(first.read_bytes())
    data[offset + 20] ^= 0x5A  # a payload byte of the second record
    first.write_bytes(bytes(data))
    return first, offset


def make_newer_version(directory: Path) -> Path:
    segment = live_segments(directory)[0]
    data = segment.read_bytes()
    head = struct.pack(">8sHHQ", data[:8], 2, 0, int(segment.stem.split("-")[1]))
    segment.write_bytes(head + struct.pack(">I", zlib.crc32(head)) + data[FILE_HEADER_SIZE:])
    return segment


def fresh(name: str) -> Path:
    target = HERE / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(HERE / "good", target)
    return target


def main() -> None:
    shutil.rmtree(HERE / "good", ignore_errors=True)
    write_good(HERE / "good")
    expected: dict[str, Any] = {}
    expected["torn-tail"] = {"torn_cut_at": make_torn(fresh("torn-tail"))}
    corrupt, offset = make_mid_corrupt(fresh("mid-corrupt"))
    expected["mid-corrupt"] = {"file": corrupt.name, "offset": offset}
    expected["newer-version"] = {"file": make_newer_version(fresh("newer-version")).name}
    missing = fresh("missing-segment")
    gone = live_segments(missing)[1]  # a middle one: a lost last segment cannot be seen
    gone.unlink()
    expected["missing-segment"] = {"file": gone.name}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
