"""The coordinator: owns a decision log, a set of participants, and the transactions it runs.

A coordinator has an id. Its log lives in ``<home>/txlog/<coordinator-id>/`` and it holds the
log's exclusive lock for as long as it is alive, so any other process can tell whether it is
alive by trying that lock. A coordinator opened without an id gets a fresh one (a one-shot
coordinator); its log directory is removed on a clean close when it holds nothing unfinished.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from twopc.coordinator.contention import LockContention
from twopc.coordinator.crashpoints import ProtocolHooks
from twopc.coordinator.errors import CoordinatorBusy, CoordinatorError
from twopc.coordinator.facts import coordinator_home
from twopc.coordinator.ids import fresh_coordinator_id, mint_gtrid
from twopc.coordinator.recovery import RecoveryReport, forget_markers, recover_own
from twopc.coordinator.transaction import GlobalTransaction, TxState
from twopc.coordinator.workers import Workers
from twopc.participants import Participant
from twopc.participants.watchdog import Watchdog
from twopc.retry import RetryPolicy
from twopc.txlog import LogCorrupt, LogError, LogLocked, TransactionLog

log = logging.getLogger(__name__)


def log_directory(home: Path, coordinator_id: str) -> Path:
    """Where the log of ``coordinator_id`` lives under ``home``."""
    return coordinator_home(home).path(coordinator_id)


@dataclass(frozen=True)
class CoordinatorConfig:
    """How a coordinator runs. ``coordinator_id=None`` means a fresh one-shot id."""

    home: Path
    coordinator_id: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    prepare_timeout: float = 30.0
    hooks: ProtocolHooks | None = None
    #: Threads that run branches' prepares and commits, shared by concurrent transactions:
    #: each needs one per branch at once, so beyond ``protocol_threads / branches``
    #: concurrent transactions their phases queue.
    protocol_threads: int = 64
    #: Seconds phase 2 waits past the retry deadline for its workers before it cuts their
    #: links (the deadline holds even against a server that stopped answering).
    phase_two_grace: float = 5.0
    #: Seconds :meth:`Coordinator.close` waits for protocol workers still running.
    close_patience: float = 5.0
    #: Whether ``commit()`` returns at the commit point (the COMMIT record durable), with
    #: phase 2 and the END record left to a background worker. Nothing acknowledged is lost
    #: either way (the decision is in the log), but until phase 2 ends the branches stay
    #: prepared: their rows stay locked, and a reader sees the transaction's writes on no
    #: server, or on one only. Off by default: ``commit()`` returns once every branch
    #: committed.
    acknowledge_at_decision: bool = False
    #: With ``acknowledge_at_decision``: at most this many transactions in background phase 2
    #: at once; a commit that finds no room runs its phase 2 itself (back-pressure).
    phase_two_backlog: int = 4

    def __post_init__(self) -> None:
        if self.protocol_threads < 2:
            raise ValueError(f"protocol_threads must be at least 2, got {self.protocol_threads}")
        if self.phase_two_backlog < 1:
            raise ValueError(f"phase_two_backlog must be at least 1, got {self.phase_two_backlog}")
        for name in ("prepare_timeout", "phase_two_grace", "close_patience"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:  # also refuses nan
                raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")


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
        self.config = config
        self.log = txlog
        self.retry = config.retry
        self.prepare_timeout = config.prepare_timeout
        self.hooks = config.hooks
        self.executor = Workers(config.protocol_threads, "twopc-protocol")
        # Marker garbage collection has its own thread: waiting on a lock there must never
        # hold up a prepare or a commit (that could be the very commit it waits for).
        self._collector = Workers(1, "twopc-markers")
        # Phase 2 of transactions acknowledged at their decision (acknowledge_at_decision).
        self._phase_two = Workers(config.phase_two_backlog, "twopc-phase-two")
        self._backlog = _Backlog(config.phase_two_backlog)
        #: Deadlines of the replies a transaction reads on its own thread (see
        #: ``transaction._CutOff``): one thread for all of them.
        self.deadlines = Watchdog("twopc-deadlines")
        #: How often last statements sent together found a row locked (see execute_last).
        self.contention = LockContention()
        self.recovered: RecoveryReport | None = None
        self._participants = {p.name: p for p in participants}
        self._ephemeral = False
        self._markers = MarkerCollector(participants)
        self._gc_batch = 64
        # Transactions whose commit started and that are not settled yet (see
        # GlobalTransaction.settled): while any is, the log must stay, even if it is empty.
        self._unsettled: dict[str, GlobalTransaction] = {}
        self._unsettled_lock = threading.Lock()
        #: The transaction most recently begun (what a one-shot caller reports on after an
        #: interruption); None before the first.
        self.last_begun: GlobalTransaction | None = None
        self._closed = False

    @classmethod
    def open(cls, participants: Sequence[Participant], config: CoordinatorConfig) -> Coordinator:
        """Take this coordinator id's log (and its lock), then get ready for new work.

        A coordinator with a stable id first resolves its own in-doubt transactions from its
        log (``recovered`` reports what it did). Raises CoordinatorBusy if the log is held.
        """
        ephemeral = config.coordinator_id is None
        coordinator_id = config.coordinator_id or fresh_coordinator_id()
        txlog = _open_log(log_directory(config.home, coordinator_id), coordinator_id)
        config = replace(config, coordinator_id=coordinator_id)
        coordinator = cls(participants, config, txlog)
        coordinator._ephemeral = ephemeral
        try:
            coordinator._get_ready(participants, recover=not ephemeral)
        except BaseException:
            coordinator.close()
            raise
        return coordinator

    def _get_ready(self, participants: Sequence[Participant], *, recover: bool) -> None:
        for participant in participants:
            participant.ensure_outcome_table()
        if recover:
            self.recovered = recover_own(self.log, self.id, participants)
            for problem in self.recovered.problems:
                log.warning("coordinator %s: %s", self.id, problem)

    def participant(self, name: str) -> Participant:
        """The participant called ``name``."""
        try:
            return self._participants[name]
        except KeyError:
            raise CoordinatorError(f"no participant named {name!r}") from None

    def begin(self) -> GlobalTransaction:
        """Start a global transaction; finish it with ``commit()`` or ``rollback()``."""
        self.last_begun = GlobalTransaction(self, mint_gtrid(self.id))
        return self.last_begun

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

    def note_ended(self, gtrid: str) -> None:
        """An END record for ``gtrid`` was appended (not yet forced)."""
        self._markers.ended(gtrid)

    def last_end(self) -> int:
        """Sequence number of the last END appended; pass it to :meth:`note_forced`."""
        return self._markers.last

    def note_forced(self, last_end: int) -> None:
        """A forced append that began after END number ``last_end`` returned: those ENDs are
        durable, and their markers can go (in the background, in batches)."""
        batch = self._markers.durable(last_end, minimum=self._gc_batch)
        if batch:
            self._collector.submit(functools.partial(self._markers.forget, batch))

    def reserve_phase_two(self) -> bool:
        """Take a place in the background phase-2 backlog; False when it is full."""
        return self._backlog.reserve()

    def run_phase_two(self, phase_two: Callable[[], None]) -> None:
        """Run a transaction's ``phase_two`` (which never raises) on a background worker, in
        the place :meth:`reserve_phase_two` took."""
        try:
            self._phase_two.submit(functools.partial(self._backlog.run, phase_two))
        except BaseException:
            self._backlog.release()
            raise

    def wait_for_phase_two(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no transaction acknowledged at its decision
        is still in phase 2; whether none is (each ended COMMITTED or IN_DOUBT)."""
        return self._backlog.wait_empty(timeout)

    def track(self, transaction: GlobalTransaction) -> None:
        """``transaction`` may leave prepared branches behind until it is settled."""
        with self._unsettled_lock:
            self._unsettled[transaction.gtrid] = transaction

    def untrack(self, transaction: GlobalTransaction) -> None:
        """``transaction`` is settled: nothing of it can still be prepared."""
        with self._unsettled_lock:
            self._unsettled.pop(transaction.gtrid, None)

    def unsettled(self) -> list[GlobalTransaction]:
        """Transactions of this coordinator that may still hold prepared branches, or whose
        outcome is unknown (an interrupted or in-doubt commit, an unconfirmed rollback).
        Their log stays: recovery decides them from it."""
        with self._unsettled_lock:
            return [tx for tx in self._unsettled.values() if not tx.settled]

    def close(self) -> None:
        """Release the log (and remove it when one-shot, nothing is unfinished and nothing
        unsettled), then garbage-collect the outcome markers of transactions that ended.

        Waits at most ``close_patience`` seconds for protocol workers still running: one
        stuck on a server that stopped answering is left behind (its transaction is already
        reported in doubt, and its decision is in the log).
        """
        if self._closed:
            return
        self._closed = True
        # Background phase 2s first: they may still use the protocol workers. Each is bounded
        # by the retry deadline and its grace, as a phase 2 run by commit() itself is.
        config = self.config
        self.wait_for_phase_two(config.retry.deadline + config.phase_two_grace + 1.0)
        self._phase_two.close(config.close_patience)
        self.executor.close(config.close_patience)
        self._collector.close(config.close_patience)
        self.deadlines.close()
        # ENDs durable, then their markers, then the log: killed anywhere in between, the
        # log is still there for recovery to finish the collection from.
        try:
            self.log.sync()
        except LogError:
            self.log.close()  # raises the same failure; nothing is collected past it
            raise
        self._markers.forget(self._markers.durable(self._markers.last, minimum=1))
        if self._ephemeral and not self.unsettled() and not self.log.unfinished():
            self.log.destroy()
        else:
            self.log.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_log(path: Path, coordinator_id: str) -> TransactionLog:
    try:
        return TransactionLog.open(path)
    except LogLocked as err:
        raise CoordinatorBusy(
            f"coordinator {coordinator_id} is already running, or being recovered "
            "(its log is locked)"
        ) from err
    except LogCorrupt as err:
        raise CoordinatorError(
            f"the log of coordinator {coordinator_id} is damaged ({err}); it will not start, "
            "since decisions may be lost: check it with `twopc log verify`"
        ) from err


