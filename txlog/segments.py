"""Decoding segment and checkpoint files into records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twopc.txlog.errors import LogCorrupt, LogError
from twopc.txlog.files import CHECKPOINT_NAME, CHECKPOINT_TEMP_NAME, atomic_write, segment_path
from twopc.txlog.framing import (
    CHECKPOINT_MAGIC,
    FILE_HEADER_SIZE,
    MAX_RECORD_PAYLOAD,
    SEGMENT_MAGIC,
    Frame,
    FrameType,
    decode_file_header,
    encode_file_header,
    encode_frame,
    scan_frames,
)
from twopc.txlog.record import Record, encode_json, record_fields, record_from_fields


@dataclass(frozen=True)
class SegmentScan:
    """What one segment file holds: its records, where they end, and whether it is torn."""

    path: Path
    number: int
    records: list[Record]
    end: int  # offset just past the last whole record (0 if even the header is torn)
    size: int
    torn: bool


@dataclass(frozen=True)
class Checkpoint:
    """Records of the txids unfinished before segment ``first_segment``; older ones are gone."""

    first_segment: int
    records: list[Record]


def read_segment(directory: Path, number: int, *, tail: bool) -> SegmentScan:
    """Decode segment ``number``; only a ``tail`` segment may end in a torn record."""
    path = segment_path(directory, number)
    data = path.read_bytes()
    found = decode_file_header(path, data, SEGMENT_MAGIC, tail=tail)
    if found is None:
        return SegmentScan(path, number, [], 0, len(data), torn=True)
    if found != number:
        raise LogCorrupt(path, 12, f"header names segment {found}, file name says {number}")
    scan = scan_frames(path, data, FILE_HEADER_SIZE, tail=tail)
    records = [_decode_record(path, frame) for frame in scan.frames]
    return SegmentScan(path, number, records, scan.end, len(data), scan.torn)


def _decode_record(path: Path, frame: Frame) -> Record:
    if frame.type is FrameType.CHECKPOINT:
        raise LogCorrupt(path, frame.offset, "checkpoint frame inside a segment")
    fields = _decode_json(path, frame)
    try:
        return record_from_fields(fields, final=frame.type is FrameType.FINAL)
    except ValueError as err:
        raise LogCorrupt(path, frame.offset, f"malformed record: {err}") from None


def _decode_json(path: Path, frame: Frame) -> Any:
    try:
        return json.loads(frame.payload)
    except ValueError as err:
        raise LogCorrupt(path, frame.offset, f"undecodable payload: {err}") from None


def encode_record(record: Record) -> bytes:
    """The framed bytes of ``record`` as appended to a segment."""
    frame_type = FrameType.FINAL if record.final else FrameType.ENTRY
    payload = encode_json(record_fields(record))
    if len(payload) > MAX_RECORD_PAYLOAD:
        raise LogError(f"record of {len(payload)} bytes exceeds {MAX_RECORD_PAYLOAD}")
    return encode_frame(frame_type, payload)


def read_checkpoint(directory: Path) -> Checkpoint | None:
    """The directory's checkpoint, or ``None`` if it has none. Never torn: it is replaced
    atomically, so any damage is :class:`LogCorrupt`."""
    path = directory / CHECKPOINT_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    first = decode_file_header(path, data, CHECKPOINT_MAGIC, tail=False)
    if first is None:  # unreachable: tail=False never yields a torn header
        raise LogCorrupt(path, 0, "checkpoint header cut short")
    scan = scan_frames(path, data, FILE_HEADER_SIZE, tail=False)
    if len(scan.frames) != 1 or scan.frames[0].type is not FrameType.CHECKPOINT:
        raise LogCorrupt(
            path, FILE_HEADER_SIZE, "checkpoint must hold exactly one checkpoint frame"
        )
    return Checkpoint(first, _checkpoint_records(path, scan.frames[0]))


def _checkpoint_records(path: Path, frame: Frame) -> list[Record]:
    fields = _decode_json(path, frame)
    try:
        return [record_from_fields(item, final=False) for item in fields["records"]]
    except (ValueError, TypeError, KeyError) as err:
        raise LogCorrupt(path, frame.offset, f"malformed checkpoint: {err!r}") from None


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Durably replace the directory's checkpoint (temp file, fsync, rename, fsync dir)."""
    payload = encode_json({"records": [record_fields(r) for r in checkpoint.records]})
    data = encode_file_header(CHECKPOINT_MAGIC, checkpoint.first_segment) + encode_frame(
        FrameType.CHECKPOINT, payload
    )
    atomic_write(directory / CHECKPOINT_NAME, directory / CHECKPOINT_TEMP_NAME, data)
