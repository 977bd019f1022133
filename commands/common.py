"""Plumbing every command shares: the context object, output and error handling, common options."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from twopc.bank import InvalidInput, TransferRejected
from twopc.coordinator import CoordinatorError, InDoubt, OutcomeUnknown, TransactionAborted
from twopc.coordinator.recovery import RecoveryError
from twopc.devserver import DevServerError, DevServers, DevState
from twopc.participants import (
    Backend,
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
#: The participants ``--pg-url`` and ``--mysql-url`` configure (the bank's two sides).
URL_OPTIONS = {"pg": "--pg-url / TWOPC_PG_URL", "mysql": "--mysql-url / TWOPC_MYSQL_URL"}
NAMED_OPTION = "--participant / TWOPC_PARTICIPANTS"
#: A participant's name is the bqual of its branches (at most 64 bytes on both servers); it
#: also appears in account references (``pg:a1``) and before ``=`` in NAME=URL, so it is
#: kept to a plain, readable alphabet.
_PARTICIPANT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


@dataclass
class Context:
    """What every command gets: the home directory and the configured participants — ``pg``
    and ``mysql`` from their URL options, and any others named with ``--participant``.

    With no URL configured at all, the databases of the running dev servers are used.
    """

    home: Path
    urls: dict[str, str | None]
    named: dict[str, str] = field(default_factory=dict)
    made: list[Participant] = field(default_factory=list, repr=False)

    @property
    def dev(self) -> DevServers:
        return DevServers(self.home / "dev")

    def url(self, name: str) -> DatabaseURL:
        """The URL of participant ``name``: as configured, else the running dev servers'.

        An empty URL is refused rather than read as "none given": falling back to the dev
        servers would run the command against a database nobody named.
        """
        text = self.named.get(name) or self._side_url(name) or self._dev_participant(name)
        try:
            url = DatabaseURL.parse(text, expect=_expected_backend(name, self.named))
            url.check_files()  # a TLS file option naming no file is bad input, not a failure
        except InvalidURL as err:
            raise BadInput(f"{name} URL: {err}") from None
        return url

    def participants(
        self,
        names: Iterable[str],
        lock_wait: float = 30.0,
        *,
        on_lock_wait: LockWaitNotice | None = None,
    ) -> list[Participant]:
        """One participant per name, each told ``on_lock_wait`` when a statement of its
        waits on a prepared branch."""
        made = [
            participant_for(name, self.url(name), lock_wait=lock_wait, on_lock_wait=on_lock_wait)
            for name in names
        ]
        self.made += made
        return made

    def close(self) -> None:
        """Close the participants made for the command (their idle connections and lock-wait
        watchdogs): the command is over, whether it ran in its own process or not."""
        for participant in self.made:
            with contextlib.suppress(Exception):
                participant.close()
        self.made.clear()

    def participant_names(self) -> list[str]:
        """Every configured participant: ``pg`` and ``mysql`` where given (or the dev
        servers run), then the named ones (with no URL configured at all: the dev servers'
        other databases). :class:`BadInput` when there is none."""
        sides = [s for s in URL_OPTIONS if self.urls[s] is not None or self._dev_url(s)]
        names = [*sides, *(n for n in self.named if n not in sides)]
        if self._nothing_configured():
            names += [n for n in self._dev_participants() if n not in names]
        if not names:
            raise BadInput(
                f"no database configured: set {URL_OPTIONS['pg']}, {URL_OPTIONS['mysql']} or "
                f"{NAMED_OPTION} (NAME=URL), or run `twopc dev up`"
            )
        return names

    def all_participants(self, lock_wait: float = 30.0) -> list[Participant]:
        """A participant for every configured name (:meth:`participant_names`)."""
        return self.participants(self.participant_names(), lock_wait)

    def _side_url(self, side: str) -> str | None:
        """``pg``'s or ``mysql``'s URL from its option/env var, else the dev servers'."""
        if side not in URL_OPTIONS:
            return None
        given = self.urls[side]
        if given is not None and not given.strip():
            raise BadInput(
                f"{side} URL is empty ({URL_OPTIONS[side]}): give a URL, or leave it unset "
                "to use the servers of `twopc dev up`"
            )
        text = given or self._dev_url(side)
        if text is None:
            raise BadInput(
                f"no {side} database configured: set {URL_OPTIONS[side]} or run `twopc dev up`"
            )
        return text

    def _dev_participant(self, name: str) -> str:
        """The dev servers' database for ``name``, used only when nothing is configured."""
        found = self._dev_participants().get(name) if self._nothing_configured() else None
        if found is None:
            raise BadInput(
                f"no participant {name!r} configured: give {NAMED_OPTION} {name}=URL, "
                "or run `twopc dev up`"
            )
        return found

    def _nothing_configured(self) -> bool:
        return not self.named and all(url is None for url in self.urls.values())

    def _dev_state(self) -> DevState | None:
        try:
            return self.dev.status()
        except DevServerError:
            return None

    def _dev_url(self, side: str) -> str | None:
        state = self._dev_state()
        if state is None:
            return None
        info = state.pg if side == "pg" else state.mysql
        return info.url if info.running else None

    def _dev_participants(self) -> dict[str, str]:
        state = self._dev_state()
        return {} if state is None else state.participants()


