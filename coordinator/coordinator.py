"""The coordinator: owns a decision log, a set of participants, and the transactions it runs.

A coordinator has an id. Its log lives in ``<home>/txlog/<coordinator-id>/`` and it holds the
log's exclusive lock for as long as it is alive, so any other process can tell whether it is
alive by trying that lock. A coordinator opened without an id gets a fresh one (a one-shot
coordinator); its log directory is removed on a clean close when it holds nothing unfinished.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.crashpoints import ProtocolHooks
from coordinator.errors import CoordinatorBusy, CoordinatorError
from coordinator.ids import check_coordinator_id, fresh_coordinator_id, mint_gtrid
from coordinator.retry import RetryPolicy
from coordinator.transaction import GlobalTransaction, TxState
from participants import Participant
from txlog import LogLocked, TransactionLog

log = logging.getLogger(__name__)


def log_directory(home: Path, coordinator_id: str) -> Path:
    """Where the log of ``coordinator_id`` lives under ``home``."""
    return home / "txlog" / check_coordinator_id(coordinator_id)


@dataclass(frozen=True)
class CoordinatorConfig:
    """How a coordinator runs. ``coordinator_id=None`` means a fresh one-shot id."""

    home: Path
    coordinator_id: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    prepare_timeout: float = 30.0
    hooks: ProtocolHooks | None = None


class Coordinator:
    """Runs presumed-abort two-phase commit over its participants.

    >>> with Coordinator.open([pg, mysql], CoordinatorConfig(home)) as coordinator:
    ...     with coordinator.transaction() as tx:
    ...         tx["pg"].execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", ...)
    ...         tx["mysql"].execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", ...)
    ...     print(tx.outcome.protocol)
    """

    def __init__(
        self, participants: Sequence[Participant], config: CoordinatorConfig, txlog: TransactionLog
    ) -> None:
        self.id = config.coordinator_id or ""
        self.log = txlog
        self.retry = config.retry
        self.prepare_timeout = config.prepare_timeout
        self.hooks = config.hooks
        self.executor = ThreadPoolExecutor(max_workers=max(2, len(participants)))
        self._participants = {p.name: p for p in participants}
        self._ephemeral = False

    @classmethod
    def open(cls, participants: Sequence[Participant], config: CoordinatorConfig) -> Coordinator:
        """Take this coordinator id's log (and its lock); raises CoordinatorBusy if held."""
        ephemeral = config.coordinator_id is None
        coordinator_id = config.coordinator_id or fresh_coordinator_id()
        try:
            txlog = TransactionLog.open(log_directory(config.home, coordinator_id))
        except LogLocked as err:
            raise CoordinatorBusy(
                f"coordinator {coordinator_id} is already running (its log is locked)"
            ) from err
        config = CoordinatorConfig(
            config.home, coordinator_id, config.retry, config.prepare_timeout, config.hooks
        )
        coordinator = cls(participants, config, txlog)
        coordinator._ephemeral = ephemeral
        return coordinator

    def participant(self, name: str) -> Participant:
        """The participant called ``name``."""
        try:
            return self._participants[name]
        except KeyError:
            raise CoordinatorError(f"no participant named {name!r}") from None

    def begin(self) -> GlobalTransaction:
        """Start a global transaction; finish it with ``commit()`` or ``rollback()``."""
        return GlobalTransaction(self, mint_gtrid(self.id))

    @contextmanager
    def transaction(self) -> Iterator[GlobalTransaction]:
        """A global transaction committed with 2PC on normal exit, rolled back on error.

        After the block, the transaction's ``outcome`` says how it committed.
        """
        transaction = self.begin()
        try:
            yield transaction
            transaction.commit()
        except BaseException:
            if transaction.state is TxState.ACTIVE:
                transaction.rollback()
            raise
        finally:
            transaction.close()

    def close(self) -> None:
        """Release the log (and remove it when one-shot and nothing is unfinished)."""
        self.executor.shutdown(wait=True)
        if self._ephemeral and not self.log.unfinished():
            self.log.destroy()
        else:
            self.log.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
