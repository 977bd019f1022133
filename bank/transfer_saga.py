"""The transfer as a saga definition, run by the saga engine (:mod:`twopc.saga`).

1. **debit** SOURCE (compensable): take the amount and record a hold — the semantic lock
   that shows the money as pending while the saga is unfinished. Compensation: **refund**
   it and drop the hold. Once the credit has applied, the hold is **released**.
2. **credit** DEST: the pivot. Once it commits the saga can only go forward.
3. **notify**: append a line to DEST's notifications — irreversible, so it runs after the
   pivot, and is retried until it succeeds, never compensated.

A business refusal (unknown account, insufficient funds) is a REJECTED result, stored under
the step's key like any other, so a replay gets the same answer. The saga's parameters are
the transfer's source, destination and amount as text — what logs from before sagas were
definitions hold too, so those are read as this definition (:data:`TRANSFER_SAGAS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from twopc.bank import ledger
from twopc.bank.accounts import AccountRef, parse_amount
from twopc.bank.events import announce_transfer
from twopc.bank.tables import ensure_transfer_tables
from twopc.bank.transfer import Transfer
from twopc.participants import LocalTransaction
from twopc.saga import (
    APPLIED,
    REJECTED,
    CompensationFailed,
    Orchestrator,
    Params,
    SagaDefinition,
    SagaOutcome,
    SagaPoint,
    SagaRegistry,
    SagaRun,
    SagaState,
    Step,
    StepReport,
    StepResult,
    step_reports,
)
from twopc.saga.steps import Work, compensation_work, forward_work

DEBIT, CREDIT, NOTIFY = 1, 2, 3


def transfer_params(transfer: Transfer, *, announce: bool = True) -> dict[str, str]:
    """The transfer as saga parameters (what its BEGIN record holds). ``announce=False``
    (benchmarks) adds ``"announce": "no"``: the credit then writes no outbox event."""
    params = {
        "source": str(transfer.source),
        "destination": str(transfer.destination),
        "amount": str(transfer.amount),
    }
    return params if announce else params | {"announce": "no"}


def transfer_of(params: Params) -> Transfer:
    """The transfer saga parameters describe; ``InvalidInput`` (a ValueError) when bad."""
    return Transfer(
        AccountRef.parse(params["source"]),
        AccountRef.parse(params["destination"]),
        parse_amount(params["amount"]),
    )


def describe_transfer(transfer: Transfer) -> str:
    """The transfer saga's request, as its idempotency keys record it."""
    return f"{transfer.source} -> {transfer.destination} {transfer.amount}"


# -- the steps --------------------------------------------------------------------------------


def _debit(tx: LocalTransaction, run: SagaRun) -> StepResult:
    transfer = transfer_of(run.params)
    refusal = ledger.debit(tx, transfer.source, transfer.amount)
    if refusal is not None:
        return StepResult(REJECTED, {"reason": refusal})
    ledger.hold(tx, run.saga_id, transfer.source, transfer.amount)
    balance = ledger.balance_of(tx, transfer.source)
    return StepResult(APPLIED, {"balance": balance, "held": str(transfer.amount)})


def _refund(tx: LocalTransaction, run: SagaRun) -> StepResult:
    source, amount = _source(run.params), transfer_of(run.params).amount
    if ledger.credit(tx, source, amount) is not None:
        raise CompensationFailed(f"cannot refund {amount} to {source}: the account is gone")
    ledger.release_hold(tx, run.saga_id, source)
    return StepResult(APPLIED, {"balance": ledger.balance_of(tx, source)})


def _release(tx: LocalTransaction, run: SagaRun) -> StepResult:
    released = ledger.release_hold(tx, run.saga_id, _source(run.params))
    return StepResult(APPLIED, {"released": str(released)})


def _credit(tx: LocalTransaction, run: SagaRun) -> StepResult:
    transfer = transfer_of(run.params)
    refusal = ledger.credit(tx, transfer.destination, transfer.amount)
    if refusal is not None:
        return StepResult(REJECTED, {"reason": refusal})
    balance = ledger.balance_of(tx, transfer.destination)
    if run.params.get("announce") == "no":
        return StepResult(APPLIED, {"balance": balance})
    # The pivot: once it commits the transfer only goes forward, so it is announced here,
    # in the step's own local transaction (a replay returns the stored result: no 2nd event).
    event = announce_transfer(tx, transfer, run.saga_id, "saga")
    return StepResult(APPLIED, {"balance": balance, "event_id": event.event_id})


