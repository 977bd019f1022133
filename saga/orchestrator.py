"""The saga orchestrator: runs sagas of any definition as local transactions, durable in its
own log.

Every decision is a record in the orchestrator's :mod:`txlog` log (txid = saga id) before
the orchestrator acts on it, and the saga's state is rebuilt from those records alone
(:mod:`saga.state`), so a restarted or recovering orchestrator resumes exactly where the log
says — forward if the steps can still complete, backward if a step failed. The BEGIN record
holds the definition's name and the saga's parameters; whoever resumes the saga looks the
definition up in its :class:`SagaRegistry`. What happened between a step's local commit and
its log record (the dual-write gap) is harmless: the step runs again under the same
idempotency key and gets its stored result back.

An orchestrator has an id and holds its log's lock while alive. One opened without an id is
one-shot: it gets a fresh id, and its log is removed on close when nothing is unfinished.
One with a stable id resumes its own unfinished sagas on opening.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from twopc.participants import Participant, ParticipantError
from twopc.retry import RetryPolicy
from twopc.saga.attempts import Exhausted, attempt, retry_policy
from twopc.saga.crashpoints import SagaHooks, SagaPoint
from twopc.saga.definition import Params, SagaDefinition, SagaRun
from twopc.saga.errors import SagaBusy, SagaError, SagaIdReused, SagaNotFound
from twopc.saga.idempotency import (
    APPLIED,
    CANCELLED,
    Keyed,
    KeyReused,
    StepResult,
    claim,
    first_use,
    lookup,
    run_once,
    saga_of,
    stored_requests,
)
from twopc.saga.ids import (
    check_orchestrator_id,
    check_saga_id,
    fresh_orchestrator_id,
    fresh_saga_id,
)
from twopc.saga.logs import OrchestratorLog, orchestrator_home, owner_of
from twopc.saga.records import begin_body, blocked, checked_params, refused_step
from twopc.saga.registry import SagaRegistry, resolve
from twopc.saga.report import outcome_of
from twopc.saga.state import (
    APPLIED_NO,
    APPLIED_UNKNOWN,
    BEGIN,
    BLOCKED,
    COMP_DONE,
    COMPENSATE,
    DEAD_LETTER,
    END,
    FENCE,
    FINISH,
    REFUSED,
    RELEASE,
    RELEASED,
    RETRY,
    RUN,
    RUN_RETRIABLE,
    STEP_DONE,
    STEP_FAILED,
    Action,
    SagaState,
    apply,
    next_action,
    replay_records,
)
from twopc.saga.steps import Work, compensation_work, forward_work, release_work
from twopc.saga.tables import ensure_saga_tables
from twopc.saga.timeouts import within
from twopc.txlog import LogCorrupt, LogLocked, Record, TransactionLog

log = logging.getLogger(__name__)

# (saga id, what is being retried, attempt number that failed, the error)
RetryListener = Callable[[str, str, int, str], None]
_STOPS = frozenset({"done", "parked", "stuck"})


def _default_policy() -> RetryPolicy:
    return RetryPolicy(deadline=30.0)


@dataclass(frozen=True)
class SagaConfig:
    """How an orchestrator runs. ``orchestrator_id=None`` means a fresh one-shot id.

    ``retry`` bounds each forward step, fence, release and step after the pivot (unless the
    step has a policy of its own); past it a step up to the pivot fails (the saga
    compensates) and the others leave the saga unfinished for recovery.
    ``compensation_retry`` bounds each compensation; past it, the dead letter. Both are
    recorded when a saga begins; a saga resumed later (by recovery, or an operator's retry)
    keeps to its own run's policies, unless ``recorded_retry`` is False.
    ``definitions`` are the sagas this orchestrator can resume from its log (it also knows
    those it ran itself).
    """

    home: Path
    orchestrator_id: str | None = None
    retry: RetryPolicy = field(default_factory=_default_policy)
    compensation_retry: RetryPolicy = field(default_factory=_default_policy)
    hooks: SagaHooks | None = None
    on_retry: RetryListener | None = None
    recorded_retry: bool = True
    definitions: SagaRegistry = field(default_factory=SagaRegistry)


@dataclass(frozen=True)
class SagaOutcome:
    """Where a saga stands after the orchestrator drove it as far as it could."""

    orchestrator: str
    state: SagaState
    elapsed: float

    @property
    def saga_id(self) -> str:
        return self.state.saga_id

    @property
    def outcome(self) -> str:
        """completed, compensated, aborted, refused; or unfinished, dead-lettered."""
        return outcome_of(self.state)


class Orchestrator:
    """Runs sagas over its participants (by name), logging every decision.

    >>> with Orchestrator.open([pg, mysql], SagaConfig(home)) as orchestrator:
    ...     outcome = orchestrator.run(order_saga, {"order": "o-17"}, "order-o-17")
    ...     print(outcome.outcome)  # completed, compensated or aborted
    """

    def __init__(
        self, participants: Sequence[Participant], config: SagaConfig, txlog: TransactionLog
    ) -> None:
        self.id = config.orchestrator_id or ""
        self.log = txlog
        self.config = config
        self.resumed: list[SagaOutcome] = []
        self._participants = {p.name: p for p in participants}
        self._definitions = config.definitions
        self._ready_on: set[tuple[str, str]] = set()
        self._ephemeral = False

    @classmethod
    def open(cls, participants: Sequence[Participant], config: SagaConfig) -> Orchestrator:
        """Take the orchestrator's log (and its lock); the saga tables are made sure of on each
        server before the first step there (a server that is down fails that step, not this).

        An orchestrator with a stable id first resumes its own unfinished sagas (``resumed``
        reports them). Raises :class:`SagaBusy` if the log is held by a live process.
        """
        ephemeral = config.orchestrator_id is None
        orchestrator_id = check_orchestrator_id(config.orchestrator_id or fresh_orchestrator_id())
        txlog = open_log(config.home, orchestrator_id)
        orchestrator = cls(participants, replace(config, orchestrator_id=orchestrator_id), txlog)
        orchestrator._ephemeral = ephemeral
        try:
            if not ephemeral:
                orchestrator.resumed = orchestrator.resume_all()
        except BaseException:
            orchestrator.close()
            raise
        return orchestrator

    # -- public API ---------------------------------------------------------------------------

    def run(
        self, definition: SagaDefinition, params: Params, saga_id: str | None = None
    ) -> SagaOutcome:
        """Run saga ``saga_id`` (default: a fresh id) of ``definition`` with ``params``
        (JSON values, checked by the definition: ``ValueError`` before anything runs).

        Running a saga id that already ran replays it: every step finds its stored result
        and nothing changes. Raises :class:`SagaBusy` when another orchestrator's log holds
        the saga unfinished (it finishes it, or ``twopc recover`` does), and
        :class:`SagaIdReused` when the id already served a different request (nothing runs).
        """
        started = time.monotonic()
        params = checked_params(definition, params)
        self._definitions = self._definitions.including(definition)
        if saga_id is None:
            saga_id = fresh_saga_id()  # random: no other log can hold it
        else:
            saga_id = check_saga_id(saga_id)
            if saga_id in self.log.unfinished():
                raise SagaBusy(f"saga {saga_id} is unfinished in this orchestrator's own log")
            self._refuse_if_owned_elsewhere(saga_id)
            self._refuse_if_reused(saga_id, definition, params)
        policies = (self.config.retry, self.config.compensation_retry)
        body = begin_body(definition, params, *policies)
        state = self._append(SagaState(saga_id), Record(BEGIN, saga_id, body))
        return self._drive(state, started, resumed=False)

    def resume(self, saga_id: str, *, retry_dead_letters: bool = False) -> SagaOutcome:
        """Drive an unfinished saga of this orchestrator's log on from where it stands.

        A dead-lettered compensation is only tried again with ``retry_dead_letters``.
        """
        started = time.monotonic()
        records = self.log.unfinished().get(saga_id)
        if records is None:
            raise SagaNotFound(f"no unfinished saga {saga_id} in the log of orchestrator {self.id}")
        state = replay_records(saga_id, records)
        if retry_dead_letters and state.dead_lettered:
            state = self._append(state, Record(RETRY, saga_id, {"by": "operator"}))
        return self._drive(state, started, resumed=True)

    def resume_all(self, *, retry_dead_letters: bool = False) -> list[SagaOutcome]:
        """Resume every unfinished saga in this orchestrator's log."""
        return [
            self.resume(saga_id, retry_dead_letters=retry_dead_letters)
            for saga_id in list(self.log.unfinished())
        ]

    def definition_of(self, state: SagaState) -> tuple[SagaState, SagaDefinition | None]:
        """The definition ``state`` follows here, or the state with a problem saying why none."""
        return resolve(state, self._definitions)

    def close(self) -> None:
        """Release the log; a one-shot orchestrator's log goes when nothing is unfinished."""
        if self._ephemeral and not self.log.unfinished():
            self.log.destroy()
        else:
            self.log.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refuse_if_reused(self, saga_id: str, definition: SagaDefinition, params: Params) -> None:
        """A saga id is bound to its request: refuse it, before anything runs, when any of
        its keys on these participants was stored for another request.

        A server that does not answer is skipped here: a step that later runs there checks
        its own key all the same (:class:`KeyReused`), and one that cannot reach it fails.
        """
        request = definition.request(params)
        keys = definition.keys(saga_id)
        for participant in self._participants.values():
            try:
                stored = stored_requests(self._with_steps_table(participant), keys)
            except ParticipantError:
                continue
            for key, first in sorted(stored.items()):
                if saga_of(first) != request:
                    raise SagaIdReused(
                        f"saga id {saga_id} was first used for {first_use(first)} (key {key} "
                        f"on {participant.name}); refusing it for {request}: nothing was changed"
                    )

    def _refuse_if_owned_elsewhere(self, saga_id: str) -> None:
        owner = owner_of(self.config.home, saga_id, besides=self.id)
        if owner is not None:
            raise SagaBusy(_owned_message(saga_id, owner))

    # -- driving a saga -----------------------------------------------------------------------

    def _drive(self, state: SagaState, started: float, *, resumed: bool) -> SagaOutcome:
        state, definition = self.definition_of(state)
        while (action := next_action(state, definition)).kind not in _STOPS:
            assert definition is not None  # next_action says STUCK otherwise
            record = self._perform(state, definition, action, resumed=resumed)
            state = self._append(state, record)
            self._passed(record)
            if record.kind == BLOCKED:
                break
        for problem in state.problems:
            log.warning("saga %s: %s", state.saga_id, problem)
        return SagaOutcome(self.id, state, time.monotonic() - started)

    def _perform(
        self, state: SagaState, definition: SagaDefinition, action: Action, *, resumed: bool
    ) -> Record:
        run = SagaRun(state.saga_id, state.params)
        if action.kind == RUN:
            return self._run_step(state, definition, action.n, resumed=resumed)
        if action.kind == FENCE:
            return self._fence(state, definition, action.n)
        if action.kind == COMPENSATE:
            return self._compensate(state, definition, action.n)
        if action.kind == RELEASE:
            work = release_work(definition, run, action.n)
            return self._forward_only(state, definition, work, RELEASED, action.n)
        if action.kind == RUN_RETRIABLE:
            work = forward_work(definition, run, action.n)
            return self._forward_only(state, definition, work, STEP_DONE, action.n)
        assert action.kind == FINISH, action
        return Record(END, state.saga_id, {"outcome": action.outcome}, final=True)

    def _run_step(
        self, state: SagaState, definition: SagaDefinition, n: int, *, resumed: bool
    ) -> Record:
        if n > 1 and state.replayed:
            found = self._earlier_run(state, definition)
            if found is not None:
                return found
        work = forward_work(definition, SagaRun(state.saga_id, state.params), n)
        try:
            outcome = self._attempt(state, definition, work, self._retry(state, work.retry))
        except KeyReused as err:
            return refused_step(state.saga_id, n, err)
        if isinstance(outcome, StepResult):
            self._commit_gap(state.saga_id, outcome, n)
            return Record(STEP_DONE, state.saga_id, {"n": n, "result": outcome.to_json()})
        applied = APPLIED_UNKNOWN if resumed or outcome.uncertain else APPLIED_NO
        body = {"n": n, "error": outcome.error, "applied": applied, "attempts": outcome.attempts}
        return Record(STEP_FAILED, state.saga_id, body)

    def _earlier_run(self, state: SagaState, definition: SagaDefinition) -> Record | None:
        """This saga id ran before: refuse if another orchestrator is still running it, and
        go backward at once if that earlier run compensated (the participants remember)."""
        owner = owner_of(self.config.home, state.saga_id, besides=self.id)
        if owner is not None:
            body = {"outcome": REFUSED, "reason": _owned_message(state.saga_id, owner)}
            return Record(END, state.saga_id, body, final=True)
        run = SagaRun(state.saga_id, state.params)
        for n in reversed(definition.compensable()):
            if not state.applied(n):
                continue
            stored = self._lookup(state, definition, compensation_work(definition, run, n))
            if stored is not None:
                reason = f"saga {state.saga_id} was compensated by an earlier run"
                found = {"n": n, "result": stored.to_json(), "reason": reason}
                return Record(COMP_DONE, state.saga_id, found)
        return None

    def _fence(self, state: SagaState, definition: SagaDefinition, n: int) -> Record:
        """Settle a step whose outcome is unknown: claim its key as CANCELLED so it can never
        apply, or find that it did apply (then the saga goes forward after all)."""
        work = forward_work(definition, SagaRun(state.saga_id, state.params), n)
        cancelled = StepResult(CANCELLED, {"reason": f"fenced after: {state.failures[n].error}"})
        keyed = self._keyed(state, definition, work)
        try:
            outcome = self._attempt_with(
                state.saga_id,
                f"fence of step {n}",
                self._retry(state, work.retry),
                lambda: claim(self._ready(work, definition), keyed, cancelled),
            )
        except KeyReused as err:  # another request holds the key: this step can never apply
            return refused_step(state.saga_id, n, err)
        if isinstance(outcome, StepResult):
            return Record(STEP_DONE, state.saga_id, {"n": n, "result": outcome.to_json()})
        return blocked(state.saga_id, f"fence of step {n}", outcome)

    def _compensate(self, state: SagaState, definition: SagaDefinition, n: int) -> Record:
        work = compensation_work(definition, SagaRun(state.saga_id, state.params), n)
        try:
            policy = self._compensation_retry(state, work.retry)
            outcome = self._attempt(state, definition, work, policy, refusals=False)
        except KeyReused as err:  # an operator must look: never answered for another request
            return Record(DEAD_LETTER, state.saga_id, {"n": n, "error": str(err), "attempts": 1})
        if isinstance(outcome, StepResult):
            return Record(COMP_DONE, state.saga_id, {"n": n, "result": outcome.to_json()})
        body = {"n": n, "error": outcome.error, "attempts": outcome.attempts}
        return Record(DEAD_LETTER, state.saga_id, body)

    def _forward_only(
        self, state: SagaState, definition: SagaDefinition, work: Work, kind: str, n: int
    ) -> Record:
        """A release, or a step after the pivot: never compensated, so retried until it
        succeeds (by this run, or by later ones: past the retry policy the saga stays
        unfinished for recovery). A permanent error is retried too, never stored as a
        refusal: nothing after the pivot can send the saga back."""
        try:
            policy = self._retry(state, work.retry)
            outcome = self._attempt(state, definition, work, policy, refusals=False)
        except KeyReused as err:
            return blocked(state.saga_id, work.name, Exhausted(str(err), 1, uncertain=False))
        if not isinstance(outcome, StepResult):
            return blocked(state.saga_id, work.name, outcome)
        if kind == STEP_DONE:
            self._commit_gap(state.saga_id, outcome, n)
        return Record(kind, state.saga_id, {"n": n, "result": outcome.to_json()})

    # -- attempts, hooks, the log -------------------------------------------------------------

    def _attempt(
        self,
        state: SagaState,
        definition: SagaDefinition,
        work: Work,
        policy: RetryPolicy,
        *,
        refusals: bool = True,
    ) -> StepResult | Exhausted:
        keyed = self._keyed(state, definition, work)

        def once() -> StepResult:
            participant = self._ready(work, definition)
            change = work.change
            return within(
                work.timeout,
                work.describe(),
                lambda: run_once(participant, keyed, change, refusals=refusals),
            )

        return self._attempt_with(state.saga_id, work.describe(), policy, once)

    @staticmethod
    def _keyed(state: SagaState, definition: SagaDefinition, work: Work) -> Keyed:
        return Keyed(work.key, state.saga_id, work.request(definition.request(state.params)))

    def _retry(self, state: SagaState, own: RetryPolicy | None = None) -> RetryPolicy:
        """The policy for forward work: the step's own, else the saga's own run's, unless
        told otherwise."""
        configured, keep = self.config.retry, self.config.recorded_retry
        return retry_policy(own, state.retry, configured, keep_recorded=keep)

    def _compensation_retry(self, state: SagaState, own: RetryPolicy | None = None) -> RetryPolicy:
        configured, keep = self.config.compensation_retry, self.config.recorded_retry
        return retry_policy(own, state.compensation_retry, configured, keep_recorded=keep)

    def _attempt_with(
        self, saga_id: str, what: str, policy: RetryPolicy, once: Callable[[], StepResult]
    ) -> StepResult | Exhausted:
        """``once()`` until it returns, or the policy's deadline passes."""

        def failed(tries: int, error: str) -> None:
            if self.config.on_retry is not None:
                self.config.on_retry(saga_id, what, tries, error)

        return attempt(policy, once, failed)

    def _lookup(
        self, state: SagaState, definition: SagaDefinition, work: Work
    ) -> StepResult | None:
        try:
            return lookup(self._ready(work, definition), self._keyed(state, definition, work))
        except (ParticipantError, KeyReused) as err:
            raise SagaError(f"cannot tell whether {work.key} ran: {err}") from err

    def _ready(self, work: Work, definition: SagaDefinition) -> Participant:
        """The participant for ``work``, with the saga tables and whatever the definition
        sets up there (once per participant and definition)."""
        participant = self._with_steps_table(self._participant(work))
        if (
            definition.setup is not None
            and (participant.name, definition.name) not in self._ready_on
        ):
            definition.setup(participant)
            self._ready_on.add((participant.name, definition.name))
        return participant

    def _with_steps_table(self, participant: Participant) -> Participant:
        if (participant.name, "") not in self._ready_on:
            ensure_saga_tables(participant)
            self._ready_on.add((participant.name, ""))
        return participant

    def _participant(self, work: Work) -> Participant:
        try:
            return self._participants[work.participant]
        except KeyError:
            raise SagaError(
                f"no {work.participant} database configured for {work.describe()}"
            ) from None

    def _commit_gap(self, saga_id: str, result: StepResult, n: int) -> None:
        """The step's local transaction committed and nothing is logged yet."""
        if self.config.hooks is not None and not result.replayed:
            self.config.hooks.reached(SagaPoint.AFTER_STEP_COMMIT, saga_id, n)

    def _passed(self, record: Record) -> None:
        hooks = self.config.hooks
        if hooks is None:
            return
        n = record.body.get("n", 0)
        applied = record.body.get("result", {}).get("status") == APPLIED
        if record.kind == STEP_DONE and applied:
            hooks.reached(SagaPoint.AFTER_STEP, record.txid, n)
        elif record.kind == COMP_DONE:
            hooks.reached(SagaPoint.AFTER_COMPENSATION, record.txid, n)

    def _append(self, state: SagaState, record: Record) -> SagaState:
        """Log ``record`` (durably, except END: a lost END is simply written again) and
        apply it to ``state``."""
        stamped = self.log.append(record, force=not record.final)
        return apply(state, stamped)


def open_log(home: Path, orchestrator_id: str, *, create: bool = True) -> TransactionLog:
    """Open ``orchestrator_id``'s log as its writer; :class:`SagaBusy` if it is held."""
    try:
        return orchestrator_home(home).open(orchestrator_id, create=create)
    except LogLocked as err:
        raise SagaBusy(
            f"orchestrator {orchestrator_id} is running, or being recovered (its log is locked)"
        ) from err
    except LogCorrupt as err:
        raise SagaError(
            f"the log of orchestrator {orchestrator_id} is damaged ({err}); its sagas need an "
            "operator: decisions may be lost, so nothing is guessed"
        ) from err


def _owned_message(saga_id: str, owner: OrchestratorLog) -> str:
    state = "alive" if owner.alive else "dead"
    return (
        f"saga {saga_id} is unfinished in the log of orchestrator {owner.orchestrator} "
        f"({state}); " + ("it finishes it" if owner.alive else "finish it with `twopc recover`")
    )
