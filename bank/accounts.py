"""Account references (``pg:a1``, ``mysql:a7``) and money amounts, parsed and validated."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from twopc.bank.errors import InvalidInput

SIDES = ("pg", "mysql")
# Explicit ASCII classes: \d would also match other scripts' digits (Arabic-Indic, fullwidth).
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_AMOUNT = re.compile(r"[0-9]{1,18}(\.[0-9]{1,2})?")
_NATURAL = re.compile(r"(\D*)(\d*)(.*)")


@dataclass(frozen=True, order=True)
class AccountRef:
    """One account on one side: ``side`` is ``pg`` or ``mysql`` (also the participant name)."""

    side: str
    id: str

    @classmethod
    def parse(cls, text: str) -> AccountRef:
        side, sep, account_id = text.partition(":")
        if not sep or side not in SIDES:
            raise InvalidInput(f"account {text!r} must look like pg:<id> or mysql:<id>")
        if not _ACCOUNT_ID.fullmatch(account_id):
            raise InvalidInput(f"account id {account_id!r} must be 1-64 of [A-Za-z0-9_-]")
        return cls(side, account_id)

    def __str__(self) -> str:
        return f"{self.side}:{self.id}"


def parse_amount(text: str) -> Decimal:
    """An exact decimal amount > 0 with at most 2 places (and that fits DECIMAL(20,2)):
    ASCII digits only, nothing around them (no spaces, no sign, no exponent)."""
    if not _AMOUNT.fullmatch(text):
        raise InvalidInput(
            f"amount {text!r} must be a positive decimal with at most 2 places, like 12.50"
        )
    try:
        amount = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise InvalidInput(f"amount {text!r} is not a number") from None
    if amount <= 0:
        raise InvalidInput(f"amount {text!r} must be greater than 0")
    return amount.quantize(Decimal("0.01"))


def natural_key(account_id: str) -> tuple[str, int, str]:
    """Sort ``a2`` before ``a10``."""
    match = _NATURAL.fullmatch(account_id)
    assert match is not None  # the pattern matches every string
    prefix, number, rest = match.groups()
    return prefix, int(number) if number else -1, rest
