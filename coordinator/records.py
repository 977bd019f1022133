"""The coordinator's log records as types: written in one place, read back in every other.

- :class:`CommitDecision` — the COMMIT record, forced before phase 2: the gtrid and every
  branch it prepared (participant name, server, bqual);
- :class:`EndRecord` — the END record: every branch acknowledged (``by`` the coordinator, by
  recovery, or by an operator's resolution);
- :class:`Resolution` records (``RESOLVE``, in the operator's log) are
  :class:`twopc.coordinator.resolve.ManualResolution`.

``from_record`` refuses (``ValueError``) a record that is not of its kind or is malformed, so
nothing downstream reads a bare dict.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twopc.txlog import Record


class Kind(enum.Enum):
    """The kinds of record in a coordinator's log and in the operator's log."""

    COMMIT = "COMMIT"
    END = "END"
    RESOLVE = "RESOLVE"


class EndedBy(enum.Enum):
    """Who wrote an END record."""

    COORDINATOR = "coordinator"
    RECOVERY = "recovery"
    OPERATOR = "operator"


@dataclass(frozen=True)
class BranchEntry:
    """One prepared branch a COMMIT decision covers."""

    name: str  # the participant's name
    server: str  # where it lives, for people (no credentials)
    bqual: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "server": self.server, "bqual": self.bqual}

    @classmethod
    def from_json(cls, document: Any) -> BranchEntry:
        if not isinstance(document, Mapping):
            raise ValueError(f"a branch entry is not an object: {document!r}")
        server = str(document.get("server", ""))
        return cls(_text(document, "name"), server, _text(document, "bqual"))


@dataclass(frozen=True)
class CommitDecision:
    """The COMMIT record: the commit point of ``gtrid`` once it is durable."""

    gtrid: str
    branches: tuple[BranchEntry, ...]

    def record(self) -> Record:
        body = {"branches": [branch.to_json() for branch in self.branches]}
        return Record(Kind.COMMIT.value, self.gtrid, body)

    @classmethod
    def from_record(cls, record: Record) -> CommitDecision:
        _expect(record, Kind.COMMIT)
        entries = record.body.get("branches")
        if not isinstance(entries, list):
            raise ValueError(f"COMMIT record of {record.txid} lists no branches")
        return cls(record.txid, tuple(BranchEntry.from_json(entry) for entry in entries))


@dataclass(frozen=True)
class EndRecord:
    """The END record: ``gtrid`` is finished; its log space and markers can go."""

    gtrid: str
    by: EndedBy = EndedBy.COORDINATOR
    decision: str | None = None  # an operator's, when one ended it

    def record(self) -> Record:
        body: dict[str, str] = {}
        if self.by is not EndedBy.COORDINATOR:
            body["by"] = self.by.value
        if self.decision is not None:
            body["decision"] = self.decision
        return Record(Kind.END.value, self.gtrid, body, final=True)

    @classmethod
    def from_record(cls, record: Record) -> EndRecord:
        _expect(record, Kind.END)
        by = EndedBy(record.body.get("by", EndedBy.COORDINATOR.value))
        decision = record.body.get("decision")
        return cls(record.txid, by, None if decision is None else str(decision))


def _expect(record: Record, kind: Kind) -> None:
    if record.kind != kind.value:
        raise ValueError(f"expected a {kind.value} record, got {record.kind} of {record.txid}")


def _text(document: Mapping[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} is missing or not text in {dict(document)!r}")
    return value
