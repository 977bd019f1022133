"""Errors of the demo bank domain."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Malformed user input (amount, account reference); nothing was attempted."""


class TransferRejected(Exception):
    """A business rule refused the transfer (unknown account, insufficient funds).

    Raised inside the global transaction, so every branch is rolled back.
    """
