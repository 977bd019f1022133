"""The saga engine with user-defined sagas on the real servers: no bank, no accounts.

A shop's order saga: reserve stock (MariaDB; compensable), charge the card (PostgreSQL; the
pivot), ship (MariaDB; after the pivot). And a trip: book a hotel (PostgreSQL) and a flight
(MariaDB), both compensable, then confirm (PostgreSQL; the pivot). Every test reads the truth
where it lives: the shop's tables, the idempotency keys in ``saga_steps``, the journal each
action writes in its own local transaction (so a change applied twice shows twice).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
import pytest
from conftest import Databases

from twopc.coordinator import RetryPolicy
from twopc.participants import (
    DatabaseURL,
    LocalTransaction,
    MySQLParticipant,
    Participant,
    PostgresParticipant,
)
from twopc.saga import (
    APPLIED,
    COMPENSATED,
    COMPLETED,
    REJECTED,
    KillAt,
    Orchestrator,
    SagaConfig,
    SagaDefinition,
    SagaIdReused,
    SagaPoint,
    SagaRegistry,
    SagaRun,
    Step,
    StepResult,
    ensure_tables,
    recover_sagas,
)

QUICK = RetryPolicy(initial_interval=0.05, maximum_interval=0.2, deadline=20.0)
STOCK = 10
CARD_LIMIT = Decimal("100.00")

# -- the shop: its tables, its step functions, its two sagas ----------------------------------

_JOURNAL = "shop_journal (saga_id VARCHAR(64) NOT NULL, what VARCHAR(32) NOT NULL, at DOUBLE PRECISION NOT NULL)"  # noqa: E501
_TABLES = {
    "mysql": [
        "CREATE TABLE IF NOT EXISTS shop_stock (item VARCHAR(32) PRIMARY KEY, qty INT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS shop_shipments (order_id VARCHAR(64) PRIMARY KEY,"
        " item VARCHAR(32) NOT NULL, qty INT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {_JOURNAL}",
    ],
    "pg": [
        "CREATE TABLE IF NOT EXISTS shop_payments (order_id VARCHAR(64) PRIMARY KEY,"
        " amount NUMERIC(20, 2) NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {_JOURNAL}",
    ],
}
_PROBES = {
    "mysql": "SELECT 1 FROM shop_stock, shop_shipments, shop_journal WHERE 1 = 0",
    "pg": "SELECT 1 FROM shop_payments, shop_journal WHERE 1 = 0",
}


def shop_tables(participant: Participant) -> None:
    """The definitions' ``setup``: the shop's tables on this server, if missing."""
    ensure_tables(participant, _PROBES[participant.name], _TABLES[participant.name])


def journal(tx: LocalTransaction, saga: SagaRun, what: str) -> None:
    tx.execute(
        "INSERT INTO shop_journal (saga_id, what, at) VALUES (%s, %s, %s)",
        (saga.saga_id, what, time.time()),
    )


def reserve(tx: LocalTransaction, saga: SagaRun) -> StepResult | None:
    item, qty = saga.params["item"], int(saga.params["qty"])
    taken = tx.execute(
        "UPDATE shop_stock SET qty = qty - %s WHERE item = %s AND qty >= %s", (qty, item, qty)
    )
    if taken.rowcount != 1:
        return StepResult(REJECTED, {"reason": f"out of stock: {item}"})
    journal(tx, saga, "reserve")
    return None


def unreserve(tx: LocalTransaction, saga: SagaRun) -> None:
    item, qty = saga.params["item"], int(saga.params["qty"])
    tx.execute("UPDATE shop_stock SET qty = qty + %s WHERE item = %s", (qty, item))
    journal(tx, saga, "unreserve")


def charge(tx: LocalTransaction, saga: SagaRun) -> StepResult | None:
    amount = Decimal(saga.params["amount"])
    if amount > CARD_LIMIT:
        return StepResult(REJECTED, {"reason": f"card declined: {amount} over the limit"})
    tx.execute(
        "INSERT INTO shop_payments (order_id, amount) VALUES (%s, %s)", (saga.saga_id, amount)
    )
    journal(tx, saga, "charge")
    return None


def ship(tx: LocalTransaction, saga: SagaRun) -> None:
    tx.execute(
        "INSERT INTO shop_shipments (order_id, item, qty) VALUES (%s, %s, %s)",
        (saga.saga_id, saga.params["item"], int(saga.params["qty"])),
    )
    journal(tx, saga, "ship")


def journaled(what: str) -> Any:
    """A step function that only writes ``what`` to the journal."""

    def change(tx: LocalTransaction, saga: SagaRun) -> None:
        journal(tx, saga, what)

    return change


def confirm(tx: LocalTransaction, saga: SagaRun) -> StepResult | None:
    if not saga.params.get("confirm", True):
        return StepResult(REJECTED, {"reason": "the traveller said no"})
    journal(tx, saga, "confirm")
    return None


ORDER = SagaDefinition(
    "order",
    [
        Step("reserve", on="mysql", action=reserve, compensation=unreserve),
        Step("charge", on="pg", action=charge, pivot=True),
        Step("ship", on="mysql", action=ship),
    ],
    setup=shop_tables,
)
TRIP = SagaDefinition(
    "trip",
    [
        Step("hotel", on="pg", action=journaled("hotel"), compensation=journaled("no hotel")),
        Step("flight", on="mysql", action=journaled("flight"), compensation=journaled("no flight")),
        Step("confirm", on="pg", action=confirm, pivot=True),
    ],
    setup=shop_tables,
)
SHOP = SagaRegistry([ORDER, TRIP])
BOOK = {"item": "book", "qty": 2, "amount": "30.00"}


# -- fixtures and readers ---------------------------------------------------------------------


def participants(db: Databases) -> list[Participant]:
    """Short lock waits, so a held row lock fails a statement quickly and for real."""
    return [
        PostgresParticipant("pg", DatabaseURL.parse(db.pg_url), lock_wait=5),
        MySQLParticipant("mysql", DatabaseURL.parse(db.mysql_url), lock_wait=1),
    ]


@pytest.fixture()
def shop(db: Databases) -> Databases:
    """The shop's tables, fresh: STOCK books in stock, nothing paid, shipped or journaled."""
    db.mysql_query("DROP TABLE IF EXISTS shop_stock, shop_shipments, shop_journal")
    db.pg_query("DROP TABLE IF EXISTS shop_payments, shop_journal")
    for participant in participants(db):
        shop_tables(participant)
    db.mysql_query("INSERT INTO shop_stock VALUES ('book', %s)", (STOCK,))
    return db


