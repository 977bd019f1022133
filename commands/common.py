"""Plumbing every command shares: the context object, output and error handling, common options."""

from __future__ import annotations

import functools
import json
import math
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from bank import InvalidInput, TransferRejected
from coordinator import CoordinatorError, InDoubt
from coordinator.recovery import RecoveryError
from devserver import DevServerError, DevServers
from participants import (
    DatabaseURL,
    InvalidURL,
    LockWaitTimeout,
    Participant,
    ParticipantError,
    participant_for,
)
from saga import InvalidSagaId, SagaError, parse_duration

EXIT_IN_DOUBT = 3
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass
class Context:
    """What every command gets: the home directory and the configured database URLs."""

    home: Path
    urls: dict[str, str | None]

    @property
    def dev(self) -> DevServers:
        return DevServers(self.home / "dev")

    def url(self, side: str) -> DatabaseURL:
        """The URL for ``side`` from its option/env var, else the running dev servers."""
        text = self.urls[side] or self._dev_url(side)
        if text is None:
            option = "--pg-url / TWOPC_PG_URL" if side == "pg" else "--mysql-url / TWOPC_MYSQL_URL"
            raise BadInput(f"no {side} database configured: set {option} or run `twopc dev up`")
        try:
            return DatabaseURL.parse(text, expect="pg" if side == "pg" else "mysql")
        except InvalidURL as err:
            raise BadInput(f"{side} URL: {err}") from None

    def participants(
        self, sides: Iterator[str] | tuple[str, ...], lock_wait: float = 30.0
    ) -> list[Participant]:
        return [participant_for(side, self.url(side), lock_wait=lock_wait) for side in sides]

    def _dev_url(self, side: str) -> str | None:
        try:
            state = self.dev.status()
        except DevServerError:
            return None
        if state is None:
            return None
        info = state.pg if side == "pg" else state.mysql
        return info.url if info.running else None


class BadInput(click.ClickException):
    """Malformed input: one line on stderr, exit 2, nothing attempted."""

    exit_code = 2


def json_option(command: _F) -> _F:
    """The shared ``--json`` flag: one JSON document on stdout instead of text for people."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(command)


def operational_errors(command: _F) -> _F:
    """Turn library errors into one-line messages and exit codes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (InvalidInput, InvalidSagaId) as err:
            raise BadInput(str(err)) from None
        except LockWaitTimeout as err:
            raise click.ClickException(f"{err}; rolled back, nothing was changed") from None
        except TransferRejected as err:
            raise click.ClickException(f"transfer refused: {err}; nothing was changed") from None
        except InDoubt as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(EXIT_IN_DOUBT)
        except (
            CoordinatorError,
            ParticipantError,
            DevServerError,
            RecoveryError,
            SagaError,
        ) as err:
            raise click.ClickException(str(err)) from None

    return wrapper  # type: ignore[return-value]


def quiet_option(command: _F) -> _F:
    """The shared ``--quiet`` flag: no progress bar (there is none unless stderr is a terminal)."""
    return click.option("--quiet", "-q", is_flag=True, help="Show no progress bar.")(command)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM is handled like Ctrl-C while the block runs (``KeyboardInterrupt``), so the
    work inside rolls back or leaves in doubt exactly as it would on Ctrl-C, instead of the
    process dying wherever it stands."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def progress(length: int, label: str, *, quiet: bool) -> Iterator[Callable[[], object]]:
    """A progress bar on stderr for long work, when stderr is a terminal and not ``quiet``;
    yields the function to call once per unit of work (calls must not overlap)."""
    if quiet or not sys.stderr.isatty():
        yield lambda: None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield lambda: bar.update(1)


def emit(as_json: bool, document: object, text: str) -> None:
    click.echo(json.dumps(document, indent=2, default=str) if as_json else text)


class Seconds(click.ParamType[float]):
    """A finite number of seconds in ``[minimum, maximum]``: refuses ``nan``, ``inf`` and
    values no timer can hold (``1e308``), with a one-line usage error."""

    name = "seconds"

    def __init__(self, minimum: float = 0.0, maximum: float = 7 * 24 * 3600.0) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(str(value).strip()) if str(value).isascii() else math.nan
            except ValueError:
                number = math.nan
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            self.fail(
                f"{value!r} is not a number of seconds from {self.minimum:g} to {self.maximum:g}",
                param,
                ctx,
            )
        return number


def seconds_option(name: str, default: float, text: str) -> Callable[[_F], _F]:
    return click.option(name, default=default, show_default=True, type=Seconds(), help=text)


def parse_retention(value: str | None) -> float | None:
    try:
        return None if value is None else parse_duration(value)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--retention") from None
