"""The relay's side of the outbox table: claim a batch, settle it, park, list and retry.

**Claiming.** A batch is claimed inside one local transaction that stays open while the
batch is published, and that deletes what the broker confirmed before it commits. The rows
to claim are found by a plain read, then locked by primary key with ``SELECT … FOR UPDATE
SKIP LOCKED``: rows another relay holds are skipped, rows it already deleted are gone.
Several relays therefore never claim the same row; a relay that dies drops its connection,
and the database releases its rows at once for the others (they are published again: at
least once, never zero times). Deletes go one row at a time, so no relay locks a row past
the ones it claimed (MariaDB locks the row after a ``seq IN (…)`` range).

**Order per aggregate.** Only an aggregate's *head* (no earlier row of the same aggregate
is left in the outbox) can start a claim; the rows after a head the relay holds are taken
with it, in ``seq`` order. A follower is never claimed while its head is held by another
relay, or waits out a refusal's back-off (``not_before``). Writers of one aggregate are
expected to be serialized (the bank's are, by the account's row lock), so ``seq`` order is
the order the aggregate's events were written.

**MariaDB isolation.** Under REPEATABLE READ (MariaDB's default) a locking read takes
next-key locks, including the gap after the last row: every writer's INSERT into the outbox
would wait until the relay's batch is published. The claim therefore runs under READ
COMMITTED, which locks only the rows read. A transaction's isolation cannot be changed once
begun, and participants begin theirs at once, so the MariaDB claim sets the session's level,
restarts the transaction, and sets the level back for the connection's next user.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from twopc.outbox.events import OutboxEvent
from twopc.outbox.tables import OUTBOX_TABLE, PARKED_TABLE
from twopc.participants import LocalTransaction, Participant

_COLUMNS = "seq, event_id, aggregate, event_type, {payload}, created_at, attempts, not_before"
# What to claim is found by plain reads, and claimed by locking rows by primary key only:
# on MariaDB a locking read with a subquery on the same table locks (or skips) the
# subquery's rows too, and two relays deadlocked deleting what they had published.
_HEAD_CANDIDATES = f"""
    SELECT o.seq FROM {OUTBOX_TABLE} o
     WHERE o.not_before <= %s
       AND NOT EXISTS (SELECT 1 FROM {OUTBOX_TABLE} p
                        WHERE p.aggregate = o.aggregate AND p.seq < o.seq)
     ORDER BY o.seq LIMIT %s
"""
_FOLLOWER_CANDIDATES = f"""
    SELECT seq, aggregate FROM {OUTBOX_TABLE}
     WHERE aggregate IN ({{aggregates}}) AND seq NOT IN ({{heads}})
     ORDER BY seq LIMIT %s
"""
_LOCK = f"""
    SELECT {_COLUMNS} FROM {OUTBOX_TABLE}
     WHERE seq IN ({{seqs}}) ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED
"""
#: Heads looked at per row a claim wants: room for the heads other relays hold.
CANDIDATES_PER_ROW = 4
_DELETE_ONE = f"DELETE FROM {OUTBOX_TABLE} WHERE seq = %s"
_REFUSED = (
    f"UPDATE {OUTBOX_TABLE} SET attempts = attempts + 1, not_before = %s, last_error = %s "
    "WHERE seq = %s"
)
_PARK = f"""
    INSERT INTO {PARKED_TABLE}
           (seq, event_id, aggregate, event_type, payload, created_at, attempts, last_error,
            parked_at)
    SELECT seq, event_id, aggregate, event_type, payload, created_at, attempts + 1, %s, %s
      FROM {OUTBOX_TABLE} WHERE seq = %s
"""
_UNPARK = f"""
    INSERT INTO {OUTBOX_TABLE}
           (seq, event_id, aggregate, event_type, payload, created_at, attempts, not_before,
            last_error)
    SELECT seq, event_id, aggregate, event_type, payload, created_at, 0, 0, last_error
      FROM {PARKED_TABLE} WHERE event_id = %s
"""
_PARKED_LIST = f"""
    SELECT seq, event_id, aggregate, event_type, {{payload}}, created_at, attempts, last_error,
           parked_at
      FROM {PARKED_TABLE} ORDER BY parked_at, seq LIMIT %s
"""
_COUNT = f"SELECT COUNT(*), MIN(created_at) FROM {OUTBOX_TABLE}"


@dataclass(frozen=True)
class PendingEvent:
    """An outbox row: the event, its place in the outbox and what the broker said so far."""

    seq: int
    event: OutboxEvent
    attempts: int
    not_before: float


@dataclass(frozen=True)
class ParkedEvent:
    """An event the broker refused ``attempts`` times, set aside at ``parked_at``."""

    seq: int
    event: OutboxEvent
    attempts: int
    last_error: str
    parked_at: float


@dataclass(frozen=True)
class OutboxState:
    """How much is waiting in one outbox: rows not yet published, and the oldest one's age."""

    pending: int
    oldest_created_at: float | None


def _payload(participant: Participant) -> str:
    # PostgreSQL hands a json column back parsed; the text is what the writer stored.
    return "payload::text" if participant.url.backend == "pg" else "payload"


def _marks(count: int) -> str:
    return ", ".join(["%s"] * count)


def _pending(row: Sequence[Any]) -> PendingEvent:
    seq, event_id, aggregate, type, payload, created_at, attempts, not_before = row
    event = OutboxEvent.from_row(event_id, aggregate, type, payload, created_at)
    return PendingEvent(int(seq), event, int(attempts), float(not_before))