def stock(db: Databases) -> int:
    return int(db.mysql_query("SELECT qty FROM shop_stock WHERE item = 'book'")[0][0])


def journal_of(db: Databases) -> list[str]:
    """Every journaled action on both servers, in the order they happened."""
    rows = [*db.pg_query("SELECT what, at FROM shop_journal")]
    rows += db.mysql_query("SELECT what, at FROM shop_journal")
    return [what for what, _ in sorted(rows, key=lambda row: float(row[1]))]


def keys(db: Databases) -> dict[str, str]:
    """side:key -> stored status, on both servers."""
    found = {}
    for side, query in (("pg", db.pg_query), ("mysql", db.mysql_query)):
        for key, stored in query("SELECT idempotency_key, result FROM saga_steps"):
            found[f"{side}:{key}"] = json.loads(stored)["status"]
    return found


def counts(db: Databases) -> tuple[int, int, int]:
    """(books in stock, payments, shipments)."""
    paid = db.pg_query("SELECT count(*) FROM shop_payments")[0][0]
    shipped = db.mysql_query("SELECT count(*) FROM shop_shipments")[0][0]
    return stock(db), int(paid), int(shipped)


class Seen:
    """Hooks that remember which points the orchestrator passed, in order."""

    def __init__(self) -> None:
        self.points: list[tuple[SagaPoint, int]] = []

    def reached(self, point: SagaPoint, saga_id: str, n: int) -> None:
        self.points.append((point, n))


def config(db: Databases, **options: Any) -> SagaConfig:
    """The shop's orchestrators: quick retries; they resume orders and trips."""
    options = {"retry": QUICK, "compensation_retry": QUICK, "definitions": SHOP, **options}
    return SagaConfig(db.home, **options)


# -- a saga completes; its id replays; its id is bound to its request -------------------------


def test_a_user_defined_saga_completes_and_replays(shop: Databases) -> None:
    with Orchestrator.open(participants(shop), config(shop)) as orchestrator:
        outcome = orchestrator.run(ORDER, BOOK, "o-1")
        again = orchestrator.run(ORDER, BOOK, "o-1")
        with pytest.raises(SagaIdReused, match="saga id o-1 was first used for order"):
            orchestrator.run(ORDER, {**BOOK, "qty": 3}, "o-1")

    assert outcome.outcome == COMPLETED
    assert [r.status for r in outcome.state.results.values()] == [APPLIED] * 3
    assert counts(shop) == (STOCK - 2, 1, 1)
    assert journal_of(shop) == ["reserve", "charge", "ship"]
    assert keys(shop) == {
        "mysql:o-1-step-1": "applied", "pg:o-1-step-2": "applied", "mysql:o-1-step-3": "applied",
    }  # fmt: skip
    assert again.outcome == COMPLETED and all(r.replayed for r in again.state.results.values())
    assert counts(shop) == (STOCK - 2, 1, 1)  # the replay changed nothing


# -- a refusal: compensations in reverse order --------------------------------------------------


