"""One global transaction and the presumed-abort two-phase commit protocol that finishes it.

State machine (one field, ``state``)::

    ACTIVE ─commit()─▶ PREPARING ─all prepared, COMMIT forced─▶ COMMITTING ─all acked─▶ COMMITTED
       │                   └─any NO vote / error / timeout / interrupt─▶ ABORTED
       └─rollback()─▶ ABORTED              COMMITTING ─phase 2 deadline / interrupt─▶ IN_DOUBT

The COMMIT record's fsync is the commit point. Abort writes nothing (presumed abort): a
prepared branch whose gtrid has no COMMIT record in its coordinator's log is rolled back by
recovery once that coordinator is dead.

``commit()`` returns once phase 2 is over, unless the coordinator acknowledges at the
decision (``CoordinatorConfig.acknowledge_at_decision``): it then returns at the commit
point, with the outcome's state COMMITTING, and phase 2 and the END record run on a
background worker, which replaces ``outcome`` with the final one (COMMITTED, or IN_DOUBT for
recovery to finish) and lets the branches' connections go.

Anything that interrupts ``commit()`` (an exception from a hook or a bug, ``KeyboardInterrupt``,
a signal turned into an exception) is handled by where the protocol stands, then re-raised:
before the decision, every prepared branch is rolled back; while the COMMIT record is being
forced, or after, the transaction is left IN_DOUBT for recovery (the log decides). Until a
transaction is settled — committed, or rolled back everywhere — its coordinator keeps its log,
so recovery can always find the decision or presume abort.
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from twopc.coordinator.crashpoints import CrashPoint
from twopc.coordinator.errors import (
    InDoubt,
    OutcomeUnknown,
    TransactionAborted,
    TransactionStateError,
)
from twopc.coordinator.records import BranchEntry, CommitDecision, EndRecord, Kind
from twopc.participants import (
    Branch,
    BranchState,
    Cursor,
    LockBusy,
    Participant,
    ParticipantError,
    ParticipantUnavailable,
    StatementFailed,
    UnknownXid,
    Xid,
)
from twopc.participants.watchdog import Watchdog
from twopc.participants.xid import FORMAT_ID
from twopc.txlog import LogError

if TYPE_CHECKING:
    from twopc.coordinator.coordinator import Coordinator

_T = TypeVar("_T")
#: A branch's last statement: its participant, the query and its values.
Statement = tuple[str, str, "Sequence[Any] | None"]
#: A statement within a branch: the query and its values.
Query = tuple[str, "Sequence[Any] | None"]
log = logging.getLogger(__name__)
#: Seconds phase 2 waits past the retry deadline for workers to report, before it cuts
#: their links: the deadline holds even against a server that stopped answering.
PHASE_TWO_GRACE = 5.0
#: Seconds between interrupting an overdue statement and severing its link.
_SEVER_AFTER = 2.0

COMMIT = Kind.COMMIT.value
END = Kind.END.value


class TxState(enum.Enum):
    ACTIVE = "active"
    PREPARING = "preparing"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"
    IN_DOUBT = "in doubt"


@dataclass(frozen=True)
class Outcome:
    """What happened to a committed global transaction."""

    gtrid: str
    state: TxState
    protocol: str  # "2pc", "one-phase" or "read-only"
    branches: dict[str, str]  # participant name -> final branch state
    elapsed: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase


class GlobalTransaction:
    """A global transaction: a branch per participant it touches, finished atomically."""

    def __init__(self, coordinator: Coordinator, gtrid: str) -> None:
        self.gtrid = gtrid
        self.state = TxState.ACTIVE
        self._coordinator = coordinator
        self._branches: dict[str, tuple[Participant, Branch]] = {}
        self.outcome: Outcome | None = None
        self._leftover: tuple[str, ...] = ()  # branches an abort could not confirm rolled back
        self._deciding = False  # the COMMIT record is being forced: its fate is unknown
        self._stuck: set[int] = set()  # branches whose connection a hung worker still holds
        # Branches a protocol worker is using right now (their connection is not ours to close).
        self._busy: dict[int, Future[object]] = {}
        self._stop = threading.Event()  # set when interrupted: phase-2 retries give up
        self._handed_off = False  # phase 2 runs on a background worker, which owns the branches
        self._background_done = threading.Event()  # cleared while that worker runs
        self._background_done.set()
        self._started = time.monotonic()
        self._phases: dict[str, float] = {}

    def __getitem__(self, participant: str) -> Branch:
        return self.branch(participant)

    def branch(self, participant: str) -> Branch:
        """This transaction's branch on ``participant``, started on first use (enlistment)."""
        self._require("use a branch of", TxState.ACTIVE)
        if participant not in self._branches:
            rm = self._coordinator.participant(participant)
            branch = rm.begin(Xid(FORMAT_ID, self.gtrid, rm.name))
            if self._watched_phase_one():
                branch.prepares_early = False  # prepared in commit(), where the hooks watch
            self._branches[participant] = (rm, branch)
        return self._branches[participant][1]

    def execute_last(self, statements: Sequence[Statement]) -> list[Cursor]:
        """Run each ``(participant, query, values)`` as one of the last statements of its
        branch, the branch's prepare with them (as :meth:`Branch.execute` with ``last`` does
        for one): a cursor per statement, in the order given. A branch's statements come
        together, and the order must be the one the caller takes its locks in.

        The servers run them at the same time when that cannot deadlock across them: each
        branch is untouched, can send its last statements alone, and — all but the last —
        can refuse to wait for a row lock. Then no branch waits for a lock while the
        transaction holds one on another server, except in the order given, so no cycle
        forms that neither server could see. If a row is locked (and nothing else failed),
        every branch is rolled back and begun again, and the branches' statements run one
        branch after the other, each waiting for its locks. Any other error is raised once
        every reply is read (the first, in the order given), its ``statement`` (for a
        :class:`StatementFailed`) the index of the failed one in ``statements``. While many
        tries find rows locked, the coordinator sends in order instead, trying together now
        and then (:class:`twopc.coordinator.contention.LockContention`).
        """
        groups = _by_branch(statements)
        branches = [self.branch(name) for name, _ in groups]
        contention = self._coordinator.contention
        if (
            len(branches) > 1
            and all(_sends_alone(b) for b in branches)
            and all(b.refuses_lock_waits for b in branches[:-1])
            and contention.together()
        ):
            try:
                cursors = _together(branches, groups)
            except LockBusy:
                contention.tried(locked=True)
                branches = [self._begin_again(name) for name, _ in groups]
            else:
                contention.tried(locked=False)
                return cursors
        cursors = []
        for branch, (_, group), offset in zip(branches, groups, _offsets(groups), strict=True):
            with _numbered(offset):
                cursors += _in_order(branch, group)
        return cursors

    def _begin_again(self, participant: str) -> Branch:
        """Roll back ``participant``'s branch and put a new one (same xid) in its place."""
        rm, branch = self._branches[participant]
        branch.rollback()
        branch.close()
        again = rm.begin(branch.xid)
        again.prepares_early = branch.prepares_early
        self._branches[participant] = (rm, again)
        return again

    @property
    def participants(self) -> list[str]:
        """Names of the enlisted participants, in enlistment order."""
        return list(self._branches)

    def commit(self) -> Outcome:
        """Commit every branch atomically; raises TransactionAborted, OutcomeUnknown or InDoubt.

        Interrupted (any other exception, ``KeyboardInterrupt`` included), it rolls back what
        it prepared when no decision was made yet, else leaves the transaction IN_DOUBT, and
        re-raises; :meth:`Coordinator.unsettled` then lists it while anything may be prepared.
        """
        self._require("commit", TxState.ACTIVE)
        self._coordinator.track(self)
        try:
            return self._commit()
        except (TransactionAborted, InDoubt, OutcomeUnknown):
            raise
        except BaseException as interruption:
            self._interrupted(interruption)
            raise
        finally:
            if self.settled:
                self._coordinator.untrack(self)

    def _commit(self) -> Outcome:
        branches = [branch for _, branch in self._branches.values()]
        if len(branches) <= 1 and all(b.state is BranchState.ACTIVE for b in branches):
            return self._commit_one_phase(branches)
        self.state = TxState.PREPARING
        prepared = self._timed("prepare", self._phase_one)
        if not prepared:
            return self._finished(TxState.COMMITTED, "read-only")
        self._log_decision(prepared)
        acknowledged = self._hand_off(prepared)
        if acknowledged is not None:
            return acknowledged
        return self._commit_decided(prepared)

    def _commit_decided(self, prepared: Sequence[Branch]) -> Outcome:
        """Phase 2, then the END record: the decided transaction COMMITTED (InDoubt when a
        branch could not be finished)."""
        self._timed("commit", lambda: self._phase_two(prepared))
        self._hook(CrashPoint.BEFORE_END)
        self._coordinator.log.append(EndRecord(self.gtrid).record(), force=False)
        self._coordinator.note_ended(self.gtrid)
        return self._finished(TxState.COMMITTED, "2pc")

    def _hand_off(self, prepared: Sequence[Branch]) -> Outcome | None:
        """Decided: when the coordinator acknowledges at the decision and its backlog of
        background phase 2s has room, hand phase 2 to a background worker and return the
        outcome so far (COMMITTING); else None, and phase 2 runs here."""
        coordinator = self._coordinator
        if not coordinator.config.acknowledge_at_decision or not coordinator.reserve_phase_two():
            return None
        acknowledged = self._finished(TxState.COMMITTING, "2pc")  # before the worker moves on
        self._handed_off = True
        self._background_done.clear()
        try:
            coordinator.run_phase_two(functools.partial(self._phase_two_later, prepared))
        except BaseException:  # not handed off after all (the coordinator is closing)
            self._handed_off = False
            self._background_done.set()
            raise
        return acknowledged

    def _phase_two_later(self, prepared: Sequence[Branch]) -> None:
        """Phase 2 and the END record, on a background worker; never raises. A transaction
        it cannot finish stays IN_DOUBT and tracked, so its log stays for recovery."""
        try:
            self._commit_decided(prepared)
        except InDoubt as err:
            log.warning("%s", err)
            self._finished(TxState.IN_DOUBT, "2pc")
        except BaseException:  # a log failure, a bug: the decision is in the log regardless
            log.exception("%s: phase 2 failed; recovery finishes it from the log", self.gtrid)
            self._stop.set()
            self._finished(TxState.IN_DOUBT, "2pc")
        finally:
            self._close_branches()
            if self.settled:
                self._coordinator.untrack(self)
            self._background_done.set()

    def wait_for_phase_two(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for this transaction's phase 2 in the background
        (see ``acknowledge_at_decision``) to end; whether none is running, so that
        ``outcome`` is final (COMMITTED, or IN_DOUBT for recovery)."""
        return self._background_done.wait(timeout)

    @property
    def settled(self) -> bool:
        """Whether nothing of this transaction can still be prepared on any server (it
        committed, or every branch is known to be rolled back)."""
        return self.state is TxState.COMMITTED or (
            self.state is TxState.ABORTED and not self._leftover
        )

    def rollback(self) -> None:
        """Roll back every branch of an active transaction."""
        self._require("roll back", TxState.ACTIVE)
        self._abort("rolled back by the application")

    def close(self) -> None:
        """Close every branch's connection (a still-active branch is rolled back by its server).

        A connection a protocol worker still uses is closed by that worker when it returns;
        one a hung worker holds is left to it (see ``_interrupt``). A transaction left
        active with a branch its last statement prepared stays unsettled: its coordinator
        keeps the log, and recovery rolls the branch back (no decision: presumed abort).
        A transaction acknowledged at its decision leaves that to its phase-2 worker.
        """
        if self._handed_off:
            return
        if self.state is TxState.ACTIVE and any(
            branch.state is BranchState.PREPARED for _, branch in self._branches.values()
        ):
            self._coordinator.track(self)
        self._close_branches()

    def _close_branches(self) -> None:
        for _, branch in self._branches.values():
            future = self._busy.get(id(branch))
            if id(branch) in self._stuck:
                continue
            if future is not None and not future.done():
                future.add_done_callback(lambda _, b=branch: b.close())  # type: ignore[misc]
            else:
                branch.close()

    # -- interruption --------------------------------------------------------------------

    def _interrupted(self, interruption: BaseException) -> None:
        """``commit()`` was interrupted by ``interruption``: make the state safe for recovery.

        Before the decision: roll back (a second interruption leaves the transaction
        unsettled, so the log stays and recovery presumes abort). From the decision on: in
        doubt, and phase-2 retries stop; recovery finishes the branches from the log.
        """
        if self.state is TxState.PREPARING and not self._deciding:
            self._settle_workers()
            self._abort(f"interrupted ({type(interruption).__name__}: {interruption})")
            return
        self._stop.set()
        # ACTIVE here means inside a one-phase commit, which may or may not have happened.
        if self.state in (TxState.ACTIVE, TxState.PREPARING, TxState.COMMITTING):
            self.state = TxState.IN_DOUBT

    def _settle_workers(self) -> None:
        """Wait briefly for the prepares still running, then cancel (and sever) hung ones, so
        the rollback that follows never shares a connection with a worker."""
        running = [(b, f) for b, f in self._busy_items() if not f.done()]
        if running:
            wait([f for _, f in running], timeout=1.0)
            self._interrupt([b for b, _ in running], [f for _, f in running])

    def _busy_items(self) -> list[tuple[Branch, Future[object]]]:
        return [(b, self._busy[id(b)]) for _, b in self._branches.values() if id(b) in self._busy]

    # -- one phase -----------------------------------------------------------------------

    def _commit_one_phase(self, branches: Sequence[Branch]) -> Outcome:
        """One branch needs no vote and no log record: its own commit is atomic."""
        if branches:
            try:
                branches[0].commit_one_phase()
            except ParticipantUnavailable as err:
                self.state = TxState.IN_DOUBT
                raise OutcomeUnknown(self.gtrid, str(err)) from err
            except ParticipantError as err:
                raise self._abort(str(err)) from err
        return self._finished(TxState.COMMITTED, "one-phase" if branches else "read-only")

    # -- phase 1 -------------------------------------------------------------------------

    def _phase_one(self) -> list[Branch]:
        """Prepare the branches not prepared yet (a branch whose last statement carried its
        prepare voted then); the prepared ones, whatever voted when."""
        branches = [branch for _, branch in self._branches.values()]
        active = [branch for branch in branches if branch.state is BranchState.ACTIVE]
        first, rest = self._split_for(CrashPoint.AFTER_FIRST_PREPARE, active)
        self._prepare_all(first)
        self._hook(CrashPoint.AFTER_FIRST_PREPARE)
        self._prepare_all(rest)
        self._hook(CrashPoint.AFTER_PREPARE)
        return [branch for branch in branches if branch.state is BranchState.PREPARED]

    def _prepare_all(self, branches: Sequence[Branch]) -> None:
        """Prepare ``branches`` at the same time: a branch that cannot overlap on a protocol
        worker, the others from this thread (every request sent, then every reply read). A
        reply still awaited at the prepare timeout is interrupted, then severed."""
        if not branches:
            return  # every branch voted with its last statement
        timeout = self._coordinator.prepare_timeout
        until = time.monotonic() + timeout
        apart = [branch for branch in branches if not branch.overlaps]
        futures = [self._submit(branch, branch.prepare) for branch in apart]
        here = [branch for branch in branches if branch.overlaps]
        with _CutOff(self._coordinator.deadlines, until, here) as cut_off:
            for branch in here:
                branch.request_prepare()
            errors: list[BaseException] = [e for b in here if (e := _fails(b.prepare))]
        done, late = _wait(futures, until)
        errors += [error for f in done if (error := f.exception()) is not None]
        reasons = [str(error) for error in errors]
        if late or cut_off.fired:
            reasons.append(f"prepare timed out after {timeout:g}s")
        if late:
            self._interrupt(apart, futures)
        if reasons:
            raise self._abort("; ".join(reasons)) from (errors[0] if errors else None)

    def _interrupt(self, branches: Sequence[Branch], futures: Sequence[Future[_T]]) -> None:
        """Cancel the statements of branches whose call hangs; if the server does not answer
        even that soon, break their connections. A worker that still does not return keeps
        its connection: nothing else may touch it (see ``_roll_back``)."""
        hung = [(b, f) for b, f in zip(branches, futures, strict=True) if not f.done()]
        for escalate, patience in (("interrupt", 2.0), ("sever", 5.0)):
            for branch, future in hung:
                if not future.done():
                    getattr(branch, escalate)()
            wait([f for _, f in hung], timeout=patience)
        self._stuck.update(id(b) for b, f in hung if not f.done())

    # -- decision and phase 2 ------------------------------------------------------------

    def _log_decision(self, prepared: Sequence[Branch]) -> None:
        decision = CommitDecision(self.gtrid, tuple(self._branch_entry(b) for b in prepared))
        last_end = self._coordinator.last_end()
        self._deciding = True
        try:
            self._coordinator.log.append(decision.record(), force=True)
        except (LogError, OSError) as err:
            # Not written, or written but not synced: the log rejects the whole append, and
            # recovery finds no COMMIT it could act on unless the page reached the disk.
            # Rolling back stays safe only because the record is then not durable; say so.
            raise self._abort(f"could not make the commit decision durable: {err}") from err
        self._deciding = False
        self.state = TxState.COMMITTING  # decided: from here on, never roll back
        self._coordinator.note_forced(last_end)
        self._hook(CrashPoint.AFTER_DECISION)

    def _branch_entry(self, branch: Branch) -> BranchEntry:
        participant = self._participant_of(branch)
        return BranchEntry(participant.name, participant.server, branch.xid.bqual)

    def _phase_two(self, prepared: Sequence[Branch]) -> None:
        first, rest = self._split_for(CrashPoint.AFTER_FIRST_COMMIT, list(prepared))
        unfinished = self._finish_all(first, commit=True)
        self._hook(CrashPoint.AFTER_FIRST_COMMIT)
        unfinished += self._finish_all(rest, commit=True)
        if unfinished:
            self.state = TxState.IN_DOUBT
            names = tuple(self._participant_of(b).name for b in unfinished)
            raise InDoubt(self.gtrid, names, "phase 2 retry deadline passed")

    def _finish_all(self, branches: Sequence[Branch], *, commit: bool) -> list[Branch]:
        """Finish branches in parallel; returns those not finished (in doubt). Never raises,
        and never waits past the retry deadline (plus a grace): a worker still blocked then
        on a server that stopped answering has its statement cancelled and its link cut."""
        config = self._coordinator.config
        until = time.monotonic() + config.retry.deadline + config.phase_two_grace
        here = [branch for branch in branches if commit and branch.overlaps]
        apart = [branch for branch in branches if branch not in here]
        jobs = [(b, functools.partial(self._finish, b, commit=commit)) for b in apart]
        unfinished = []
        with _CutOff(self._coordinator.deadlines, until, here) as cut_off:
            for branch in here:
                branch.request_commit()
            for branch in here:
                finished = self._finish_here(branch)
                if finished is None and not cut_off.fired:  # retried on a worker
                    retry = functools.partial(self._finish_elsewhere, branch, commit=True)
                    jobs.append((branch, retry))
                elif not finished:  # in doubt (past the deadline: no retry)
                    unfinished.append(branch)
        if cut_off.fired:
            self._stop.set()
        futures = [self._submit(branch, job) for branch, job in jobs]
        _, late = _wait(futures, until)
        if late:
            self._stop.set()
            hung = [(b, f) for (b, _), f in zip(jobs, futures, strict=True) if f in late]
            self._interrupt([b for b, _ in hung], [f for _, f in hung])
        return unfinished + [b for (b, _), f in zip(jobs, futures, strict=True) if not _finished(f)]

    def _finish_here(self, branch: Branch, *, commit: bool = True) -> bool | None:
        """Finish ``branch`` on its own connection (reading the reply to its commit request,
        if one was sent): whether it is finished as decided, or None when it must be retried
        from a fresh connection. Never raises: once the decision is made, no error of a
        branch — a lost link, "busy", a statement error, a bug — may end as a plain failure."""
        try:
            branch.commit() if commit else branch.rollback()
            return True
        except UnknownXid:
            return self._settle_unknown(branch, commit=commit)
        except ParticipantError as err:
            log.info("%s %s: %s; retrying from a new connection", self.gtrid, branch.xid, err)
        except Exception:  # a bug: say so loudly, and still drive the branch to its end
            log.exception("%s %s: unexpected error in phase 2", self.gtrid, branch.xid)
        return None

    def _finish(self, branch: Branch, *, commit: bool) -> bool:
        """Commit or roll back one prepared branch; False when it could not be finished (it
        stays in doubt for recovery). Never raises."""
        finished = self._finish_here(branch, commit=commit)
        return self._finish_elsewhere(branch, commit=commit) if finished is None else finished

    def _finish_elsewhere(self, branch: Branch, *, commit: bool) -> bool:
        """Retry from fresh connections with back-off until the server acknowledges."""
        if id(branch) not in self._stuck:
            branch.close()
        participant = self._participant_of(branch)
        for _ in self._coordinator.retry.pauses():
            if self._stop.is_set():
                return False  # interrupted: recovery finishes it from the log
            try:
                participant.finish_prepared(branch.xid, commit=commit)
            except UnknownXid:
                # Typically a retry after a lost acknowledgement: already finished. Whether it
                # finished the way we decided is settled by its outcome marker, not assumed.
                return self._settle_unknown(branch, commit=commit)
            except ParticipantError as err:  # unavailable, busy, or refused: try again
                log.info("%s %s: %s", self.gtrid, branch.xid, err)
                continue
            except Exception:
                log.exception("%s %s: unexpected error finishing it", self.gtrid, branch.xid)
                return False
            branch.mark_finished(BranchState.COMMITTED if commit else BranchState.ROLLED_BACK)
            return True
        return False

    def _settle_unknown(self, branch: Branch, *, commit: bool) -> bool:
        """The server no longer holds the branch: its marker says how it ended. An outcome
        against our decision (someone else finished it) counts as not finished, so no END is
        written and recovery and audit report it."""
        try:
            committed = self._participant_of(branch).has_marker(branch.xid)
        except ParticipantError:
            return False
        branch.mark_finished(BranchState.COMMITTED if committed else BranchState.ROLLED_BACK)
        return committed == commit

    # -- abort ---------------------------------------------------------------------------

    def _abort(self, reason: str) -> TransactionAborted:
        """Roll back every branch (prepared or not); returns the error for the caller to raise."""
        leftover = []
        for participant, branch in self._branches.values():
            if not self._roll_back(participant, branch):
                leftover.append(participant.name)
        self.state = TxState.ABORTED
        self._leftover = tuple(leftover)
        if leftover:  # recovery presumes abort for them only if it finds this coordinator's log
            self._coordinator.track(self)
        return TransactionAborted(self.gtrid, reason, self._leftover)

    def _roll_back(self, participant: Participant, branch: Branch) -> bool:
        if branch.state is BranchState.PREPARED:
            return self._finish(branch, commit=False)
        if branch.state is not BranchState.ACTIVE:
            return True
        try:
            if id(branch) not in self._stuck:
                branch.rollback()
                return True
        except Exception:  # whatever broke, the branch is not known to be rolled back
            branch.close()
        # The link broke, maybe during a prepare that reached the server: an unprepared
        # branch dies with its connection, a prepared one must be rolled back by xid. When
        # the server cannot even be asked, the branch is left to recovery (which presumes
        # abort: no COMMIT record was written) instead of retrying against a dead server.
        prepared = self._maybe_prepared(participant, branch)
        if prepared is None:
            return False
        return not prepared or self._finish_elsewhere(branch, commit=False)

    def _maybe_prepared(self, participant: Participant, branch: Branch) -> bool | None:
        """Whether the server holds ``branch`` prepared; None when it does not answer."""
        try:
            return any(p.xid == branch.xid for p in participant.prepared_branches())
        except ParticipantError:
            return None

    # -- helpers -------------------------------------------------------------------------

    def _submit(self, branch: Branch, work: Callable[[], _T]) -> Future[_T]:
        """Run ``work`` on a protocol worker; the branch is busy until it returns."""
        future = self._coordinator.executor.submit(work)
        self._busy[id(branch)] = future  # type: ignore[assignment]
        return future

    def _participant_of(self, branch: Branch) -> Participant:
        return next(p for p, b in self._branches.values() if b is branch)

    def _split_for(
        self, point: CrashPoint, branches: list[Branch]
    ) -> tuple[list[Branch], list[Branch]]:
        """Run the first branch alone when a hook waits between it and the others."""
        hooks = self._coordinator.hooks
        if hooks is not None and hooks.armed(point):
            return branches[:1], branches[1:]
        return branches, []

    def _watched_phase_one(self) -> bool:
        hooks = self._coordinator.hooks
        phase_one = (CrashPoint.AFTER_FIRST_PREPARE, CrashPoint.AFTER_PREPARE)
        return hooks is not None and any(hooks.armed(point) for point in phase_one)

    def _hook(self, point: CrashPoint) -> None:
        if self._coordinator.hooks is not None:
            self._coordinator.hooks.reached(point, self.gtrid)

    def _timed(self, phase: str, run: Callable[[], _T]) -> _T:
        started = time.monotonic()
        try:
            return run()
        finally:
            self._phases[phase] = time.monotonic() - started

    def _finished(self, state: TxState, protocol: str) -> Outcome:
        self.state = state
        branches = {p.name: b.state.value for p, b in self._branches.values()}
        elapsed = time.monotonic() - self._started
        self.outcome = Outcome(self.gtrid, state, protocol, branches, elapsed, dict(self._phases))
        return self.outcome

    def _require(self, action: str, *allowed: TxState) -> None:
        if self.state not in allowed:
            raise TransactionStateError(
                f"can't {action} transaction {self.gtrid}: it is {self.state.value}"
            )


class _CutOff:
    """While in its block, past ``until`` the branches still awaiting a reply have their
    statement interrupted, and ``_SEVER_AFTER`` seconds later their link severed (what
    ``_interrupt`` does to a worker's call); the alarms run on the coordinator's watchdog
    thread. Leaving the block waits for an alarm in progress and cancels the rest, so
    nothing is cut once the caller moved on to other work on those connections, or closed
    them."""

    def __init__(self, watchdog: Watchdog, until: float, branches: Sequence[Branch]) -> None:
        self._watchdog = watchdog
        self._until = until
        self._branches = list(branches)
        self._lock = threading.Lock()
        self._over = False
        self._alarms: list[object] = []
        self.fired = False  # some reply was overdue

    def __enter__(self) -> _CutOff:
        if self._branches:
            left = max(0.0, self._until - time.monotonic())
            self._alarms.append(self._watchdog.arm(left, self._interrupt))
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._over = True
            alarms, self._alarms = self._alarms, []
        for alarm in alarms:
            self._watchdog.disarm(alarm)

    def _interrupt(self) -> None:
        if self._each("interrupt"):  # which may take long against a server that froze
            left = max(0.0, self._until + _SEVER_AFTER - time.monotonic())
            with self._lock:
                if not self._over:
                    self._alarms.append(self._watchdog.arm(left, self._sever))

    def _sever(self) -> None:
        self._each("sever")

    def _each(self, escalate: str) -> bool:
        with self._lock:
            if self._over:
                return False
            for branch in self._branches:
                if branch.awaiting:
                    self.fired = True
                    getattr(branch, escalate)()
            return self.fired


def _wait(futures: list[Future[_T]], until: float) -> tuple[set[Future[_T]], set[Future[_T]]]:
    """``concurrent.futures.wait`` until the ``time.monotonic()`` deadline ``until`` (at
    once when there is nothing to wait for, the usual case: no branch on a worker)."""
    if not futures:
        return set(), set()
    done, late = wait(futures, timeout=max(0.0, until - time.monotonic()))
    return done, late


def _sends_alone(branch: Branch) -> bool:
    return branch.untouched and branch.overlaps and branch.prepares_early


def _by_branch(statements: Sequence[Statement]) -> list[tuple[str, list[Query]]]:
    """``statements`` grouped by participant, in order; a participant's must be together."""
    groups: list[tuple[str, list[Query]]] = []
    for participant, query, values in statements:
        if groups and groups[-1][0] == participant:
            groups[-1][1].append((query, values))
        elif any(name == participant for name, _ in groups):
            names = [name for name, _, _ in statements]
            raise ValueError(f"a branch's last statements must come together, got {names}")
        else:
            groups.append((participant, [(query, values)]))
    return groups


def _in_order(branch: Branch, group: list[Query]) -> list[Cursor]:
    """``group`` as ``branch``'s last statements, waiting for its locks: in one request
    where the branch can send one, else one statement after the other."""
    if branch.overlaps and branch.prepares_early:
        branch.request_execute(group)
        return branch.execute_reply()
    cursors = []
    for n, (query, values) in enumerate(group):
        try:
            cursors.append(branch.execute(query, values, last=n == len(group) - 1))
        except StatementFailed as err:
            err.statement = n
            raise
    return cursors


def _offsets(groups: list[tuple[str, list[Query]]]) -> list[int]:
    """Where each group's first statement stands among all of them."""
    return list(itertools.accumulate((len(group) for _, group in groups[:-1]), initial=0))


@contextmanager
def _numbered(offset: int) -> Iterator[None]:
    """A statement error raised in the block counts its ``statement`` from ``offset``."""
    try:
        yield
    except StatementFailed as err:
        if err.statement is not None:
            err.statement += offset
        raise


def _together(branches: Sequence[Branch], groups: list[tuple[str, list[Query]]]) -> list[Cursor]:
    """Send every branch's last statements (all but the last branch's not waiting for
    locks), then read every reply; once all are read, the first error raises
    (:class:`LockBusy` only when nothing else went wrong)."""
    for n, (branch, (_, group)) in enumerate(zip(branches, groups, strict=True)):
        branch.request_execute(group, wait_for_locks=n == len(branches) - 1)
    cursors: list[Cursor] = []
    errors: list[Exception] = []
    for branch, offset in zip(branches, _offsets(groups), strict=True):
        try:
            with _numbered(offset):
                cursors += branch.execute_reply()
        except Exception as err:  # every reply is read before any error is raised
            errors.append(err)
    if errors:  # a locked row is retried in order: any other error goes first
        raise next((e for e in errors if not isinstance(e, LockBusy)), errors[0])
    return cursors


def _fails(prepare: Callable[[], object]) -> Exception | None:
    """The error ``prepare()`` raised, if any (a NO vote, a lost link, a bug)."""
    try:
        prepare()
    except Exception as error:
        return error
    return None


def _finished(future: Future[bool]) -> bool:
    """Whether a phase-2 worker returned and said its branch is finished."""
    return future.done() and future.exception() is None and future.result()
