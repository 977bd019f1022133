"""Plumbing every command shares: the context object, output and error handling, common options."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from twopc.bank import InvalidInput, TransferRejected
from twopc.coordinator import CoordinatorError, InDoubt, TransactionAborted
from twopc.coordinator.recovery import RecoveryError
from twopc.devserver import DevServerError, DevServers
from twopc.participants import (
    DatabaseURL,
    InvalidURL,
    LockWaitNotice,
    LockWaitTimeout,
    Participant,
    ParticipantError,
    participant_for,
)
from twopc.saga import InvalidSagaId, SagaError, parse_duration

EXIT_IN_DOUBT = 3
MAX_LOCK_WAIT = 24 * 3600.0  # one day; PostgreSQL's lock_timeout tops out near 24.8 days
_F = TypeVar("_F", bound=Callable[..., Any])
_URL_OPTIONS = {"pg": "--pg-url / TWOPC_PG_URL", "mysql": "--mysql-url / TWOPC_MYSQL_URL"}


@dataclass
class Context:
    """What every command gets: the home directory and the configured database URLs."""

    home: Path
    urls: dict[str, str | None]

    @property
    def dev(self) -> DevServers:
        return DevServers(self.home / "dev")

    def url(self, side: str) -> DatabaseURL:
        """The URL for ``side`` from its option/env var, else the running dev servers.

        An empty URL is refused rather than read as "none given": falling back to the dev
        servers would run the command against a database nobody named.
        """
        given = self.urls[side]
        if given is not None and not given.strip():
            raise BadInput(
                f"{side} URL is empty ({_URL_OPTIONS[side]}): give a URL, or leave it unset "
                "to use the servers of `twopc dev up`"
            )
        text = given or self._dev_url(side)
        if text is None:
            raise BadInput(
                f"no {side} database configured: set {_URL_OPTIONS[side]} or run `twopc dev up`"
            )
        try:
            url = DatabaseURL.parse(text, expect="pg" if side == "pg" else "mysql")
            url.check_files()  # a TLS file option naming no file is bad input, not a failure
        except InvalidURL as err:
            raise BadInput(f"{side} URL: {err}") from None
        return url

    def participants(
        self,
        sides: Iterator[str] | tuple[str, ...],
        lock_wait: float = 30.0,
        *,
        on_lock_wait: LockWaitNotice | None = None,
    ) -> list[Participant]:
        """One participant per side, each told ``on_lock_wait`` when a statement of its
        waits on a prepared branch."""
        return [
            participant_for(side, self.url(side), lock_wait=lock_wait, on_lock_wait=on_lock_wait)
            for side in sides
        ]

    def _dev_url(self, side: str) -> str | None:
        try:
            state = self.dev.status()
        except DevServerError:
            return None
        if state is None:
            return None
        info = state.pg if side == "pg" else state.mysql
        return info.url if info.running else None


def given_url(value: str | None, envvar: str) -> str | None:
    """The URL option's value, with an environment variable set to "" kept as "" (click
    reads an empty variable as unset, which would silently pick the dev servers)."""
    if value is None and os.environ.get(envvar) == "":
        return ""
    return value


class Failure(click.ClickException):
    """A command failed: one line on stderr and ``exit_code``. ``outcome`` names the failure
    in the JSON document of commands that print one on failure (``transfer``), and
    ``details`` adds to that document."""

    outcome = "failed"

    def __init__(
        self, message: str, details: dict[str, object] | None = None, *, outcome: str = ""
    ) -> None:
        super().__init__(" ".join(message.split()))  # a server's error can span lines
        self.details = details or {}
        self.outcome = outcome or type(self).outcome


class BadInput(Failure):
    """Malformed input: one line on stderr, exit 2, nothing attempted."""

    exit_code = 2
    outcome = "invalid"


class Refused(Failure):
    """A transfer the business rules refused (insufficient funds, unknown account)."""

    outcome = "refused"


class Aborted(Failure):
    """A transaction that was rolled back (a lock wait timed out, a branch voted no)."""

    outcome = "aborted"


class InDoubtRemains(Failure):
    """Something of ours is left in doubt: the decision is logged, some branch not told."""

    exit_code = EXIT_IN_DOUBT
    outcome = "in doubt"


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
            raise Aborted(f"{err}; rolled back, nothing was changed") from None
        except TransferRejected as err:
            raise Refused(f"transfer refused: {err}; nothing was changed") from None
        except InDoubt as err:
            raise InDoubtRemains(str(err)) from None
        except TransactionAborted as err:
            raise Aborted(str(err)) from None
        except (
            CoordinatorError,
            ParticipantError,
            DevServerError,
            RecoveryError,
            SagaError,
        ) as err:
            raise Failure(str(err)) from None
        except BrokenPipeError:  # stdout closed by its reader (`| head`): click exits quietly
            raise
        except OSError as err:  # a file or directory under HOME we cannot create or read
            raise Failure(str(err)) from None

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
    """Print the command's result: ``document`` as JSON with ``--json``, else ``text``."""
    click.echo(json.dumps(document, indent=2, default=str) if as_json else text)
    context = click.get_current_context(silent=True)
    if context is not None:
        context.meta[_EMITTED] = True