def test_a_refused_step_compensates_in_reverse_order(shop: Databases) -> None:
    seen = Seen()
    with Orchestrator.open(participants(shop), config(shop, hooks=seen)) as orchestrator:
        trip = orchestrator.run(TRIP, {"confirm": False}, "t-1")
        order = orchestrator.run(ORDER, {**BOOK, "amount": "500.00"}, "o-2")

    assert trip.outcome == COMPENSATED
    assert trip.state.last_error == "the traveller said no"
    compensations = [n for point, n in seen.points if point is SagaPoint.AFTER_COMPENSATION]
    assert compensations == [2, 1, 1]  # the trip's flight, then its hotel; then the order's
    assert journal_of(shop) == [
        "hotel", "flight", "no flight", "no hotel", "reserve", "unreserve",
    ]  # fmt: skip
    assert order.outcome == COMPENSATED and order.state.last_error.startswith("card declined")
    assert counts(shop) == (STOCK, 0, 0)  # the books are back, nothing paid, nothing shipped
    assert keys(shop) == {
        "pg:t-1-step-1": "applied", "mysql:t-1-step-2": "applied", "pg:t-1-step-3": "rejected",
        "mysql:t-1-comp-2": "applied", "pg:t-1-comp-1": "applied",
        "mysql:o-2-step-1": "applied", "pg:o-2-step-2": "rejected", "mysql:o-2-comp-1": "applied",
    }  # fmt: skip


# -- after the pivot: retried until it succeeds, never compensated ------------------------------


class MySQLKeyHolder:
    """Another MariaDB session holding ``key``'s row in saga_steps uncommitted: whoever claims
    the same key waits on its row lock and times out, until :meth:`release`."""

    def __init__(self, db: Databases, key: str) -> None:
        info = db.state.mysql
        self.conn = pymysql.connect(
            host=info.host, port=info.port, user=info.user, database=info.database
        )
        with self.conn.cursor() as cursor:
            cursor.execute(
                "INSERT INTO saga_steps (idempotency_key, saga_id, result, created_at)"
                " VALUES (%s, 'holder', '{}', 0)",
                (key,),
            )

    def release(self) -> None:
        if self.conn.open:
            self.conn.rollback()
            self.conn.close()


def test_a_step_after_the_pivot_is_retried_until_it_succeeds(shop: Databases) -> None:
    holder = MySQLKeyHolder(shop, "o-3-step-3")
    failures: list[tuple[str, int]] = []

    def on_retry(saga_id: str, what: str, attempt: int, error: str) -> None:
        failures.append((what, attempt))
        if attempt == 2:
            holder.release()

    try:
        with Orchestrator.open(participants(shop), config(shop, on_retry=on_retry)) as orchestrator:
            outcome = orchestrator.run(ORDER, BOOK, "o-3")
    finally:
        holder.release()

    assert outcome.outcome == COMPLETED
    assert failures == [("ship mysql", 1), ("ship mysql", 2)]
    assert counts(shop) == (STOCK - 2, 1, 1)
    assert journal_of(shop) == ["reserve", "charge", "ship"]  # never compensated
    assert "mysql:o-3-comp-1" not in keys(shop)


def test_past_its_retry_policy_a_step_after_the_pivot_waits_for_recovery(
    shop: Databases,
) -> None:
    holder = MySQLKeyHolder(shop, "o-4-step-3")
    short = RetryPolicy(initial_interval=0.05, maximum_interval=0.1, deadline=0.5)
    try:
        with Orchestrator.open(participants(shop), config(shop, retry=short)) as orchestrator:
            waiting = orchestrator.run(ORDER, BOOK, "o-4")
    finally:
        holder.release()
    assert waiting.outcome == "unfinished" and not waiting.state.backward
    assert waiting.state.last_error is not None and waiting.state.last_error.startswith("ship")
    assert counts(shop) == (STOCK - 2, 1, 0)  # paid, not shipped, and the books not returned

    report = recover_sagas(participants(shop), config(shop))
    assert [(r.saga_id, r.action) for r in report.resolutions] == [("o-4", COMPLETED)]
    assert counts(shop) == (STOCK - 2, 1, 1)
    assert journal_of(shop) == ["reserve", "charge", "ship"]


# -- a step that does not answer in time: retried under the same key, applied once ------------


def slow_first_attempt(seconds: float, *, then_fail: bool) -> Any:
    """``charge``, but its first attempt holds its transaction ``seconds`` first (and then
    fails, rolling back, when ``then_fail``)."""
    attempts: list[float] = []

    def slow(tx: LocalTransaction, saga: SagaRun) -> StepResult | None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            time.sleep(seconds)
            if then_fail:
                raise RuntimeError("the slow attempt gives up")  # its transaction rolls back
        return charge(tx, saga)

    return slow


