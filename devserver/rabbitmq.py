"""One throwaway RabbitMQ broker: the distribution's rabbitmq-server, run as ourselves.

The machine may run its own RabbitMQ (port 5672, node ``rabbit@…``, the shared ``epmd`` on
4369): the dev broker touches none of it. It reads no file under /etc/rabbitmq (its own
config, env and plugins files are named explicitly), listens on loopback ports of its own,
and runs Erlang distribution without epmd (``-start_epmd false``, a fixed distribution
port), so it neither starts nor registers with the machine's name server. Its files live in
``instance_dir``: config, ``mnesia/`` (the queues' messages), ``log/``, the Erlang cookie.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from twopc.devserver.broker_state import BrokerInfo, BrokerPlacement
from twopc.devserver.errors import DevServerError
from twopc.devserver.procs import (
    LOOPBACK,
    log_tail,
    port_accepting,
    port_in_use,
    server_pid,
    signal_and_wait,
)

_READY_TIMEOUT = 90.0  # a first boot on a busy 2-CPU machine takes 5-15 s
# The real start script: /usr/sbin/rabbitmq-server is a wrapper that switches to the
# system's rabbitmq user and its /var/lib/rabbitmq, which a dev broker must not share.
_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
_SCRIPT_GLOB = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"


def find_rabbitmq_server() -> Path:
    """The rabbitmq-server start script of the distribution's package; DevServerError
    naming the package when it is missing."""
    candidates = [Path(p) for p in _SCRIPTS] + sorted(Path("/").glob(_SCRIPT_GLOB.lstrip("/")))
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise DevServerError(
        "RabbitMQ server not found (need /usr/lib/rabbitmq/bin/rabbitmq-server); install it "
        "with: sudo apt-get install -y rabbitmq-server  (or run scripts/bootstrap.sh as root), "
        "or start the databases alone: twopc dev up --no-broker"
    )


class RabbitMQServer:
    """A RabbitMQ node in ``placement.instance_dir`` on ``placement.port`` (AMQP)."""

    def __init__(self, script: Path, placement: BrokerPlacement) -> None:
        self._script = script
        self._place = placement
        self.folder = placement.instance_dir
        self.node = f"twopc-{placement.port}@localhost"
        self.pidfile = self.folder / "rabbitmq.pid"
        self.logfile = self.folder / "log" / f"{self.node}.log"
        self.startup_log = self.folder / "startup.log"

    @property
    def url(self) -> str:
        """The AMQP URL, without credentials (pika then logs in as ``guest``)."""
        return f"amqp://{LOOPBACK}:{self._place.port}/%2F"

    def pid(self) -> int | None:
        """The live broker's pid (the Erlang VM), or None."""
        return server_pid(self.pidfile, self.folder)

    def info(self) -> BrokerInfo:
        """The broker as it is right now."""
        pid = self.pid()
        return BrokerInfo(
            host=LOOPBACK,
            port=self._place.port,
            datadir=self.folder / "mnesia",
            logfile=self.logfile,
            pid=pid,
            running=pid is not None and port_accepting(self._place.port),
            url=self.url,
        )

    def ensure_initialized(self) -> None:
        """Write the broker's own config files (rewritten each time: they follow state.json)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.folder / "rabbitmq.conf").write_text(self._config())
        (self.folder / "enabled_plugins").write_text("[].\n")  # no management plugin
        (self.folder / "rabbitmq-env.conf").write_text("# the dev broker's: read nothing else\n")

    def _config(self) -> str:
        lines = [
            f"listeners.tcp.default = {LOOPBACK}:{self._place.port}",
            "log.console = false",
            "log.file.level = info",
            # The dev broker serves tests that fill queues quickly: never block publishers
            # for memory on a large machine, nor for the last GB of a small disk.
            "vm_memory_high_watermark.relative = 0.2",
            "disk_free_limit.absolute = 50MB",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start the broker detached and wait until it accepts AMQP connections."""
        if self.pid() is not None:
            return
        for port in (self._place.port, self._place.dist_port):
            if port_in_use(port):
                raise DevServerError(
                    f"cannot start RabbitMQ: port {port} (remembered in state.json) is taken by "
                    "another process; stop it, or run `twopc dev down` and delete state.json"
                )
        self.ensure_initialized()
        process = self._spawn()
        self.pidfile.write_text(f"{process.pid}\n")
        self._wait_ready(process)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.startup_log.open("ab") as out:
            return subprocess.Popen(
                [str(self._script)],
                cwd=self.folder,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal that started it spares it
            )

    def _environment(self) -> dict[str, str]:
        folder = self.folder
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        erl_args = (
            f"-start_epmd false -erl_epmd_port {self._place.dist_port} "
            "-kernel inet_dist_use_interface {127,0,0,1}"
        )
        return keep | {
            "HOME": str(folder),  # the Erlang cookie goes here
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(self.pidfile),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self._place.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": erl_args,
        }

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while not port_accepting(self._place.port):
            if process.poll() is not None:
                raise DevServerError(
                    f"RabbitMQ exited during start-up (code {process.returncode}); last lines "
                    f"of {self.startup_log}:\n{log_tail(self.startup_log)}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise DevServerError(
                    f"RabbitMQ did not accept connections within {_READY_TIMEOUT:.0f}s; see "
                    f"{self.logfile} and {self.startup_log}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Clean shutdown (SIGTERM: the Erlang VM stops the broker's applications in order)."""
        self._signal(signal.SIGTERM, "stop")

    def kill(self) -> None:
        """SIGKILL the broker (a crash: unconfirmed messages may be lost, confirmed ones not)."""
        self._signal(signal.SIGKILL, "kill")

    def _signal(self, signum: signal.Signals, what: str) -> None:
        signal_and_wait(self.pid(), signum, "RabbitMQ", what, self.logfile)
        # Its helper processes (erl_child_setup, inet_gethost) leave with the VM.
        self.pidfile.unlink(missing_ok=True)
