"""The generic log record and its JSON payload encoding."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twopc.txlog.errors import LogError


@dataclass(frozen=True)
class Record:
    """One log entry about one transaction.

    The log knows nothing about what ``kind`` means; it only knows that a record with
    ``final=True`` finishes its ``txid``. ``time`` (epoch seconds) is stamped by
    :meth:`txlog.TransactionLog.append`. ``body`` must be JSON-serialisable; it is read
    back as plain JSON (lists, dicts, str keys).
    """

    kind: str
    txid: str
    body: Mapping[str, Any] = field(default_factory=dict)
    final: bool = False
    time: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"record kind must be a non-empty string, got {self.kind!r}")
        if not isinstance(self.txid, str) or not self.txid:
            raise ValueError(f"record txid must be a non-empty string, got {self.txid!r}")

    def stamped(self, time: float) -> Record:
        """A copy of this record with ``time`` set (cheaper than ``dataclasses.replace``)."""
        return Record(self.kind, self.txid, self.body, self.final, time)

    def to_json(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dict (for ``twopc log show --json``)."""
        return {
            "kind": self.kind,
            "txid": self.txid,
            "body": dict(self.body),
            "final": self.final,
            "time": self.time,
        }


# Built once: json.dumps with non-default options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)


def encode_json(value: Any) -> bytes:
    """Encode ``value`` as compact, key-sorted, strict JSON (no NaN)."""
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as err:
        raise LogError(f"record is not JSON-serialisable: {err}") from err
    return text.encode("utf-8")


def record_fields(record: Record) -> dict[str, Any]:
    """The payload fields of ``record``; ``final`` travels in the frame's type."""
    return {"kind": record.kind, "txid": record.txid, "body": record.body, "time": record.time}


def record_from_fields(fields: Any, *, final: bool) -> Record:
    """Rebuild a record from decoded payload fields; ``ValueError`` if malformed."""
    if not isinstance(fields, dict):
        raise ValueError("record payload is not a JSON object")
    kind, txid, body, stamp = (fields.get(k) for k in ("kind", "txid", "body", "time"))
    if not isinstance(body, dict) or not isinstance(stamp, int | float):
        raise ValueError("record payload lacks a body object or a numeric time")
    if not isinstance(kind, str) or not isinstance(txid, str):
        raise ValueError("record payload lacks a kind or txid string")
    return Record(kind=kind, txid=txid, body=body, final=final, time=float(stamp))
