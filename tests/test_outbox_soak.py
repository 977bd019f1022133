"""The outbox's kill soak: the relay and the consumer SIGKILLed at random moments while
transfers commit, the broker crashed and restarted once; every committed transfer is
confirmed exactly once in effect, and nothing uncommitted is.

Real processes: a producer committing 2PC transfers (each announcing itself in its
destination's outbox; one in ten asks for more than the account holds and is rolled back,
its event with it), ``twopc relay``, and the notifications consumer (a library script
running the same :class:`ConsumerRunner` as ``twopc consume notifications``, printing each
event it applies or absorbs as a duplicate, so the duplicates delivered are counted even
across the incarnations that were killed). At seeded random moments the relay or the
consumer is SIGKILLed and started again; half-way through the kills the broker is SIGKILLed
and restarted (transfers go on committing meanwhile, and pile up in the outboxes).
Then (bounded in time) the last relay and consumer drain what is left and are stopped, and:

- the confirmations are exactly the committed transfers: none missing, none for a refused
  transfer (phantom), one each; the consumer's record holds each event once;
- both outboxes are empty, nothing parked, nothing dead-lettered.

Duplicates delivered are counted and printed, never asserted: how many there are depends on
where the kills land. Short form (the normal suite): 6 kills. ``TWOPC_FAULTS_LONG=1``: 24.
The seed is printed on failure; ``TWOPC_FAULTS_SEED=N`` replays a run's schedule.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pytest
from conftest import Databases, twopc_executable
from faultkit import LONG, Schedule, record, report, seed
from outbox_kit import prepare_queues

from twopc.bank.notifications import NOTIFICATIONS, TOPOLOGY
from twopc.devserver import DevServers

KILLS = 24 if LONG else 6
TRANSFERS = 540 if LONG else 160
RATE = 12.0  # transfers per second: the short form's transfers flow for about 13 s
REFUSED_EVERY = 10  # every tenth transfer asks too much and is rolled back
DRAIN_TIMEOUT = 60.0

_PRODUCER = """
import sys
from decimal import Decimal
from pathlib import Path
import time
from twopc.bank import AccountRef, Transfer, TransferRejected, run_transfer
from twopc.coordinator import Coordinator, CoordinatorConfig
from twopc.participants import DatabaseURL, participant_for

pg_url, mysql_url, home, count, rate, refused_every = sys.argv[1:7]
participants = [
    participant_for("pg", DatabaseURL.parse(pg_url)),
    participant_for("mysql", DatabaseURL.parse(mysql_url)),
]
with Coordinator.open(participants, CoordinatorConfig(Path(home))) as coordinator:
    started = time.monotonic()
    for n in range(int(count)):
        time.sleep(max(0.0, started + n / float(rate) - time.monotonic()))
        pg, mysql = AccountRef("pg", f"a{n % 10 + 1}"), AccountRef("mysql", f"a{n % 7 + 1}")
        source, destination = (pg, mysql) if n % 2 == 0 else (mysql, pg)
        refuse = n % int(refused_every) == int(refused_every) - 1
        amount = Decimal("5000.00") if refuse else Decimal("0.01")
        try:
            outcome = run_transfer(coordinator, Transfer(source, destination, amount))
        except TransferRejected:
            print("refused", n, flush=True)
        else:
            print("committed", outcome.gtrid, flush=True)
"""

_CONSUMER = """
import sys
from twopc.bank.notifications import NOTIFICATIONS, TOPOLOGY
from twopc.commands.outbox_common import stop_on_signals
from twopc.outbox import ConsumerRunner, Outcome
from twopc.participants import DatabaseURL, participant_for

class Printing(ConsumerRunner):
    def _count(self, event, outcome):
        super()._count(event, outcome)
        print(outcome.value, event.event_id, flush=True)

pg_url, broker_url = sys.argv[1:3]
pg = participant_for("pg", DatabaseURL.parse(pg_url))
runner = Printing.open(NOTIFICATIONS, pg, broker_url, TOPOLOGY)
with stop_on_signals() as stop:
    runner.run(stop)
