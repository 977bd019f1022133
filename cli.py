"""The ``twopc`` command line: thin — it parses, calls the library, and prints.

Exit codes: 0 success; 1 operational failure (refused transfer, unreachable server, a saga
compensated, …); 2 misuse (bad arguments); 3 in-doubt transactions or unfinished sagas remain
(run ``twopc recover``, or ``twopc sagas`` to see them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any

import click

from twopc.commands.accounts import balances, init
from twopc.commands.bench import bench
from twopc.commands.common import (
    Context,
    HomeDirectory,
    ParticipantOption,
    given_url,
    named_participants,
)
from twopc.commands.consume import consume
from twopc.commands.demo import demo
from twopc.commands.dev import dev
from twopc.commands.flights import flights
from twopc.commands.logs import log_group
from twopc.commands.recovery import audit_command, in_doubt, recover, resolve
from twopc.commands.relay import relay
from twopc.commands.sagas import sagas
from twopc.commands.transfer import transfer


class OneLineUsageError(click.ClickException):
    """A usage error shown as one line: the message and where to read the command's help."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        path = error.ctx.command_path if error.ctx is not None else "twopc"
        message = " ".join(error.format_message().split())  # click's can span lines
        super().__init__(f"{message} (see `{path} --help`)")


class TwopcContext(click.Context):
    """Ties a usage error raised without a context (click's option parser raises some) to
    the innermost command being parsed or run, so its one-line error names that command."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if isinstance(exc_value, click.UsageError) and exc_value.ctx is None:
            exc_value.ctx = self
        return super().__exit__(exc_type, exc_value, tb)


class TwopcGroup(click.Group):
    """The ``twopc`` group. Every usage error of every command, whether click raised it
    while parsing or a command raised it, is one line on stderr, exit 2, instead of click's
    usage dump. (Running a group with no arguments still prints its help.)"""

    context_class = TwopcContext

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _adopt(cmd)
        super().add_command(cmd, name)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:
            raise _one_line(err) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise _one_line(err) from None


def _adopt(command: click.Command) -> None:
    """Give ``command`` and every subcommand under it the :class:`TwopcContext`."""
    command.context_class = TwopcContext
    if isinstance(command, click.Group):
        for subcommand in command.commands.values():
            _adopt(subcommand)


def _one_line(error: click.UsageError) -> click.UsageError | OneLineUsageError:
    # click shows a group run with no arguments its help, by raising a UsageError whose
    # message is the help text (click >= 8.2): that one is left alone.
    no_args_is_help = getattr(click.exceptions, "NoArgsIsHelpError", ())
    return error if isinstance(error, no_args_is_help) else OneLineUsageError(error)


@click.group("twopc", cls=TwopcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    envvar="TWOPC_HOME",
    default=".twopc",
    show_default=True,
    type=HomeDirectory(),
    help="Holds coordinator logs and dev servers. Env: TWOPC_HOME.",
)
@click.option(
    "--pg-url", envvar="TWOPC_PG_URL", help="postgresql://user@host:port/db. Env: TWOPC_PG_URL."
)
@click.option(
    "--mysql-url", envvar="TWOPC_MYSQL_URL", help="mysql://user@host:port/db. Env: TWOPC_MYSQL_URL."
)
@click.option(
    "--participant",
    "participants",
    multiple=True,
    envvar="TWOPC_PARTICIPANTS",
    type=ParticipantOption(),
    help="Another database, NAME=URL (repeatable); NAME (letters, digits, _ . -; at most 64) "
    "is its branches' bqual. Env: TWOPC_PARTICIPANTS, pairs separated by spaces or commas.",
)
@click.pass_context
def main(
    ctx: click.Context,
    home: Path,
    pg_url: str | None,
    mysql_url: str | None,
    participants: tuple[tuple[str, str], ...],
) -> None:
    """Atomic transfers across PostgreSQL and MySQL/MariaDB with two-phase commit.

    With no URL configured, the databases of the servers started by `twopc dev up` are used.
    Exit codes: 0 ok, 1 failure, 2 misuse, 3 in-doubt transactions or unfinished sagas remain.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # psycopg logs what it ignores while a lost connection's pipeline ends; the command
    # reports the loss itself, in one line.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    urls = {
        "pg": given_url(pg_url, "TWOPC_PG_URL"),
        "mysql": given_url(mysql_url, "TWOPC_MYSQL_URL"),
    }
    ctx.obj = Context(home, urls, named_participants(participants, urls))
    ctx.call_on_close(ctx.obj.close)


for _command in (
    dev,
    init,
    balances,
    transfer,
    sagas,
    in_doubt,
    recover,
    resolve,
    audit_command,
    log_group,
    demo,
    bench,
    flights,
    relay,
    consume,
):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