class _Backlog:
    """Counts the background phase 2s under way, up to a limit, and lets one wait for none."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._running = 0
        self._condition = threading.Condition()

    def reserve(self) -> bool:
        with self._condition:
            if self._running >= self._limit:
                return False
            self._running += 1
            return True

    def release(self) -> None:
        with self._condition:
            self._running -= 1
            if not self._running:
                self._condition.notify_all()

    def run(self, work: Callable[[], None]) -> None:
        try:
            work()
        finally:
            self.release()

    def wait_empty(self, timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: not self._running, timeout)


class MarkerCollector:
    """Deletes the outcome markers of ended transactions, once their END is durable.

    A marker must outlive any COMMIT record without a durable END: recovery and audit read
    "no marker" as "rolled back". ENDs are not forced, so they are counted durable only when
    a later forced append (or the log's close) has synced them, and deleted in batches off
    the hot path.
    """

    def __init__(self, participants: Sequence[Participant]) -> None:
        self._participants = list(participants)
        self._sequence = 0
        self._pending: list[tuple[int, str]] = []
        self._ready: list[str] = []
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        """Sequence number of the last END appended."""
        with self._lock:
            return self._sequence

    def ended(self, gtrid: str) -> None:
        with self._lock:
            self._sequence += 1
            self._pending.append((self._sequence, gtrid))

    def durable(self, upto: int, *, minimum: int) -> list[str]:
        """ENDs up to sequence ``upto`` are on disk; returns them once ``minimum`` are ready."""
        with self._lock:
            self._ready += [gtrid for seq, gtrid in self._pending if seq <= upto]
            self._pending = [(seq, gtrid) for seq, gtrid in self._pending if seq > upto]
            if len(self._ready) < max(1, minimum):
                return []
            batch, self._ready = self._ready, []
            return batch

    def forget(self, gtrids: list[str]) -> None:
        forget_markers(self._participants, gtrids)
