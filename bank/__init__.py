"""The demo bank: the domain on top of both engines.

A transfer moves an amount from one account to another, on the same server or across
PostgreSQL and MySQL/MariaDB. Its changes (debit, credit, the hold that shows money in
flight, the notification) are written once (``bank.ledger``) and run on either engine: as one
two-phase-commit global transaction (:func:`run_transfer`, with the coordinator), or as the
saga :data:`TRANSFER_SAGA` (:func:`run_transfer_saga`, with the saga orchestrator).
:func:`read_balances` also shows what unfinished sagas hold as pending. The schema lives in
``bank.schema`` (imported on demand: it pulls in SQLAlchemy's DDL machinery).
"""

from twopc.bank.accounts import SIDES, AccountRef, natural_key, parse_amount
from twopc.bank.errors import InvalidInput, TransferRejected
from twopc.bank.transfer import Balances, Transfer, read_balances, run_transfer
from twopc.bank.transfer_saga import (
    TRANSFER_POINTS,
    TRANSFER_SAGA,
    TRANSFER_SAGAS,
    TransferPoint,
    amount_held,
    describe_transfer,
    run_transfer_saga,
    saga_transfer,
    transfer_of,
    transfer_params,
    transfer_reports,
)

__all__ = [
    "SIDES",
    "TRANSFER_POINTS",
    "TRANSFER_SAGA",
    "TRANSFER_SAGAS",
    "AccountRef",
    "Balances",
    "InvalidInput",
    "Transfer",
    "TransferPoint",
    "TransferRejected",
    "amount_held",
    "describe_transfer",
    "natural_key",
    "parse_amount",
    "read_balances",
    "run_transfer",
    "run_transfer_saga",
    "saga_transfer",
    "transfer_of",
    "transfer_params",
    "transfer_reports",
]
