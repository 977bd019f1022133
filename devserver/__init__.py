"""Throwaway PostgreSQL and MariaDB servers for development, demos and tests.

``DevServers(root)`` sets up, starts, stops, crashes (SIGKILL) and restarts a private
PostgreSQL cluster (with prepared transactions enabled) and a private MariaDB server
(binlog on, fully durable) on free loopback ports, remembered in ``root/state.json``;
``DevState.env_lines()`` gives the ``TWOPC_PG_URL``/``TWOPC_MYSQL_URL`` exports. Both
servers use the passwordless user ``twopc`` and database ``twopc``. Failures raise
``DevServerError`` with the log to read and what to do; ``find_binaries`` locates the
server programs. The ``twopc dev`` CLI commands are thin wrappers over this API.
"""

from __future__ import annotations

from twopc.devserver.binaries import Binaries, find_binaries
from twopc.devserver.errors import DevServerError
from twopc.devserver.servers import DevServers
from twopc.devserver.state import DevState, ServerInfo, ServerKind

__all__ = [
    "Binaries",
    "DevServerError",
    "DevServers",
    "DevState",
    "ServerInfo",
    "ServerKind",
    "find_binaries",
]