def _notify(tx: LocalTransaction, run: SagaRun) -> StepResult:
    message = f"saga {run.saga_id}: {describe_transfer(transfer_of(run.params))} completed"
    ledger.notify(tx, run.saga_id, message)
    return StepResult(APPLIED, {"message": message})


def _source(params: Params) -> AccountRef:
    return AccountRef.parse(params["source"])


def _destination(params: Params) -> AccountRef:
    return AccountRef.parse(params["destination"])


def _at_source(params: Params) -> str:
    return f"{_source(params)} {transfer_of(params).amount}"


def _at_destination(params: Params) -> str:
    return f"{_destination(params)} {transfer_of(params).amount}"


def _source_side(params: Params) -> str:
    return _source(params).side


def _destination_side(params: Params) -> str:
    return _destination(params).side


#: The transfer saga: debit (compensated by a refund; its hold released after the credit),
#: credit (the pivot), notify (after the pivot: retried, never compensated).
TRANSFER_SAGA = SagaDefinition(
    "transfer",
    [
        Step(
            "debit",
            on=_source_side,
            action=_debit,
            compensation=_refund,
            compensation_name="refund",
            release=_release,
            subject=_at_source,
        ),
        Step("credit", on=_destination_side, action=_credit, pivot=True, subject=_at_destination),
        Step("notify", on=_destination_side, action=_notify, subject=_at_destination),
    ],
    describe=lambda params: describe_transfer(transfer_of(params)),
    check=transfer_of,
    setup=ensure_transfer_tables,
)

#: What the CLI resumes and recovers: the transfer saga, also for logs naming no definition.
TRANSFER_SAGAS = SagaRegistry([TRANSFER_SAGA], unnamed=TRANSFER_SAGA.name)


def run_transfer_saga(
    orchestrator: Orchestrator,
    transfer: Transfer,
    saga_id: str | None = None,
    *,
    announce: bool = True,
) -> SagaOutcome:
    """Run ``transfer`` as saga ``saga_id`` (default: a fresh id) on ``orchestrator``; with
    ``announce`` (the default) its credit writes the ``transfer.committed`` event."""
    params = transfer_params(transfer, announce=announce)
    return orchestrator.run(TRANSFER_SAGA, params, saga_id)


# -- reading a transfer saga ------------------------------------------------------------------


def saga_transfer(state: SagaState) -> Transfer | None:
    """The transfer saga ``state`` moves (None when it is no readable transfer saga)."""
    if not state.began or TRANSFER_SAGAS.get(state.definition) is not TRANSFER_SAGA:
        return None
    try:
        return transfer_of(state.params)
    except (KeyError, TypeError, ValueError):
        return None


def amount_held(state: SagaState) -> Decimal:
    """The amount this unfinished saga holds as pending (zero once released or refunded)."""
    transfer = saga_transfer(state)
    if transfer is None or not state.holding(DEBIT):
        return Decimal("0.00")
    return transfer.amount


def transfer_reports(state: SagaState) -> list[StepReport]:
    """What the saga did, step by step, in the transfer's words when it is one."""
    known = saga_transfer(state) is not None
    return step_reports(state, TRANSFER_SAGA if known else None)


def forward_step(saga_id: str, transfer: Transfer, n: int) -> Work:
    """Forward step ``n`` of the transfer saga ``saga_id``, as the engine runs it."""
    return forward_work(TRANSFER_SAGA, SagaRun(saga_id, transfer_params(transfer)), n)


def compensation(saga_id: str, transfer: Transfer, n: int) -> Work:
    """The compensation of step ``n`` (only the debit has one)."""
    return compensation_work(TRANSFER_SAGA, SagaRun(saga_id, transfer_params(transfer)), n)


# -- where `twopc transfer --mode saga` can stop -----------------------------------------------


@dataclass(frozen=True)
class TransferPoint:
    """A point of the transfer saga, by the name the CLI gives it: the engine's point and
    the step it is reached at (None: any step)."""

    point: SagaPoint
    step: int | None
    help: str


TRANSFER_POINTS = {
    "after-debit": TransferPoint(
        SagaPoint.AFTER_STEP, DEBIT, "the debit committed and logged, nothing credited"
    ),
    "after-credit": TransferPoint(
        SagaPoint.AFTER_STEP,
        CREDIT,
        "the credit committed and logged, hold not released, no notification",
    ),
    "after-compensation": TransferPoint(
        SagaPoint.AFTER_COMPENSATION, None, "a compensation committed and logged, no END record"
    ),
    "after-step-commit": TransferPoint(
        SagaPoint.AFTER_STEP_COMMIT,
        None,
        "a step's local transaction committed, the orchestrator has not logged it "
        "(the dual-write gap; --at-step N picks the step, default the first)",
    ),
}
