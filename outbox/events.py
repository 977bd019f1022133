"""An event as its writer makes it, the outbox table keeps it and the broker carries it.

The writer mints the event id (a UUID) and the time, so the id is the event's identity from
the moment it exists: the relay publishes it as the message id, and consumers remember it to
absorb a redelivery. The message body is one JSON document, the envelope.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twopc.outbox.errors import InvalidEvent

#: Longest aggregate and event type (the columns are VARCHAR(200); a type is a routing key).
MAX_NAME = 200


@dataclass(frozen=True)
class OutboxEvent:
    """One event: what happened (``type``, e.g. ``transfer.committed``), to which aggregate
    (e.g. the account ``mysql:a2``; events of one aggregate are published in the order they
    were written), with a JSON ``payload``."""

    event_id: str
    aggregate: str
    type: str
    payload: Mapping[str, Any]
    created_at: float

    def __post_init__(self) -> None:
        try:
            uuid.UUID(self.event_id)
        except (ValueError, TypeError, AttributeError):
            raise InvalidEvent(f"event id {self.event_id!r} is not a UUID") from None
        for field, value in (("aggregate", self.aggregate), ("type", self.type)):
            if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
                raise InvalidEvent(f"event {field} must be 1-{MAX_NAME} characters: {value!r}")
        if not isinstance(self.payload, Mapping):
            raise InvalidEvent("event payload must be a JSON object")
        if not isinstance(self.created_at, int | float) or not math.isfinite(self.created_at):
            raise InvalidEvent(f"event created_at must be a time: {self.created_at!r}")
        self.payload_json()  # refuses a payload JSON cannot carry

    @classmethod
    def new(cls, aggregate: str, type: str, payload: Mapping[str, Any]) -> OutboxEvent:
        """A new event with a fresh id, made now."""
        return cls(str(uuid.uuid4()), aggregate, type, dict(payload), time.time())

    def payload_json(self) -> str:
        """The payload as the outbox stores it (canonical JSON text)."""
        try:
            return json.dumps(self.payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise InvalidEvent(f"event payload is not JSON: {err}") from None

    def to_message(self) -> bytes:
        """The message body the broker carries (the envelope)."""
        envelope = {
            "event_id": self.event_id,
            "aggregate": self.aggregate,
            "type": self.type,
            "created_at": self.created_at,
            "payload": self.payload,
        }
        return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_message(cls, body: bytes) -> OutboxEvent:
        """The event a message body carries; :class:`InvalidEvent` when it carries none."""
        try:
            envelope = json.loads(body)
            return cls(
                envelope["event_id"],
                envelope["aggregate"],
                envelope["type"],
                envelope["payload"],
                envelope["created_at"],
            )
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidEvent(f"message carries no event: {err}") from None

    @classmethod
    def from_row(
        cls, event_id: str, aggregate: str, type: str, payload: str, created_at: float
    ) -> OutboxEvent:
        """The event an outbox row holds (``payload`` as stored JSON text)."""
        return cls(str(event_id), str(aggregate), str(type), json.loads(payload), float(created_at))