_EMITTED = "twopc.emitted"


def failure_document(error: click.ClickException) -> dict[str, object]:
    """The JSON document of a failed command: what failed, the error and the exit code."""
    if isinstance(error, Failure):
        outcome, details = error.outcome, error.details
    else:  # click's own: a usage error (exit 2) or a plain ClickException
        outcome, details = (BadInput.outcome if error.exit_code == 2 else Failure.outcome), {}
    return {
        "outcome": outcome,
        "error": error.format_message(),
        "exit_code": error.exit_code,
        **details,
    }


def json_failures(command: _F) -> _F:
    """With ``--json``, a failure still prints one JSON document on stdout (what failed,
    the error, the exit code), unless the command already printed its own; the one-line
    error on stderr and the exit code are unchanged. Put it outside
    :func:`operational_errors`, so it sees the translated error."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except click.ClickException as err:
            if kwargs.get("as_json") and not click.get_current_context().meta.get(_EMITTED):
                emit(True, failure_document(err), "")
            raise

    return wrapper  # type: ignore[return-value]


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
        number = value if isinstance(value, float) else _ascii_float(str(value))
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            self.fail(
                f"{value!r} is not a number of seconds from {self.minimum:g} to {self.maximum:g}",
                param,
                ctx,
            )
        return number


def _ascii_float(text: str) -> float:
    """``float(text)`` for plain ASCII numbers only (float() reads any Unicode digit, and
    " 5 ")."""
    if not text.isascii() or text != text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def seconds_option(
    name: str,
    default: float | None,
    text: str,
    *,
    minimum: float = 0.0,
    maximum: float = 7 * 24 * 3600.0,
) -> Callable[[_F], _F]:
    """An option taking :class:`Seconds`; its help says the range it accepts."""
    return click.option(
        name,
        default=default,
        show_default=default is not None,
        type=Seconds(minimum, maximum),
        help=f"{text} ({minimum:g} to {maximum:g} s)",
    )


def lock_wait_option(default: float) -> Callable[[_F], _F]:
    """``--lock-wait``: how long a statement waits for a row lock before giving up."""
    return seconds_option(
        "--lock-wait",
        default,
        "Seconds to wait for a row lock before aborting.",
        minimum=0.001,
        maximum=MAX_LOCK_WAIT,
    )


class HomeDirectory(click.ParamType[Path]):
    """A directory that is, or can be made: refuses a path under a regular file (which no
    command could create) with a one-line usage error instead of a traceback later."""

    name = "directory"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        path = Path(value)
        blocker = _first_existing(path)
        if not blocker.is_dir():
            what = "is not a directory" if blocker == path else f"is under {blocker}, a file"
            self.fail(f"{str(path)!r} {what}", param, ctx)
        return path


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (the root always does)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):  # False, not an error, for a path under a file
            return candidate
    return path  # not even "." or "/" exists: refused as not a directory


def parse_retention(value: str | None) -> float | None:
    try:
        return None if value is None else parse_duration(value)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--retention") from None
