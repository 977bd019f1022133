"""The outbox's errors: a bad event, a broker that is away, a broker that says no."""

from __future__ import annotations


class OutboxError(Exception):
    """Base of the outbox's errors."""


class InvalidEvent(OutboxError, ValueError):
    """An event (or a message meant to carry one) that is malformed; nothing was written."""


class BrokerUnavailable(OutboxError):
    """The broker cannot be reached, or the link to it was lost: nothing is known about the
    messages not yet confirmed, so they stay in the outbox and are published again later."""


class BrokerRefused(OutboxError):
    """The broker answered, and refused this one message (unroutable, nacked, or a channel
    error it caused). The message counts an attempt; after too many it is parked."""
