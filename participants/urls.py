"""Database URLs: parsing the SQLAlchemy form, connection arguments, and password-free rendering."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

Backend = Literal["pg", "mysql"]

_BACKENDS: dict[str, Backend] = {
    "postgresql": "pg",
    "postgres": "pg",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_DRIVERS: dict[Backend, set[str]] = {"pg": {"", "psycopg"}, "mysql": {"", "pymysql"}}
_SQLALCHEMY_DRIVER: dict[Backend, str] = {"pg": "postgresql+psycopg", "mysql": "mysql+pymysql"}


class InvalidURL(ValueError):
    """A database URL that cannot be used; the message never repeats the password."""


@dataclass(frozen=True)
class DatabaseURL:
    """A validated database URL. ``str()`` and ``repr()`` hide the password."""

    backend: Backend
    url: URL

    @classmethod
    def parse(cls, text: str, expect: Backend | None = None) -> DatabaseURL:
        """Parse ``postgresql://…`` / ``mysql://…`` (``+psycopg`` / ``+pymysql`` accepted)."""
        try:
            url = make_url(text)
        except ArgumentError:
            # The text is not echoed: it may hold a password in a shape we cannot parse.
            raise InvalidURL("not a database URL (expected postgresql://… or mysql://…)") from None
        backend_name, _, driver = url.drivername.partition("+")
        backend = _BACKENDS.get(backend_name)
        if backend is None or driver not in _DRIVERS[backend]:
            raise InvalidURL(f"unsupported database URL scheme {url.drivername!r}") from None
        if expect is not None and backend != expect:
            raise InvalidURL(f"expected a {expect} URL, got {url.drivername!r}")
        if not url.database:
            raise InvalidURL(f"URL {url.render_as_string(hide_password=True)} names no database")
        if backend == "mysql":
            _mysql_options(url)  # refuse unknown or malformed query options now
        return cls(backend, url)

    @property
    def password(self) -> str | None:
        return None if self.url.password is None else str(self.url.password)

    def sqlalchemy_url(self) -> URL:
        """The URL with the driver SQLAlchemy should use for this backend."""
        return self.url.set(drivername=_SQLALCHEMY_DRIVER[self.backend])

    def psycopg_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``psycopg.connect``."""
        kwargs: dict[str, object] = {"dbname": self.url.database, "user": self.url.username}
        kwargs.update(host=self.url.host or "localhost", port=self.url.port or 5432)
        if self.password is not None:
            kwargs["password"] = self.password
        kwargs.update(self.url.query)
        return kwargs

    def pymysql_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``pymysql.connect``, TLS options from the query included."""
        kwargs: dict[str, object] = {"database": self.url.database, "user": self.url.username}
        kwargs.update(host=self.url.host or "localhost", port=self.url.port or 3306)
        kwargs["password"] = self.password or ""
        kwargs.update(_mysql_options(self.url))
        return kwargs

    def with_password(self) -> str:
        """The full URL, password included: only for handing to a child process's
        environment, never for printing."""
        return self.url.render_as_string(hide_password=False)

    def location(self) -> str:
        """``host:port/database`` — for messages and logs; carries no credentials."""
        default_port = 5432 if self.backend == "pg" else 3306
        return f"{self.url.host or 'localhost'}:{self.url.port or default_port}/{self.url.database}"

    def scrub(self, message: str) -> str:
        """Remove this URL's password from a message (a driver may echo connection strings)."""
        return message.replace(self.password, "***") if self.password else message

    def __str__(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"DatabaseURL({str(self)!r})"


# PyMySQL's TLS options, accepted in the query of a mysql:// URL (the names SQLAlchemy's
# PyMySQL dialect uses too). Anything else is refused rather than silently ignored: a
# dropped ssl_ca would mean a connection that was asked to verify the server and does not.
_MYSQL_PATHS = ("ssl_ca", "ssl_cert", "ssl_key")
_MYSQL_FLAGS = ("ssl_verify_cert", "ssl_verify_identity", "ssl_disabled")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _mysql_options(url: URL) -> dict[str, object]:
    options: dict[str, object] = {}
    for key, value in url.query.items():
        if not isinstance(value, str):
            raise InvalidURL(f"query option {key!r} is given more than once")
        if key in _MYSQL_PATHS:
            options[key] = value
        elif key in _MYSQL_FLAGS:
            options[key] = _flag(key, value)
        else:
            supported = ", ".join((*_MYSQL_PATHS, *_MYSQL_FLAGS))
            raise InvalidURL(f"unsupported query option {key!r} for mysql; supported: {supported}")
    return options


def _flag(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidURL(f"query option {key}={value!r} must be true or false")
