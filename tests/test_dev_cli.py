"""``twopc dev …`` end to end: throwaway servers under HOME/dev, used when no URL is given."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import twopc_executable

from twopc.devserver import DevServers


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run twopc with its default home, the relative ``./.twopc``, from ``home``'s parent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOPC_")}
    return subprocess.run(
        [twopc_executable(), *args],
        env=env,
        cwd=home.parent,
        text=True,
        capture_output=True,
        timeout=180,
        check=False,
    )


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / ".twopc"
    DevServers(tmp_path / ".twopc" / "dev").destroy()  # whatever the test did, stop the servers


def test_dev_servers_serve_the_cli_without_urls(home: Path) -> None:
    up = run(home, "dev", "up")
    assert up.returncode == 0, up.stderr
    assert 'eval "$(twopc dev env)"' in up.stdout
    again = run(home, "dev", "up")  # harmless the second time
    assert again.returncode == 0, again.stderr

    status = json.loads(run(home, "dev", "status", "--json").stdout)
    assert status["pg"]["running"] and status["mysql"]["running"]
    authority = status["mysql"]["tls_ca"]  # the dev MariaDB speaks TLS, from its own CA
    assert Path(authority).is_file() and status["pg"]["tls_ca"] is None
    assert f"TLS: verify the server with ?ssl_ca={authority}" in run(home, "dev", "status").stdout
    env_lines = run(home, "dev", "env").stdout.splitlines()
    assert env_lines[:2] == [
        f"export TWOPC_PG_URL={status['pg']['url']}",
        f"export TWOPC_MYSQL_URL={status['mysql']['url']}",
    ]
    assert env_lines[2].startswith("export TWOPC_PARTICIPANTS='flights=postgresql://")
    broker = status["broker"]  # a throwaway RabbitMQ too, on ports of its own
    assert broker["running"] and broker["port"] != 5672
    assert env_lines[3] == f"export TWOPC_BROKER_URL={broker['url']}"

    assert run(home, "init", "--accounts", "3").returncode == 0
    moved = run(home, "transfer", "pg:a1", "mysql:a3", "2.50", "--json")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["protocol"] == "2pc"
    relayed = run(home, "relay", "--once", "--json")  # to the dev broker: no URL needed
    assert relayed.returncode == 0, relayed.stderr
    assert json.loads(relayed.stdout)["by_source"] == {"mysql": 1}
    balances = json.loads(run(home, "balances", "--json").stdout)
    assert balances["accounts"]["pg"]["a1"] == "997.50"
    assert balances["accounts"]["mysql"]["a3"] == "1002.50"

    down = run(home, "dev", "down")
    assert down.returncode == 0, down.stderr
    stopped = json.loads(run(home, "dev", "status", "--json").stdout)
    assert not stopped["pg"]["running"] and not stopped["mysql"]["running"]
    assert not stopped["broker"]["running"]
    missing = run(home, "balances")
    assert missing.returncode == 2
    assert "no pg database configured" in missing.stderr


def test_dev_status_before_up_says_what_to_do(home: Path) -> None:
    result = run(home, "dev", "status")
    assert result.returncode == 1
    assert "run `twopc dev up`" in result.stderr
