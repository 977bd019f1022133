"""Round trips per transfer, counted on the wire.

Each server is reached through a relay on 127.0.0.1 that forwards bytes both ways and counts
*turns*: a turn starts whenever the client sends after the server last spoke on that
connection (or sends first). A statement sent and answered is one turn; statements sent
together (a pipeline, a multi-statement packet) and answered together are one turn too. That
is what a round trip costs: one wait for the network and the server. Connection set-up is
left out (connections are made and warmed before counting starts), so the figures are the
steady state of pooled connections; background work of the mode (a coordinator collecting
its outcome markers) is counted, as it is part of what each transfer costs.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from twopc.participants import Participant, participant_for

_CHUNK = 65536
_CONNECT_TIMEOUT = 10.0


@dataclass
class _Link:
    """One relayed connection: who spoke last (``"c"`` client, ``"s"`` server)."""

    client: socket.socket
    server: socket.socket
    last: str = ""


@dataclass
class TurnCounter:
    """A counting relay to ``host:port``, listening on 127.0.0.1 (``port`` once started)."""

    host: str
    target_port: int
    turns: int = 0
    port: int = 0
    _listener: socket.socket | None = None
    _links: list[_Link] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> TurnCounter:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self._listener, self.port = listener, listener.getsockname()[1]
        threading.Thread(target=self._accept, name="twopc-relay", daemon=True).start()
        return self

    def reset(self) -> None:
        with self._lock:
            self.turns = 0

    def read(self) -> int:
        with self._lock:
            return self.turns

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            for end in (link.client, link.server):
                # Shut down before closing: a pump thread blocked in recv() on it wakes (a
                # bare close() leaves the socket open under that recv, and the server's
                # session with it, for as long as the process lives).
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    end.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection((self.host, self.target_port), _CONNECT_TIMEOUT)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            for source, sink, side in ((client, server, "c"), (server, client, "s")):
                threading.Thread(
                    target=self._pump, args=(link, source, sink, side), daemon=True
                ).start()

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket, side: str) -> None:
        # Marked before forwarding: the other side cannot answer bytes it has not been sent,
        # so the order of marks is the order of the conversation.
        try:
            while data := source.recv(_CHUNK):
                with self._lock:
                    if side == "c" and link.last != "c":
                        self.turns += 1
                    link.last = side
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


@contextmanager
def relayed(
    participants: Sequence[Participant],
) -> Iterator[tuple[list[Participant], dict[str, TurnCounter]]]:
    """Participants like ``participants`` (same names, databases and settings of their URLs)
    whose connections go through a counting relay each; closed on exit."""
    counters: dict[str, TurnCounter] = {}
    made: list[Participant] = []
    try:
        for each in participants:
            url = each.url
            default = 5432 if url.backend == "pg" else 3306
            counter = TurnCounter(url.host or "localhost", url.port or default).start()
            counters[each.name] = counter
            via = replace(url, host="127.0.0.1", port=counter.port)
            made.append(participant_for(each.name, via))
        yield made, counters
    finally:
        for participant in made:
            with contextlib.suppress(Exception):
                participant.close()
        for counter in counters.values():
            counter.close()


Mover = Callable[[Sequence[Participant], Path, str, int], Any]


def count_round_trips(
    participants: Sequence[Participant],
    home: Path,
    modes: Sequence[str],
    mover: Mover,
    request: Callable[[random.Random, int], Any],
    *,
    transfers: int = 40,
    accounts: int = 10,
    warm_up: int = 5,
    seed: int = 1,
    settle: Callable[[Any], object] = lambda move: None,
) -> dict[str, dict[str, float]]:
    """Per mode: round trips per transfer to each server and in all, over ``transfers``
    transfers made one at a time (the same transfers for every mode) after ``warm_up``.

    ``mover(participants, home, mode, accounts)`` is the bench's context manager giving a
    ``move(transfer)``; ``request(chooser, accounts)`` makes a transfer; ``settle(move)``
    waits until what the moves left running in the background is done (it is counted).
    """
    counted: dict[str, dict[str, float]] = {}
    for mode in modes:
        chooser = random.Random(seed)
        with (
            relayed(participants) as (proxied, counters),
            mover(proxied, home, mode, accounts) as move,
        ):
            for _ in range(warm_up):
                move(request(chooser, accounts))
            for counter in counters.values():
                counter.reset()
            failed = sum(move(request(chooser, accounts)) is not None for _ in range(transfers))
            settle(move)
            turns = {name: counter.read() for name, counter in counters.items()}
        counted[mode] = {name: round(n / transfers, 2) for name, n in turns.items()}
        counted[mode]["total"] = round(sum(turns.values()) / transfers, 2)
        counted[mode]["failed"] = failed
    return counted