@contextmanager
def claim_transaction(participant: Participant) -> Iterator[LocalTransaction]:
    """The local transaction a batch is claimed, published and settled in (committed on
    normal exit, rolled back, releasing the claim, on an error)."""
    with participant.local_transaction() as tx:
        if participant.url.backend != "mysql":
            yield tx  # PostgreSQL's default, READ COMMITTED, takes no gap locks
            return
        (previous,) = tx.execute("SELECT @@SESSION.tx_isolation").fetchone()
        _restart_at(tx, "READ COMMITTED")
        yield tx
        # Applies to the connection's next transaction, not this one: the pool's next user
        # gets the session as it was.
        tx.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {_level(str(previous))}")


def _restart_at(tx: LocalTransaction, level: str) -> None:
    tx.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {level}")
    tx.execute("COMMIT")  # nothing was read or written yet: this ends an empty transaction
    tx.execute("BEGIN")


def _level(variable: str) -> str:
    level = variable.replace("-", " ").upper()
    allowed = {"READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"}
    return level if level in allowed else "REPEATABLE READ"


def claim(
    tx: LocalTransaction, participant: Participant, batch: int, now: float | None = None
) -> list[PendingEvent]:
    """Lock up to ``batch`` publishable rows, in ``seq`` order: aggregates' heads (no
    earlier row of theirs left) that no other relay holds, then the rows after the heads
    claimed (a refused row's back-off holds back its followers)."""
    at = time.time() if now is None else now
    found = tx.execute(_HEAD_CANDIDATES, (at, batch * CANDIDATES_PER_ROW)).fetchall()
    heads = _lock(tx, participant, [int(seq) for (seq,) in found], batch)
    room = batch - len(heads)
    if not heads or room <= 0:
        return heads
    aggregates = sorted({p.event.aggregate for p in heads})
    query = _FOLLOWER_CANDIDATES.format(
        aggregates=_marks(len(aggregates)), heads=_marks(len(heads))
    )
    rows = tx.execute(query, (*aggregates, *(p.seq for p in heads), room)).fetchall()
    wanted = [(int(seq), str(aggregate)) for seq, aggregate in rows]
    locked = _lock(tx, participant, [seq for seq, _ in wanted], room)
    return sorted(heads + followers_in_order(wanted, locked, at), key=lambda p: p.seq)


def _lock(
    tx: LocalTransaction, participant: Participant, seqs: list[int], limit: int
) -> list[PendingEvent]:
    """Lock those rows of ``seqs`` that still exist and no other relay holds, at most
    ``limit``, in ``seq`` order."""
    if not seqs:
        return []
    query = _LOCK.format(payload=_payload(participant), seqs=_marks(len(seqs)))
    return [_pending(row) for row in tx.execute(query, (*seqs, limit)).fetchall()]


def followers_in_order(
    wanted: Sequence[tuple[int, str]], locked: Sequence[PendingEvent], now: float
) -> list[PendingEvent]:
    """The followers that go out with their heads: per aggregate, the rows of ``wanted``
    (``(seq, aggregate)`` in ``seq`` order) up to the first one not locked here (another
    relay's, or gone) or still backing off."""
    by_seq = {p.seq: p for p in locked}
    blocked: set[str] = set()
    ready = []
    for seq, aggregate in wanted:
        pending = by_seq.get(seq)
        if aggregate in blocked or pending is None or pending.not_before > now:
            blocked.add(aggregate)
            continue
        ready.append(pending)
    return ready


def delete_published(tx: LocalTransaction, seqs: Sequence[int]) -> None:
    """Delete the rows the broker confirmed (published events leave the outbox at once).

    One row per statement: MariaDB reads ``seq IN (…)`` as a range and locks the next row
    past it too, which another relay may hold (two relays deadlocked that way)."""
    for seq in seqs:
        tx.execute(_DELETE_ONE, (seq,))


def note_refusal(tx: LocalTransaction, seq: int, error: str, not_before: float) -> None:
    """Count a refusal of row ``seq``; it (and its aggregate) waits until ``not_before``."""
    tx.execute(_REFUSED, (not_before, error[:2000], seq))


def park(tx: LocalTransaction, seq: int, error: str, now: float | None = None) -> None:
    """Move row ``seq`` to the parked list: the broker refused it once too often. The rows
    after it in its aggregate go on without it."""
    at = time.time() if now is None else now
    tx.execute(_PARK, (error[:2000], at, seq))
    tx.execute(_DELETE_ONE, (seq,))


def parked_events(participant: Participant, limit: int = 1000) -> list[ParkedEvent]:
    """The parked events, oldest first."""
    query = _PARKED_LIST.format(payload=_payload(participant))
    with participant.local_transaction() as tx:
        rows = tx.execute(query, (limit,)).fetchall()
    return [_parked(row) for row in rows]


def _parked(row: Sequence[Any]) -> ParkedEvent:
    seq, event_id, aggregate, type, payload, created_at, attempts, error, parked_at = row
    event = OutboxEvent.from_row(event_id, aggregate, type, payload, created_at)
    return ParkedEvent(int(seq), event, int(attempts), str(error or ""), float(parked_at))


def retry_parked(participant: Participant, event_id: str) -> bool:
    """Put parked event ``event_id`` back in the outbox under its own ``seq`` (ahead of its
    aggregate's later rows) with its attempts reset; False when no such event is parked."""
    with participant.local_transaction() as tx:
        if tx.execute(_UNPARK, (event_id,)).rowcount != 1:
            return False
        tx.execute(f"DELETE FROM {PARKED_TABLE} WHERE event_id = %s", (event_id,))
    return True


def outbox_state(participant: Participant) -> OutboxState:
    """How many events wait in ``participant``'s outbox, and since when."""
    with participant.local_transaction() as tx:
        count, oldest = tx.execute(_COUNT).fetchone()
    return OutboxState(int(count), None if oldest is None else float(oldest))
