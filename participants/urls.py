"""Database URLs: parsing the SQLAlchemy form, connection arguments, and password-free rendering."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, quote, quote_plus, unquote

if TYPE_CHECKING:  # SQLAlchemy is slow to import; only the schema code needs its URL type
    from sqlalchemy.engine import URL

Backend = Literal["pg", "mysql"]

_BACKENDS: dict[str, Backend] = {
    "postgresql": "pg",
    "postgres": "pg",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_DRIVERS: dict[Backend, set[str]] = {"pg": {"", "psycopg"}, "mysql": {"", "pymysql"}}
_SQLALCHEMY_DRIVER: dict[Backend, str] = {"pg": "postgresql+psycopg", "mysql": "mysql+pymysql"}

# SQLAlchemy's URL grammar (``sqlalchemy.engine.url._parse_url``), so a URL means here what
# it means to SQLAlchemy; tests check the two agree.
_URL = re.compile(
    r"""
        (?P<scheme>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)


class InvalidURL(ValueError):
    """A database URL that cannot be used; the message never repeats the password."""


@dataclass(frozen=True)
class DatabaseURL:
    """A validated database URL. ``str()`` and ``repr()`` hide the password."""

    backend: Backend
    scheme: str  # as written, e.g. "postgresql+psycopg"
    username: str | None
    password: str | None = field(repr=False)
    host: str | None
    port: int | None
    database: str
    query: tuple[tuple[str, str], ...]  # sorted by key (as rendered); each key once

    @classmethod
    def parse(cls, text: str, expect: Backend | None = None) -> DatabaseURL:
        """Parse ``postgresql://…`` / ``mysql://…`` (``+psycopg`` / ``+pymysql`` accepted).

        Errors never repeat the password, nor any text that might be part of it.
        """
        found = _URL.match(text)
        if found is None:
            # The text is not echoed: it may hold a password in a shape we cannot parse.
            raise InvalidURL("not a database URL (expected postgresql://… or mysql://…)")
        _check_at_signs(text, found)
        scheme = found["scheme"]
        backend_name, _, driver = scheme.partition("+")
        backend = _BACKENDS.get(backend_name)
        if backend is None or driver not in _DRIVERS[backend]:
            raise InvalidURL(f"unsupported database URL scheme {scheme!r}")
        if expect is not None and backend != expect:
            raise InvalidURL(f"expected a {expect} URL, got {scheme!r}")
        url = cls(
            backend,
            scheme,
            _unquoted(found["username"]),
            _unquoted(found["password"]),
            found["ipv4host"] or found["ipv6host"],
            _port(found["port"], echo=found["username"] is not None),
            _unquoted(found["database"]) or "",
            _query(found["query"]),
        )
        if not url.database:
            # Not rendered: without a user part, a "host:port" may be a user and password.
            raise InvalidURL("the URL names no database (expected …/database after the host)")
        if backend == "mysql":
            _mysql_options(url.query)  # refuse unknown or malformed query options now
        return url

    def sqlalchemy_url(self) -> URL:
        """The URL (query left out) with the driver SQLAlchemy should use for this backend."""
        from sqlalchemy.engine import URL

        return URL.create(
            _SQLALCHEMY_DRIVER[self.backend],
            self.username,
            self.password,
            self.host,
            self.port,
            self.database,
        )

    def psycopg_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``psycopg.connect`` (the query's libpq parameters included)."""
        kwargs: dict[str, object] = {"dbname": self.database, "user": self.username}
        kwargs.update(host=self.host or "localhost", port=self.port or 5432)
        if self.password is not None:
            kwargs["password"] = self.password
        kwargs.update(self.query)
        return kwargs

    def pymysql_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``pymysql.connect``, TLS options from the query included
        (:class:`InvalidURL` if one names no file: see :meth:`check_files`)."""
        kwargs: dict[str, object] = {"database": self.database, "user": self.username}
        kwargs.update(host=self.host or "localhost", port=self.port or 3306)
        kwargs["password"] = self.password or ""
        self.check_files()
        kwargs.update(_mysql_options(self.query))
        return kwargs

    def check_files(self) -> None:
        """:class:`InvalidURL` unless every file a mysql URL's TLS options name exists.

        Not part of :meth:`parse`, which checks only the text: a URL may be parsed where
        its files are not (and SQLAlchemy, whose grammar it follows, never looks).
        """
        for key, value in self.query:
            if self.backend == "mysql" and key in _MYSQL_PATHS:
                _check_file(key, value)

    def with_password(self) -> str:
        """The full URL, password included: only for handing to a child process's
        environment, never for printing."""
        return self._render(hide_password=False)

    def location(self) -> str:
        """``host:port/database`` — for messages and logs; carries no credentials."""
        default_port = 5432 if self.backend == "pg" else 3306
        return f"{self.host or 'localhost'}:{self.port or default_port}/{self.database}"

    def __str__(self) -> str:
        return self._render(hide_password=True)

    def __repr__(self) -> str:
        return f"DatabaseURL({str(self)!r})"

    def _render(self, *, hide_password: bool) -> str:
        # As SQLAlchemy's URL.render_as_string renders it.
        text = self.scheme + "://"
        if self.username is not None:
            text += quote(self.username, safe=" +")
            if self.password is not None:
                text += ":" + ("***" if hide_password else quote(self.password, safe=" +"))
            text += "@"
        if self.host is not None:
            text += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            text += f":{self.port}"
        text += "/" + quote(self.database, safe=" +/")
        if self.query:
            text += "?" + "&".join(
                f"{quote_plus(key)}={self._shown(key, value, hide_password)}"
                for key, value in self.query
            )
        return text

    def _shown(self, key: str, value: str, hide_password: bool) -> str:
        # libpq also takes the password as a connection parameter in the query.
        secret = hide_password and self.backend == "pg" and key == "password"
        return "***" if secret else quote_plus(value)


def _unquoted(part: str | None) -> str | None:
    return None if part is None else unquote(part)


def _check_at_signs(text: str, found: re.Match[str]) -> None:
    """Refuse a URL whose only sensible reading puts part of a password elsewhere.

    The grammar ends the password at its first ``@``, so a raw ``@`` inside a password
    (``u:p@ss@host``) would make the rest of the password the host, the port or the
    database, and errors would print it. Likewise a user name with a raw ``/`` leaves the
    whole ``user:password`` in the host and database. The text is never echoed.
    """
    at_signs = text.count("@")
    if at_signs > 1 or (at_signs == 1 and found["username"] is None):
        raise InvalidURL(
            "a raw '@' may only end the user:password part: percent-encode any other '@' "
            "(in a password, say), and any ':' or '/' in a user name"
        )


def _port(text: str | None, *, echo: bool) -> int | None:
    """The port; ``echo`` only when the URL has a user part: without one, ``user:secret``
    (a URL missing its ``@host``) reads as host and port, and the "port" is a password."""
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        shown = f"port {text!r}" if echo else "the port (after the host's ':')"
        raise InvalidURL(f"{shown} is not a number from 1 to 65535")
    return int(text)


def _query(text: str | None) -> tuple[tuple[str, str], ...]:
    pairs = parse_qsl(text or "")
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise InvalidURL(f"query option {key!r} is given more than once")
    return tuple(sorted(pairs))


# PyMySQL's TLS options, accepted in the query of a mysql:// URL (the names SQLAlchemy's
# PyMySQL dialect uses too). Anything else is refused rather than silently ignored: a
# dropped ssl_ca would mean a connection that was asked to verify the server and does not.
_MYSQL_PATHS = ("ssl_ca", "ssl_cert", "ssl_key")
_MYSQL_FLAGS = ("ssl_verify_cert", "ssl_verify_identity", "ssl_disabled")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _mysql_options(query: tuple[tuple[str, str], ...]) -> dict[str, object]:
    options: dict[str, object] = {}
    for key, value in query:
        if key in _MYSQL_PATHS:
            options[key] = value
        elif key in _MYSQL_FLAGS:
            options[key] = _flag(key, value)
        else:
            supported = ", ".join((*_MYSQL_PATHS, *_MYSQL_FLAGS))
            raise InvalidURL(f"unsupported query option {key!r} for mysql; supported: {supported}")
    if "ssl_ca" in options:
        # A CA is given to verify the server with: do (certificate and host name), as
        # SQLAlchemy's PyMySQL dialect does. PyMySQL alone would use it without verifying.
        options.setdefault("ssl_verify_cert", True)
        options.setdefault("ssl_verify_identity", True)
    return options


def _check_file(key: str, path: str) -> None:
    # PyMySQL would fail on these with a bare OSError or ValueError (a traceback).
    if "\0" in path:
        raise InvalidURL(f"query option {key} holds a NUL byte")
    if not os.path.isfile(path):
        raise InvalidURL(f"query option {key}={path!r} names no file")


def _flag(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidURL(f"query option {key}={value!r} must be true or false")
