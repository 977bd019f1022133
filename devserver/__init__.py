"""Throwaway PostgreSQL and MariaDB servers for development, demos and tests.

``DevServers(root)`` sets up, starts, stops, crashes (SIGKILL) and restarts a private
PostgreSQL cluster (with prepared transactions enabled) and a private MariaDB server
(binlog on, fully durable) on free loopback ports, remembered in ``root/state.json``;
``DevState.env_lines()`` gives the ``TWOPC_PG_URL``/``TWOPC_MYSQL_URL`` exports. Both
servers use the passwordless user ``twopc`` and database ``twopc``, and hold the databases
of :data:`EXTRA_DATABASES` too (the flight booking's, and more for transactions over many
branches), exported as ``TWOPC_PARTICIPANTS``. Failures raise
``DevServerError`` with the log to read and what to do; ``find_binaries`` locates the
server programs. The ``twopc dev`` CLI commands are thin wrappers over this API.
"""

from __future__ import annotations

from twopc.devserver.binaries import Binaries, find_binaries
from twopc.devserver.errors import DevServerError
from twopc.devserver.servers import DevServers
from twopc.devserver.state import EXTRA_DATABASES, DevState, ServerInfo, ServerKind

__all__ = [
    "EXTRA_DATABASES",
    "Binaries",
    "DevServerError",
    "DevServers",
    "DevState",
    "ServerInfo",
    "ServerKind",
    "find_binaries",
]
