"""docker-compose.yml: the settings two-phase commit depends on, checked without Docker.

The file is parsed as YAML and the values that matter are asserted: prepared transactions on
in PostgreSQL, MySQL 8.4 with durable commits and the XA RECOVER privilege for the app user,
health checks that only pass once the real server listens on TCP, ports on 127.0.0.1 only,
and the connection URLs in the header comment agreeing with all of it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from twopc.participants.urls import DatabaseURL

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


@pytest.fixture(scope="module")
def text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose["services"]
    assert name in services, f"no service {name!r} in docker-compose.yml"
    svc = services[name]
    assert isinstance(svc, dict)
    return svc


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two Compose forms it uses."""
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value), {}) for key, value in env.items()}


_VAR = re.compile(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's interpolation, as much as this file uses: ``$$``, ``${X}``, ``${X:-default}``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(3)
        default = match.group(2)
        found = variables.get(name, "")
        return found if found or default is None else default

    return _VAR.sub(substitute, value)


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def healthcheck_argv(svc: dict[str, Any]) -> list[str]:
    """The health check as the container's shell runs it: ``$$`` unescaped, env expanded."""
    test = svc["healthcheck"]["test"]
    assert isinstance(test, list), "use the exec form of healthcheck.test"
    assert test[0] == "CMD-SHELL", "the check must run in a shell to read the password variable"
    after_compose = interpolate(test[1], {})  # leaves ${VAR} for the container's shell
    return shlex.split(interpolate(after_compose, environment(svc)))


def option(argv: list[str], short: str) -> str:
    """The value of ``-X value`` or ``-Xvalue`` in argv."""
    for i, arg in enumerate(argv):
        if arg == short:
            return argv[i + 1]
        if arg.startswith(short) and not arg.startswith("--"):
            return arg[len(short) :]
    raise AssertionError(f"{short} not given in {argv}")


def published(svc: dict[str, Any], container_port: int) -> tuple[str, int]:
    """(host IP, host port) that the service publishes container_port on."""
    for entry in svc.get("ports", []):
        if isinstance(entry, dict):
            host_ip, host_port, target = entry["host_ip"], entry["published"], entry["target"]
        else:
            host_ip, host_port, target = str(entry).rsplit(":", 2)
        if int(target) == container_port:
            return str(host_ip), int(host_port)
    raise AssertionError(f"port {container_port} is not published")


def header_url(text: str, variable: str) -> str:
    """The URL exported as ``variable`` in the header comment."""
    found = re.findall(rf"^#\s+export {variable}=(\S+)\s*$", text, flags=re.MULTILINE)
    assert len(found) == 1, f"the header comment must export {variable} exactly once"
    return str(found[0])


def test_compose_spec_file_without_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert set(compose["services"]) == {"postgres", "mysql", "rabbitmq"}


def test_header_explains_usage_and_development_credentials(text: str) -> None:
    header = text.split("\nservices:", 1)[0]
    assert "docker compose up -d --wait" in header
    assert "development credentials" in header.lower()


def test_postgres_enables_prepared_transactions(compose: dict[str, Any]) -> None:
    svc = service(compose, "postgres")
    assert svc["image"] == "postgres:16"
    argv = command(svc)
    assert argv[0] == "postgres"
    settings = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "-c")
    max_prepared = int(settings["max_prepared_transactions"])
    assert max_prepared > 0, "PREPARE TRANSACTION fails while max_prepared_transactions is 0"
    # PostgreSQL's default max_connections is 100; every session may hold a prepared branch.
    assert max_prepared >= int(settings.get("max_connections", "100"))


def test_postgres_account_and_data_volume(compose: dict[str, Any]) -> None:
    svc = service(compose, "postgres")
    env = environment(svc)
    assert env["POSTGRES_USER"] == env["POSTGRES_PASSWORD"] == env["POSTGRES_DB"] == "twopc"
    assert "POSTGRES_HOST_AUTH_METHOD" not in env, "keep password authentication"
    assert "pgdata:/var/lib/postgresql/data" in svc["volumes"]
    assert "pgdata" in compose["volumes"]


def test_postgres_healthcheck_uses_pg_isready_over_tcp(compose: dict[str, Any]) -> None:
    svc = service(compose, "postgres")
    argv = healthcheck_argv(svc)
    assert argv[0] == "pg_isready"
    env = environment(svc)
    assert option(argv, "-U") == env["POSTGRES_USER"]
    assert option(argv, "-d") == env["POSTGRES_DB"]
    # TCP, so the first-start temporary server (Unix socket only) does not count as ready.
    assert option(argv, "-h") == "127.0.0.1"


def test_mysql_is_84_with_durable_commits_and_binlog(compose: dict[str, Any]) -> None:
    svc = service(compose, "mysql")
    assert svc["image"] == "mysql:8.4"
    argv = command(svc)
    assert "--innodb-flush-log-at-trx-commit=1" in argv
    assert "--sync-binlog=1" in argv
    # The binary log is on by default in 8.x with the host-independent base name "binlog";
    # it must not be switched off, nor renamed after the (per-container) host name.
    assert not {"--skip-log-bin", "--disable-log-bin", "--log-bin", "--log-bin="} & set(argv)


