"""Byte-level framing shared by segment and checkpoint files (see ``txlog/README.md``).

A file is a 24-byte header followed by frames. Header: magic (8 bytes), format version
(u16), reserved (u16, zero), sequence number (u64: the segment's number, or the checkpoint's
first live segment), CRC32 of the preceding 20 bytes (u32). A frame: payload length (u32),
type (u8), CRC32 of those 5 bytes (u32), CRC32 of type byte + payload (u32), payload.
All integers are big-endian; CRC32 is ``zlib.crc32``.

Only the *last* segment may end in a torn tail (a prefix of a header or of a frame): the
length is protected by its own checksum, so a damaged length is never mistaken for a frame
cut short. Anything else that does not decode is :class:`~txlog.errors.LogCorrupt`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from twopc.txlog.errors import LogCorrupt

SEGMENT_MAGIC = b"TWOPCSEG"
CHECKPOINT_MAGIC = b"TWOPCCKP"
FORMAT_VERSION = 1
#: Versions this code can read; a newer one is refused (never guessed at).
READABLE_VERSIONS = frozenset({1})
#: Largest record payload; a checkpoint frame (one per file) may be larger.
MAX_RECORD_PAYLOAD = 16 * 1024 * 1024

_FILE_HEADER = struct.Struct(">8sHHQ")
_CRC = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">IB")
FILE_HEADER_SIZE = _FILE_HEADER.size + _CRC.size
FRAME_OVERHEAD = _FRAME_HEAD.size + 2 * _CRC.size


class FrameType(IntEnum):
    """What a frame's payload is."""

    ENTRY = 1  # a record that does not finish its txid
    FINAL = 2  # a record that finishes its txid
    CHECKPOINT = 3  # the single frame of a checkpoint file


@dataclass(frozen=True)
class Frame:
    """One decoded frame and the byte offset where it starts."""

    offset: int
    type: FrameType
    payload: bytes


@dataclass(frozen=True)
class FrameScan:
    """The whole frames of a file, where they end, and whether a torn tail followed."""

    frames: list[Frame]
    end: int
    torn: bool


def encode_file_header(magic: bytes, sequence: int) -> bytes:
    """Return the 24-byte header of a file with ``magic`` and ``sequence``."""
    head = _FILE_HEADER.pack(magic, FORMAT_VERSION, 0, sequence)
    return head + _CRC.pack(zlib.crc32(head))


def decode_file_header(file: Path, data: bytes, magic: bytes, *, tail: bool) -> int | None:
    """Return the header's sequence number, or ``None`` for a torn header in a tail file."""
    if len(data) < FILE_HEADER_SIZE:
        present = data[: len(magic)]
        if tail and magic.startswith(present):
            return None
        if not magic.startswith(present):
            raise LogCorrupt(file, 0, f"bad magic {present!r}, expected {magic!r}")
        raise LogCorrupt(file, len(data), "file header cut short")
    found, version, _reserved, sequence = _FILE_HEADER.unpack_from(data)
    if found != magic:
        raise LogCorrupt(file, 0, f"bad magic {found!r}, expected {magic!r}")
    _check_version(file, version)
    (crc,) = _CRC.unpack_from(data, _FILE_HEADER.size)
    if crc != zlib.crc32(data[: _FILE_HEADER.size]):
        raise LogCorrupt(file, _FILE_HEADER.size, "file header checksum mismatch")
    return int(sequence)


def _check_version(file: Path, version: int) -> None:
    # Checked before the header CRC: a newer format may lay its header out differently.
    if version > FORMAT_VERSION:
        raise LogCorrupt(
            file, 8, f"format version {version} is newer than supported ({FORMAT_VERSION})"
        )
    if version not in READABLE_VERSIONS:
        raise LogCorrupt(file, 8, f"unknown format version {version}")


def encode_frame(frame_type: FrameType, payload: bytes) -> bytes:
    """Frame ``payload`` with its length, type and both checksums."""
    head = _FRAME_HEAD.pack(len(payload), frame_type)
    head_crc = _CRC.pack(zlib.crc32(head))
    body_crc = _CRC.pack(zlib.crc32(payload, zlib.crc32(head[-1:])))
    return head + head_crc + body_crc + payload


def scan_frames(file: Path, data: bytes, start: int, *, tail: bool) -> FrameScan:
    """Decode every frame of ``data`` from ``start``; a cut-short last frame is torn only if
    ``tail`` (the file is the log's last segment), otherwise it is corruption."""
    frames: list[Frame] = []
    offset = start
    while offset < len(data):
        frame = _decode_frame(file, data, offset, tail=tail)
        if frame is None:
            return FrameScan(frames, offset, torn=True)
        frames.append(frame)
        offset += FRAME_OVERHEAD + len(frame.payload)
    return FrameScan(frames, offset, torn=False)


def _decode_frame(file: Path, data: bytes, offset: int, *, tail: bool) -> Frame | None:
    if len(data) - offset < FRAME_OVERHEAD:
        return _torn_or_raise(file, offset, "record header cut short", tail=tail)
    length, type_code = _FRAME_HEAD.unpack_from(data, offset)
    (head_crc, body_crc) = struct.unpack_from(">II", data, offset + _FRAME_HEAD.size)
    if head_crc != zlib.crc32(data[offset : offset + _FRAME_HEAD.size]):
        raise LogCorrupt(file, offset, "record header checksum mismatch (bad length or type)")
    frame_type = _frame_type(file, offset, type_code, length)
    start = offset + FRAME_OVERHEAD
    if start + length > len(data):
        return _torn_or_raise(file, offset, f"record of {length} bytes cut short", tail=tail)
    payload = data[start : start + length]
    if body_crc != zlib.crc32(payload, zlib.crc32(bytes([type_code]))):
        raise LogCorrupt(file, offset, "record checksum mismatch")
    return Frame(offset, frame_type, payload)


def _frame_type(file: Path, offset: int, type_code: int, length: int) -> FrameType:
    # The header CRC passed, so these can only come from a buggy or foreign writer.
    if length > MAX_RECORD_PAYLOAD and type_code != FrameType.CHECKPOINT:
        raise LogCorrupt(file, offset, f"bad record length {length}")
    try:
        return FrameType(type_code)
    except ValueError:
        raise LogCorrupt(file, offset, f"unknown record type {type_code}") from None


def _torn_or_raise(file: Path, offset: int, problem: str, *, tail: bool) -> Frame | None:
    """A frame cut short is a torn tail (``None``) only in the log's last segment."""
    if tail:
        return None
    raise LogCorrupt(file, offset, problem)
