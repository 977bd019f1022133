"""The ``twopc`` command line: thin — it parses, calls the library, and prints.

Exit codes: 0 success; 1 operational failure (refused transfer, unreachable server, a saga
compensated, …); 2 misuse (bad arguments); 3 in-doubt transactions or unfinished sagas remain
(run ``twopc recover``, or ``twopc sagas`` to see them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from commands.accounts import balances, init
from commands.bench import bench
from commands.common import Context
from commands.demo import demo
from commands.dev import dev
from commands.logs import log_group
from commands.recovery import audit_command, in_doubt, recover, resolve
from commands.sagas import sagas
from commands.transfer import transfer


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    envvar="TWOPC_HOME",
    default=".twopc",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Holds coordinator logs and dev servers. Env: TWOPC_HOME.",
)
@click.option(
    "--pg-url", envvar="TWOPC_PG_URL", help="postgresql://user@host:port/db. Env: TWOPC_PG_URL."
)
@click.option(
    "--mysql-url", envvar="TWOPC_MYSQL_URL", help="mysql://user@host:port/db. Env: TWOPC_MYSQL_URL."
)
@click.pass_context
def main(ctx: click.Context, home: Path, pg_url: str | None, mysql_url: str | None) -> None:
    """Atomic transfers across PostgreSQL and MySQL/MariaDB with two-phase commit.

    With no URL configured, the servers started by `twopc dev up` are used.
    Exit codes: 0 ok, 1 failure, 2 misuse, 3 in-doubt transactions or unfinished sagas remain.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    ctx.obj = Context(home, {"pg": pg_url, "mysql": mysql_url})


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
):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