def test_mysql_account_and_data_volume(compose: dict[str, Any]) -> None:
    svc = service(compose, "mysql")
    env = environment(svc)
    assert env["MYSQL_USER"] == env["MYSQL_PASSWORD"] == env["MYSQL_DATABASE"] == "twopc"
    assert env["MYSQL_ROOT_PASSWORD"], "the image refuses to initialise without a root password"
    assert "MYSQL_ALLOW_EMPTY_PASSWORD" not in env
    assert "mysqldata:/var/lib/mysql" in svc["volumes"]
    assert "mysqldata" in compose["volumes"]


def test_mysql_user_is_granted_xa_recover_admin(compose: dict[str, Any]) -> None:
    """MySQL 8 refuses XA RECOVER to accounts without XA_RECOVER_ADMIN; the image grants none."""
    svc = service(compose, "mysql")
    user = environment(svc)["MYSQL_USER"]
    mounts = [entry for entry in svc["configs"] if isinstance(entry, dict)]
    scripts = [
        entry["source"]
        for entry in mounts
        if entry["target"].startswith("/docker-entrypoint-initdb.d/")
        and entry["target"].endswith(".sql")
    ]
    assert len(scripts) == 1, "one init script, mounted where the image runs it on first start"
    content = compose["configs"][scripts[0]]["content"]
    grant = rf"^GRANT\s+XA_RECOVER_ADMIN\s+ON\s+\*\.\*\s+TO\s+'{re.escape(user)}'@'%'\s*;"
    assert re.search(grant, content, flags=re.MULTILINE | re.IGNORECASE)


def test_mysql_healthcheck_pings_over_tcp_with_the_root_password(compose: dict[str, Any]) -> None:
    svc = service(compose, "mysql")
    argv = healthcheck_argv(svc)
    assert argv[:2] == ["mysqladmin", "ping"]
    # TCP, so the first-start temporary server (--skip-networking) does not count as ready.
    assert option(argv, "-h") == "127.0.0.1"
    assert option(argv, "-u") == "root"
    assert option(argv, "-p") == environment(svc)["MYSQL_ROOT_PASSWORD"]


@pytest.mark.parametrize("name", ["postgres", "mysql", "rabbitmq"])
def test_health_checks_have_timing(compose: dict[str, Any], name: str) -> None:
    check = service(compose, name)["healthcheck"]
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)


@pytest.mark.parametrize(
    ("name", "variable", "container_port", "user_key", "password_key", "database_key"),
    [
        ("postgres", "TWOPC_PG_URL", 5432, "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"),
        ("mysql", "TWOPC_MYSQL_URL", 3306, "MYSQL_USER", "MYSQL_PASSWORD", "MYSQL_DATABASE"),
    ],
)
def test_header_urls_match_the_services(
    compose: dict[str, Any],
    text: str,
    name: str,
    variable: str,
    container_port: int,
    user_key: str,
    password_key: str,
    database_key: str,
) -> None:
    svc = service(compose, name)
    host_ip, host_port = published(svc, container_port)
    assert host_ip == "127.0.0.1", "development servers must not listen on every interface"
    url = header_url(text, variable)
    parts = urlsplit(url)
    env = environment(svc)
    assert (parts.hostname, parts.port) == (host_ip, host_port)
    assert parts.username == env[user_key]
    assert parts.password == env[password_key]
    assert parts.path == "/" + env[database_key]
    # ... and the CLI accepts it for the right backend.
    DatabaseURL.parse(url, expect="pg" if name == "postgres" else "mysql")


def test_every_published_port_is_on_loopback(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for entry in svc.get("ports", []):
            host_ip = entry["host_ip"] if isinstance(entry, dict) else str(entry).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {entry} beyond loopback"


def test_rabbitmq_keeps_its_data_and_matches_the_header_url(
    compose: dict[str, Any], text: str
) -> None:
    """A fixed host name (RabbitMQ names its data directory after the node, hence the host),
    a volume for its data, a health check on the AMQP port, and a header URL the outbox
    commands accept that logs in as the user the image creates."""
    from twopc.outbox import check_url

    svc = service(compose, "rabbitmq")
    assert svc["image"].startswith("rabbitmq:3.")
    assert svc["hostname"]
    assert (
        "rabbitmqdata:/var/lib/rabbitmq" in svc["volumes"] and "rabbitmqdata" in compose["volumes"]
    )
    assert "check_port_connectivity" in svc["healthcheck"]["test"]
    url = header_url(text, "TWOPC_BROKER_URL")
    check_url(url)
    parts, env = urlsplit(url), environment(svc)
    assert (parts.hostname, parts.port) == published(svc, 5672)
    assert (parts.username, parts.password) == (
        env["RABBITMQ_DEFAULT_USER"],
        env["RABBITMQ_DEFAULT_PASS"],
    )
    assert parts.path == "/%2F"  # the default virtual host, "/"
