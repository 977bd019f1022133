"""Process, pid-file and port checks shared by both dev servers.

Zombies count as dead everywhere here: a SIGKILLed server stays a zombie until its
parent (or an init that reaps lazily) collects it, yet it serves nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from pathlib import Path

from twopc.devserver.errors import DevServerError
from twopc.devserver.state import ServerInfo, ServerKind

LOOPBACK = "127.0.0.1"
DEV_USER = "twopc"
DEV_DATABASE = "twopc"
# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running (not zombie) process."""
    _reap_if_child(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return not _is_zombie(pid)


def _reap_if_child(pid: int) -> None:
    # A server we spawned ourselves (mariadbd) is our child: collect it so it
    # does not linger as a zombie after it exits.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _is_zombie(pid: int) -> bool:
    # A killed multi-threaded process shows its leader as a zombie while other
    # threads are still exiting and holding its sockets: dead only when all are.
    try:
        tasks = [entry.name for entry in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    return all(_task_state(pid, task) in ("Z", "X", "") for task in tasks)


def _task_state(pid: int, task: str) -> str:
    try:
        stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
    except OSError:
        return ""  # exited meanwhile
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat[stat.rfind(")") + 2 :][:1]


def process_cwd(pid: int) -> Path | None:
    """The working directory of ``pid``, or None if it cannot be read."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def read_pidfile(pidfile: Path) -> int | None:
    """The pid on the first line of ``pidfile``, or None if absent or unreadable."""
    try:
        first = pidfile.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def server_pid(pidfile: Path, datadir: Path) -> int | None:
    """The live server pid from ``pidfile`` if that process really serves ``datadir``.

    Both postgres and mariadbd chdir into their data directory, so checking the
    working directory rules out a pid reused by an unrelated process after a reboot.
    """
    pid = read_pidfile(pidfile)
    if pid is None or not pid_alive(pid):
        return None
    return pid if process_cwd(pid) == datadir.resolve() else None


def pids_in_dir(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (servers and their children)."""
    target = directory.resolve()
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if process_cwd(pid) == target and pid_alive(pid)]


def wait_until_gone(pids: list[int], timeout: float) -> bool:
    """Wait until none of ``pids`` is alive; False on timeout."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


#: Seconds a dev server's processes may take to exit after a stop or a kill.
STOP_TIMEOUT = 60.0


def ensure_gone(pids: list[int], who: str, what: str, logfile: Path) -> None:
    """Wait until ``pids`` have exited after ``what`` (a stop, a kill); DevServerError naming
    ``who`` and the log to read if they are still alive after :data:`STOP_TIMEOUT`."""
    if not wait_until_gone(pids, STOP_TIMEOUT):
        raise DevServerError(
            f"{who} still alive {STOP_TIMEOUT:.0f}s after {what}; see {logfile}"
        )


def signal_and_wait(pid: int | None, signum: int, who: str, what: str, logfile: Path) -> None:
    """Send ``signum`` to a server's process (none running: nothing to do) and wait until it
    has exited (see :func:`ensure_gone`)."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
    ensure_gone([pid], f"{who} (pid {pid})", what, logfile)


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    """True if something else holds ``port`` on the loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too, so TIME_WAIT leftovers do not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def port_accepting(port: int) -> bool:
    """True if a TCP connection to the loopback ``port`` succeeds."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


def log_tail(logfile: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of ``logfile`` (for error messages)."""
    try:
        text = logfile.read_text(errors="replace")
    except OSError:
        return f"(log {logfile} is not readable)"
    return "\n".join(text.splitlines()[-lines:])


def describe_server(
    kind: ServerKind,
    scheme: str,
    port: int,
    datadir: Path,
    logfile: Path,
    pid: int | None,
    tls_ca: Path | None = None,
) -> ServerInfo:
    """A dev server as it is right now: running means its pid lives and its port answers.

    Both dev servers serve the passwordless user ``twopc`` and the database ``twopc``.
    """
    return ServerInfo(
        kind=kind,
        host=LOOPBACK,
        port=port,
        user=DEV_USER,
        database=DEV_DATABASE,
        datadir=datadir,
        logfile=logfile,
        pid=pid,
        running=pid is not None and port_accepting(port),
        url=f"{scheme}://{DEV_USER}@{LOOPBACK}:{port}/{DEV_DATABASE}",
        tls_ca=tls_ca,
    )
