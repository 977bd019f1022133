"""The demo bank: accounts on both servers, the transfer operation, balances and the schema.

This is the business operation the coordinator makes atomic: debit one account, credit
another, on the same server or across PostgreSQL and MySQL/MariaDB.
"""

from bank.accounts import SIDES, AccountRef, natural_key, parse_amount
from bank.errors import InvalidInput, TransferRejected
from bank.schema import init_schema
from bank.transfer import Balances, Transfer, read_balances, run_transfer

__all__ = [
    "SIDES",
    "AccountRef",
    "Balances",
    "InvalidInput",
    "Transfer",
    "TransferRejected",
    "init_schema",
    "natural_key",
    "parse_amount",
    "read_balances",
    "run_transfer",
]
