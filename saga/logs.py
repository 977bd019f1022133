"""Where orchestrators keep their logs, and what every log says about unfinished sagas.

Each orchestrator writes ``<home>/sagas/<orchestrator-id>/`` (a :mod:`txlog` log whose txids
are saga ids) and holds its lock while alive, so "is it alive?" is a lock probe. These
readers take no lock: they serve listings, and the check that no other orchestrator is in
the middle of a saga id before this one runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twopc.saga.ids import check_orchestrator_id
from twopc.saga.state import SagaState, replay_records
from twopc.txlog import LogError, LogHome, LogMissing


def orchestrator_home(home: Path) -> LogHome:
    """The orchestrators' logs under ``home`` (``<home>/sagas/<id>/``)."""
    return LogHome(home / "sagas", check_orchestrator_id)


def saga_root(home: Path) -> Path:
    return orchestrator_home(home).root


def orchestrator_ids(home: Path) -> list[str]:
    """Ids of every orchestrator with a log directory under ``home``."""
    return orchestrator_home(home).owners()


@dataclass(frozen=True)
class OrchestratorLog:
    """One orchestrator's log as read without its lock: its unfinished sagas, or an error."""

    orchestrator: str
    alive: bool
    sagas: tuple[SagaState, ...] = ()
    error: str | None = None


def read_orchestrator(home: Path, orchestrator_id: str) -> OrchestratorLog:
    """Read one orchestrator's log; damage is reported in ``error``, never raised."""
    logs = orchestrator_home(home)
    alive = logs.alive(orchestrator_id)
    try:
        unfinished = logs.read(orchestrator_id).unfinished()
    except LogMissing:
        return OrchestratorLog(orchestrator_id, alive)
    except LogError as err:
        return OrchestratorLog(orchestrator_id, alive, error=str(err))
    sagas = tuple(replay_records(txid, records) for txid, records in unfinished.items())
    return OrchestratorLog(orchestrator_id, alive, sagas)


def all_orchestrators(home: Path) -> list[OrchestratorLog]:
    """Every orchestrator's log under ``home``."""
    return [read_orchestrator(home, oid) for oid in orchestrator_ids(home)]


def owner_of(home: Path, saga_id: str, *, besides: str) -> OrchestratorLog | None:
    """The orchestrator other than ``besides`` whose log holds ``saga_id`` unfinished.

    ``besides`` (the caller's own log, which it knows) is not read."""
    for orchestrator_id in orchestrator_ids(home):
        if orchestrator_id == besides:
            continue
        entry = read_orchestrator(home, orchestrator_id)
        if any(s.saga_id == saga_id for s in entry.sagas):
            return entry
    return None