"""


@dataclass
class Worker:
    """A relay or consumer process, started again after each kill; output to files."""

    name: str
    argv: list[str]
    env: dict[str, str]
    logs: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started: float = 0.0  # time.monotonic() of the latest start
    kills: int = 0
    outputs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        self.started = time.monotonic()
        out = self.logs / f"{self.name}-{self.starts}.out"
        self.outputs.append(out)
        with (
            out.open("wb") as stdout,
            (self.logs / f"{self.name}-{self.starts}.err").open("wb") as stderr,
        ):
            self.popen = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        assert self.popen is not None
        with suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)
        self.kills += 1

    def stop(self) -> int | None:
        """SIGTERM (finish the batch or message in hand), then SIGKILL after 20 s."""
        if self.popen is None:
            return None
        with suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=30)
            return None

    def lines(self) -> list[str]:
        return [line for out in self.outputs for line in out.read_text().splitlines()]

    def errors(self) -> str:
        return "\n".join(
            (self.logs / f"{self.name}-{n}.err").read_text()[-400:]
            for n in range(1, self.starts + 1)
        )


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.timeout(240 if LONG else 120)
def test_outbox_kill_soak(
    db: Databases, dev_servers: DevServers, broker_url: str, tmp_path: Path
) -> None:
    dev_servers.broker_up()  # a test before may have killed it
    prepare_queues(broker_url, TOPOLOGY)
    schedule = Schedule(seed())
    env = db.env(TWOPC_BROKER_URL=broker_url)
    relay = Worker("relay", [twopc_executable(), "relay", "--json"], env, tmp_path)
    consumer = Worker(
        "consumer", [sys.executable, "-c", _CONSUMER, db.pg_url, broker_url], env, tmp_path
    )
    producer = subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, db.pg_url, db.mysql_url, str(db.home),
         str(TRANSFERS), str(RATE), str(REFUSED_EVERY)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    flowing = TRANSFERS / RATE
    broker_down = schedule.between(0.5, 2.0)  # seconds before it is started again
    broker_errors: list[BaseException] = []
    phases: dict[str, float] = {}

    def crash_broker() -> None:
        try:
            dev_servers.kill_broker()
            phases["broker killed"] = time.monotonic() - started
            time.sleep(broker_down)
            dev_servers.broker_up()
            phases["broker back"] = time.monotonic() - started
        except BaseException as err:  # reported by the test
            broker_errors.append(err)

    broker = threading.Thread(target=crash_broker)
    workers = {"relay": relay, "consumer": consumer}
    started = time.monotonic()
    try:
        relay.start()
        consumer.start()
        for number in range(KILLS):
            if number == KILLS // 2:
                # Half the kills before the broker crash, half once it is back: then the
                # relay is publishing what piled up meanwhile, in full batches.
                broker.start()
                broker.join(timeout=120)
            # A moment in the target's life past most of its start-up (about half a
            # second here), so that most kills land while it relays or consumes.
            target = workers[schedule.pick(("relay", "consumer"))]
            time.sleep(max(0.0, target.started + schedule.between(0.5, 2.0) - time.monotonic()))
            for worker in workers.values():  # one that gave up by itself: start it again
                if not worker.running():
                    worker.start()
            target.kill()
            time.sleep(schedule.between(0.0, 0.2))
            target.start()
        phases["kills done"] = time.monotonic() - started
        out, err = producer.communicate(timeout=flowing + 60)
        phases["producer done"] = time.monotonic() - started
        committed = {line.split()[1] for line in out.splitlines() if line.startswith("committed")}
        refused = sum(line.startswith("refused") for line in out.splitlines())

        def drained() -> bool:
            for worker in workers.values():
                if not worker.running():
                    worker.start()
            confirmed = {
                t for (t,) in db.pg_query("SELECT transfer_id FROM transfer_confirmations")
            }
            waiting = db.pg_query("SELECT COUNT(*) FROM outbox") + db.mysql_query(
                "SELECT COUNT(*) FROM outbox"
            )
            return confirmed >= committed and all(n == 0 for (n,) in waiting)

        settled = wait_until(drained, DRAIN_TIMEOUT)
        phases["drained"] = time.monotonic() - started
    finally:
        for proc in (producer,):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        codes = {name: worker.stop() for name, worker in workers.items()}
    seconds = time.monotonic() - started

    problems: list[str] = []
    if producer.returncode != 0:
        problems.append(f"the producer failed ({producer.returncode}): {err[-400:]}")
    if broker_errors:
        problems.append(f"the broker could not be crashed and restarted: {broker_errors[0]}")
    if not settled:
        problems.append(f"not drained within {DRAIN_TIMEOUT:.0f}s")
    # 0: stopped by its SIGTERM handler; -SIGTERM: the signal came before the handler was in
    # place (a process just restarted, still starting up), which loses nothing either.
    if any(code not in (0, -signal.SIGTERM) for code in codes.values()):
        problems.append(f"the last relay and consumer did not stop cleanly: {codes}")
    rows = db.pg_query("SELECT transfer_id, COUNT(*) FROM transfer_confirmations GROUP BY 1")
    confirmed = {t: n for t, n in rows}
    missing = committed - set(confirmed)
    phantom = set(confirmed) - committed
    doubled = {t for t, n in confirmed.items() if n != 1}
    for kind, found in (("missing", missing), ("phantom", phantom), ("doubled", doubled)):
        if found:
            problems.append(f"{len(found)} confirmation(s) {kind}: {sorted(found)[:5]}")
    recorded = db.pg_query(
        "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM consumed_events WHERE consumer = %s",
        (NOTIFICATIONS.name,),
    )
    if recorded != [(len(committed), len(committed))]:
        problems.append(f"consumed_events holds {recorded}, expected {len(committed)} ids once")
    for side, query in (("pg", db.pg_query), ("mysql", db.mysql_query)):
        left = query("SELECT (SELECT COUNT(*) FROM outbox), (SELECT COUNT(*) FROM outbox_parked)")
        if left != [(0, 0)]:
            problems.append(f"{side} outbox and parked rows left: {left}")
    outcomes = consumer.lines()
    applied = sum(line.startswith("applied") for line in outcomes)
    duplicates = sum(line.startswith("duplicate") for line in outcomes)
    dead = _dead_letters(broker_url)
    if dead:
        problems.append(f"{dead} message(s) dead-lettered")
    if relay.kills + consumer.kills < KILLS:
        problems.append(f"only {relay.kills + consumer.kills} kills of {KILLS}")
    if not committed or not refused:
        problems.append(f"no flow to judge: {len(committed)} committed, {refused} refused")

    print(
        f"\noutbox kill soak (seed {schedule.seed}): {len(committed)} transfers committed, "
        f"{refused} refused; relay killed {relay.kills}x, consumer killed {consumer.kills}x "
        f"({relay.starts + consumer.starts} starts), broker crashed and restarted once; "
        f"{len(confirmed)} confirmations; consumer applied {applied} and absorbed "
        f"{duplicates} duplicate deliveries (an event applied just before a kill goes "
        f"unprinted); {seconds:.1f}s ("
        + ", ".join(f"{phase} at {at:.1f}s" for phase, at in phases.items())
        + ")"
    )
    record(
        "outbox kill soak",
        problems,
        kills=relay.kills + consumer.kills,
        server_faults=1,
        transfers=len(committed) + refused,
    )
    assert not problems, (
        f"TWOPC_FAULTS_SEED={schedule.seed}\n{report(problems)}\n"
        f"relay stderr:\n{relay.errors()}\nconsumer stderr:\n{consumer.errors()}"
    )


def _dead_letters(url: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        declared = channel.queue_declare(NOTIFICATIONS.subscription.dead_queue, passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()