@pytest.mark.parametrize("then_fail", [False, True], ids=["late-commit", "late-rollback"])
def test_a_timed_out_step_is_retried_with_the_same_key_and_applies_once(
    shop: Databases, then_fail: bool
) -> None:
    slow = replace(ORDER.steps[1], action=slow_first_attempt(1.5, then_fail=then_fail))
    timed = SagaDefinition("order", [ORDER.steps[0], replace(slow, timeout=0.4), ORDER.steps[2]])
    failures: list[str] = []
    settings = config(
        shop,
        on_retry=lambda saga, what, n, error: failures.append(error),
        definitions=SagaRegistry([timed]),
    )
    with Orchestrator.open(participants(shop), settings) as orchestrator:
        outcome = orchestrator.run(timed, BOOK, "o-5")

    assert outcome.outcome == COMPLETED
    # Every attempt cut off while the slow one held the key, until the key answered.
    assert failures and set(failures) == {
        "charge pg: no answer within 0.4s (cut off; retried under the same key)"
    }
    assert counts(shop) == (STOCK - 2, 1, 1)  # one payment, whichever attempt made it
    assert journal_of(shop) == ["reserve", "charge", "ship"]
    assert keys(shop)["pg:o-5-step-2"] == "applied"
    assert outcome.state.results[2].status == APPLIED


# -- kill -9 at each saga point, then recovery ---------------------------------------------------

KILLED_AT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, sys.argv[1])
    from test_saga_engine_servers import run_then_die

    run_then_die(Path(sys.argv[2]), *sys.argv[3:])
    """
)


def run_then_die(
    home: Path, pg_url: str, mysql_url: str, point: str, step: str, amount: str
) -> None:
    """In a process of its own: run order ``k-1`` and SIGKILL this process at ``point``."""
    both = [
        PostgresParticipant("pg", DatabaseURL.parse(pg_url)),
        MySQLParticipant("mysql", DatabaseURL.parse(mysql_url)),
    ]
    hooks = KillAt(SagaPoint(point), int(step) if step != "any" else None)
    settings = SagaConfig(home, "shop-1", retry=QUICK, hooks=hooks, definitions=SHOP)
    with Orchestrator.open(both, settings) as orchestrator:
        orchestrator.run(ORDER, {**BOOK, "amount": amount}, "k-1")
    raise SystemExit("the saga was never killed")


KILLS = [
    # point, step, amount, what recovery makes of it
    ("after-step", "1", "30.00", COMPLETED),  # reserved and logged
    ("after-step", "2", "30.00", COMPLETED),  # the pivot applied and logged
    ("after-step", "3", "30.00", COMPLETED),  # shipped and logged, no END
    ("after-step-commit", "1", "30.00", COMPLETED),  # committed, not logged (dual write)
    ("after-step-commit", "2", "30.00", COMPLETED),
    ("after-step-commit", "3", "30.00", COMPLETED),
    ("after-compensation", "any", "500.00", COMPENSATED),  # declined, books back, no END
]


@pytest.mark.parametrize(
    ("point", "step", "amount", "expected"),
    [pytest.param(*kill, id=f"{kill[0]}-{kill[1]}") for kill in KILLS],
)
def test_killed_at_each_saga_point_then_recovered(
    shop: Databases, point: str, step: str, amount: str, expected: str
) -> None:
    tests = str(Path(__file__).resolve().parent)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT, tests, str(shop.home), shop.pg_url, shop.mysql_url,
         point, step, amount],
        env=shop.env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = counts(shop)

    # The CLI knows the bank's transfer and the flight booking: it leaves the order alone.
    cli = shop.twopc("recover", "--json")
    assert cli.returncode == 3, cli.stdout + cli.stderr
    (left,) = json.loads(cli.stdout)["sagas"]["resolutions"]
    assert (left["saga_id"], left["action"], left["finished"]) == ("k-1", "left alone", False)
    known = "known: flight-booking, transfer"
    assert f"saga definition 'order' is not registered here ({known})" in left["reason"]
    assert counts(shop) == before

    # The shop's own recovery has the definition: it finishes the saga, once.
    report = recover_sagas(participants(shop), config(shop))
    assert [(r.saga_id, r.action, r.finished) for r in report.resolutions] == [
        ("k-1", expected, True)
    ]
    assert report.removed_logs == ["shop-1"]
    if expected == COMPLETED:
        assert counts(shop) == (STOCK - 2, 1, 1)
        assert journal_of(shop) == ["reserve", "charge", "ship"]
        assert set(keys(shop).values()) == {"applied"} and len(keys(shop)) == 3
    else:
        assert counts(shop) == (STOCK, 0, 0)
        assert journal_of(shop) == ["reserve", "unreserve"]
    assert recover_sagas(participants(shop), config(shop)).resolutions == []
