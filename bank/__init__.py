"""The demo bank: accounts on both servers, the transfer operation, balances and the schema.

This is the business operation the coordinator makes atomic: debit one account, credit
another, on the same server or across PostgreSQL and MySQL/MariaDB. :func:`read_balances`
also shows what unfinished sagas hold as pending (see :mod:`saga`). The schema lives in
``bank.schema`` (imported on demand: it pulls in SQLAlchemy's DDL machinery).
"""

from twopc.bank.accounts import SIDES, AccountRef, natural_key, parse_amount
from twopc.bank.errors import InvalidInput, TransferRejected
from twopc.bank.transfer import Balances, Transfer, read_balances, run_transfer

__all__ = [
    "SIDES",
    "AccountRef",
    "Balances",
    "InvalidInput",
    "Transfer",
    "TransferRejected",
    "natural_key",
    "parse_amount",
    "read_balances",
    "run_transfer",
]
