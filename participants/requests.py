"""Stopping a dead coordinator's requests that a server is still running.

A request that carries a branch's prepare (the last statements with the outcome marker and
``PREPARE TRANSACTION`` / ``XA PREPARE``, or the marker and the prepare alone) runs to its end
on the server even when the client that sent it is gone: a statement waiting for a row lock
does not notice its client died, and once it gets the lock the rest of the request prepares
the branch. A coordinator killed while such a request waited would so leave a branch prepared
*after* recovery had listed the servers and removed the coordinator's log: an orphan no
recovery could decide. So recovery (and a coordinator restarting under its old id) first
stops every running request of the coordinators it is about to judge, and waits until their
sessions are gone; only then is what the servers list prepared the whole story.

Each such request names its xid (:meth:`Xid.request_tag`) in the text the servers show as
the session's running query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable

from twopc.participants.errors import ParticipantUnavailable
from twopc.participants.xid import gtrids_named_in

#: Seconds a stopped session may take to end before the server counts as not answering.
STOP_TIMEOUT = 10.0
_POLL = 0.02


def requests_of(
    running: Iterable[tuple[int, str | None]], prefixes: Collection[str]
) -> dict[int, set[str]]:
    """Of the sessions ``running`` (id, query text), those whose request names a gtrid that
    starts with one of ``prefixes``, with the gtrids it names."""
    starts = tuple(prefixes)
    found: dict[int, set[str]] = {}
    for session, text in running:
        named = {g for g in gtrids_named_in(text or "") if g.startswith(starts)}
        if named:
            found[session] = named
    return found


def wait_until_gone(
    alive: Callable[[], set[int]], server: str, timeout: float = STOP_TIMEOUT
) -> None:
    """Poll ``alive`` (the stopped sessions still on the server) until it is empty; raise
    :class:`ParticipantUnavailable` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while left := alive():
        if time.monotonic() >= deadline:
            raise ParticipantUnavailable(
                f"{server}: sessions {sorted(left)} of a dead coordinator were stopped but "
                f"did not end within {timeout:g}s"
            )
        time.sleep(_POLL)
