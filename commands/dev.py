"""`twopc dev`: throwaway PostgreSQL and MariaDB servers for trying twopc out."""

from __future__ import annotations

import click

from twopc.bank import SIDES
from twopc.commands.common import Context, emit, json_option, operational_errors
from twopc.devserver import DevState
from twopc.devserver.broker_state import BrokerInfo
from twopc.devserver.state import ServerInfo


@click.group()
def dev() -> None:
    """Throwaway PostgreSQL and MariaDB servers under HOME/dev."""


@dev.command("up")
@click.option(
    "--broker/--no-broker",
    default=True,
    show_default=True,
    help="Also start the throwaway RabbitMQ the outbox relay publishes to.",
)
@click.pass_obj
@operational_errors
def dev_up(obj: Context, broker: bool) -> None:
    """Start both servers, and the broker (harmless when already running)."""
    state = obj.dev.up()
    if broker:
        obj.dev.broker_up()
        state = obj.dev.status() or state
    click.echo(_dev_status_text(state))
    click.echo('Use them from another shell with: eval "$(twopc dev env)"')


@dev.command("down")
@click.pass_obj
@operational_errors
def dev_down(obj: Context) -> None:
    """Stop both servers cleanly (data is kept)."""
    obj.dev.down()
    click.echo("dev servers stopped")


@dev.command("status")
@json_option
@click.pass_obj
@operational_errors
def dev_status(obj: Context, as_json: bool) -> None:
    """Show where the servers are and whether they run."""
    state = obj.dev.status()
    if state is None:
        raise click.ClickException(f"no dev servers under {obj.home / 'dev'}: run `twopc dev up`")
    document: dict[str, object] = {kind: _server_document(state, kind) for kind in SIDES}
    if state.broker is not None:
        document["broker"] = _broker_document(state.broker)
    emit(as_json, document, _dev_status_text(state))


@dev.command("env")
@click.pass_obj
@operational_errors
def dev_env(obj: Context) -> None:
    """Print export lines for the servers' URLs: eval "$(twopc dev env)"."""
    state = obj.dev.status()
    if state is None:
        raise click.ClickException(f"no dev servers under {obj.home / 'dev'}: run `twopc dev up`")
    click.echo("\n".join(state.env_lines()))


def _server_document(state: DevState, kind: str) -> dict[str, object]:
    info = state.pg if kind == "pg" else state.mysql
    tls_ca = None if info.tls_ca is None else str(info.tls_ca)
    return {**_broker_document(info), "tls_ca": tls_ca}


def _broker_document(info: BrokerInfo | ServerInfo) -> dict[str, object]:
    """A dev process's fields (a database server's add its TLS CA)."""
    return {
        "url": info.url,
        "running": info.running,
        "pid": info.pid,
        "port": info.port,
        "datadir": str(info.datadir),
        "log": str(info.logfile),
    }


def _dev_status_text(state: DevState) -> str:
    lines = []
    for info in (state.pg, state.mysql):
        running = f"running (pid {info.pid})" if info.running else "stopped"
        lines.append(f"{info.kind:<6} {info.url:<45} {running}  log: {info.logfile}")
        if info.tls_ca is not None:
            lines.append(f"{'':<6} TLS: verify the server with ?ssl_ca={info.tls_ca}")
    if state.broker is not None:
        broker = state.broker
        running = f"running (pid {broker.pid})" if broker.running else "stopped"
        lines.append(f"{'broker':<6} {broker.url:<45} {running}  log: {broker.logfile}")
    return "\n".join(lines)