def _expected_backend(name: str, named: dict[str, str]) -> Backend | None:
    """``pg`` and ``mysql`` given by their own options must be of their kind; a named
    participant may be of either."""
    if name in named:
        return None
    return "pg" if name == "pg" else "mysql" if name == "mysql" else None


def participant_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a participant (None when it can)."""
    if not _PARTICIPANT_NAME.fullmatch(name):
        return (
            f"participant name {name!r} must be 1 to 64 characters of A-Z a-z 0-9 _ . - "
            "starting with a letter"
        )
    return None


class ParticipantOption(click.ParamType[tuple[str, str]]):
    """``NAME=URL``: a participant's name (the bqual of its branches) and its database.
    In TWOPC_PARTICIPANTS the pairs are separated by whitespace or commas."""

    name = "name=url"

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return [part for part in re.split(r"[\s,]+", rv) if part]

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        name, equals, url = str(value).partition("=")
        if not equals:  # the text is not echoed: it may be a URL holding a password
            self.fail(f"expected NAME=URL, got no '=' ({NAMED_OPTION})", param, ctx)
        problem = participant_name_problem(name)
        if problem is not None:
            self.fail(f"{problem} ({NAMED_OPTION})", param, ctx)
        if not url.strip():
            self.fail(f"participant {name!r} has an empty URL ({NAMED_OPTION})", param, ctx)
        return name, url


def named_participants(
    given: Sequence[tuple[str, str]], urls: dict[str, str | None]
) -> dict[str, str]:
    """The participants named with ``--participant``, by name; a name given twice, or one
    ``--pg-url``/``--mysql-url`` already configures, is refused. Names differing only in
    case count as the same: MariaDB compares the outcome markers' names without case."""
    taken = [side for side, url in urls.items() if url is not None]
    named: dict[str, str] = {}
    for name, url in given:
        clash = next((n for n in [*taken, *named] if n.lower() == name.lower()), None)
        if clash is not None:
            raise click.UsageError(_configured_twice(name, clash))
        named[name] = url
    return named


def _configured_twice(name: str, clash: str) -> str:
    if clash in URL_OPTIONS:
        where = f"by {URL_OPTIONS[clash]} and by {NAMED_OPTION}"
    else:
        where = f"in {NAMED_OPTION}"
    same = f" (as {clash!r}: names differing only in case are one name)" if clash != name else ""
    return (
        f"participant {name!r} is configured twice {where}{same}: each participant needs a "
        "name of its own"
    )


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
    """Something of ours is left in doubt: a logged decision some branch was not told, or a
    one-phase commit whose answer was lost."""

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
        except OutcomeUnknown as err:  # it may have committed: never "nothing was changed"
            raise InDoubtRemains(
                f"{err}: it may or may not have committed; check with `twopc balances` "
                "before retrying"
            ) from None
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
