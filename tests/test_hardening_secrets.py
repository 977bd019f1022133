"""Passwords are never printed, and hiding them never alters other text.

Redaction is structural: messages are built from a URL's parts with the password left out,
and a printed URL masks the password by position. Nothing searches text for the password,
so a password such as ``p`` cannot turn "twopc" into "two***c" (which would also reveal it).
Each check looks for the whole password and for every 3-character piece of it.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from conftest import Databases

from twopc.participants import DatabaseURL, InvalidURL

PASSWORDS = ["p@ss:w/rd", "p", "twopc", "%40", "@", "@@x@@", "x?y=1&z#w", "a b", "pä:ß/wö"]
# A password shaped like the rest of a URL ("s3cr3t@ho.st:99/db") pasted unencoded into a URL
# that also lacks its "@host" is a well-formed URL with another password and host: no
# parser can tell. It is only tested encoded.
URL_SHAPED = "s3cr3t@ho.st:99/db"
SCHEMES = ["postgresql", "mysql"]


def pieces(password: str) -> set[str]:
    """The password and every 3-character piece of it: none may appear in output."""
    return {password, *(password[i : i + 3] for i in range(len(password) - 2))} - {""}


def assert_hidden(text: str, password: str) -> None:
    shown = [piece for piece in pieces(password) if len(piece) >= 3 and piece in text]
    assert not shown, (shown, text)


def written_as_is(scheme: str, password: str, rest: str = "@127.0.0.1:1/bank") -> str:
    """A URL with the password pasted in unencoded, as a hurried user writes it."""
    return f"{scheme}://root:{password}{rest}"


def encoded(scheme: str, password: str, rest: str = "@127.0.0.1:1/bank") -> str:
    return f"{scheme}://root:{quote(password, safe='')}{rest}"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("password", [*PASSWORDS, URL_SHAPED])
def test_an_encoded_password_is_parsed_whole_and_printed_nowhere(
    scheme: str, password: str
) -> None:
    url = DatabaseURL.parse(encoded(scheme, password))
    assert url.password == password
    assert (url.username, url.host, url.port, url.database) == ("root", "127.0.0.1", 1, "bank")
    assert str(url) == f"{scheme}://root:***@127.0.0.1:1/bank"
    assert repr(url) == f"DatabaseURL('{scheme}://root:***@127.0.0.1:1/bank')"
    assert url.location() == "127.0.0.1:1/bank"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "rest",
    [
        "@127.0.0.1:1/bank",  # fine unless the password holds an '@' or ...
        "@127.0.0.1:1/bank?ssl_disabled=true",
        "/bank",  # ... '@host' forgotten: the password reads as a port
        "",
        ":5432/bank",
        "@127.0.0.1:1",
        "@h@x:1/b",
    ],
)
def test_a_password_written_unencoded_never_reaches_a_message(
    scheme: str, password: str, rest: str
) -> None:
    """Parsed or refused, no message and no rendering holds any piece of the password."""
    text = written_as_is(scheme, password, rest)
    try:
        url = DatabaseURL.parse(text)
    except InvalidURL as err:
        assert "\n" not in str(err)
        assert_hidden(str(err), password)
        return
    for shown in (str(url), repr(url), url.location()):
        assert_hidden(shown, password)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "mysql://root:p@ss:w/rd@127.0.0.1:1/bank",
            "a raw '@' may only end the user:password part: percent-encode any other '@' "
            "(in a password, say), and any ':' or '/' in a user name",
        ),
        (
            "postgresql://ro/ot:secret@127.0.0.1/bank",
            "a raw '@' may only end the user:password part: percent-encode any other '@' "
            "(in a password, say), and any ':' or '/' in a user name",
        ),
        (
            "mysql://root:secret/bank",
            "the port (after the host's ':') is not a number from 1 to 65535",
        ),
        (
            "postgresql://root:4321",
            "the URL names no database (expected …/database after the host)",
        ),
    ],
)
def test_what_a_misplaced_password_is_told(text: str, problem: str) -> None:
    with pytest.raises(InvalidURL) as raised:
        DatabaseURL.parse(text)
    assert str(raised.value) == problem


def test_a_password_in_a_postgresql_query_is_masked_too() -> None:
    """libpq takes ``password`` as a connection parameter, so a URL may carry it there."""
    url = DatabaseURL.parse("postgresql://root@h/bank?password=s%40cret&sslmode=require")
    assert str(url) == "postgresql://root@h/bank?password=***&sslmode=require"
    assert url.psycopg_kwargs()["password"] == "s@cret"
    assert url.with_password() == "postgresql://root@h/bank?password=s%40cret&sslmode=require"


# -- through the command line, against the real servers -----------------------------------


def one_line_error(db: Databases, code: int, **urls: str) -> str:
    result = db.twopc("balances", **urls)
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    return line


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_refused_mysql_password_is_not_printed(db: Databases, password: str) -> None:
    info = db.state.mysql
    url = encoded("mysql", password, f"@{info.host}:{info.port}/bank")
    line = one_line_error(db, 1, TWOPC_MYSQL_URL=url)
    assert line.startswith(f"Error: mysql {info.host}:{info.port}/bank: connect failed: (1045) ")
    assert line.endswith("(using password: YES)"), line
    assert_hidden(line, password)


def test_hiding_the_password_alters_no_other_text(db: Databases) -> None:
    """The password ``p``: searching for it would mangle "twopc" and "password"."""
    info = db.state.mysql
    url = f"mysql://twopc:p@{info.host}:{info.port}/twopc"
    line = one_line_error(db, 1, TWOPC_MYSQL_URL=url)
    assert line == (
        f"Error: mysql {info.host}:{info.port}/twopc: connect failed: (1045) Access denied "
        f"for user 'twopc'@'{info.host}' (using password: YES)"
    )


@pytest.mark.parametrize("password", PASSWORDS)
def test_postgresql_errors_do_not_print_the_password(db: Databases, password: str) -> None:
    """The dev PostgreSQL trusts local users, so the server's own refusal is tested with a
    role that does not exist; an unreachable port gives libpq's refusal."""
    info = db.state.pg
    unknown = encoded("postgresql", password, f"@{info.host}:{info.port}/bank")
    line = one_line_error(db, 1, TWOPC_PG_URL=unknown)
    assert line == (
        f"Error: pg {info.host}:{info.port}/bank: connect failed: connection failed: "
        f'connection to server at "{info.host}", port {info.port} failed: '
        'FATAL: role "root" does not exist'
    )
    assert_hidden(line, password)
    closed = encoded("postgresql", password, f"@{info.host}:1/bank")
    line = one_line_error(db, 1, TWOPC_PG_URL=closed)
    assert line.startswith(f"Error: pg {info.host}:1/bank: connect failed: connection failed:")
    assert_hidden(line, password)


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_unreachable_or_malformed_urls_do_not_print_the_password(
    db: Databases, password: str, side: str
) -> None:
    scheme = "postgresql" if side == "pg" else "mysql"
    variable = f"TWOPC_{side.upper()}_URL"
    unreachable = one_line_error(db, 1, **{variable: encoded(scheme, password)})
    assert unreachable.startswith(f"Error: {side} 127.0.0.1:1/bank: connect failed: ")
    assert_hidden(unreachable, password)
    for rest in ("@127.0.0.1:1/bank", "/bank", "@h@x/bank"):
        result = db.twopc("balances", **{variable: written_as_is(scheme, password, rest)})
        assert result.returncode in (1, 2), result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: "), line
        assert_hidden(line, password)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("?ssl_ca=/nonexistent/ca.pem", "query option ssl_ca='/nonexistent/ca.pem' names no file"),
        ("?ssl_ca=/tmp/ca%00.pem", "query option ssl_ca holds a NUL byte"),
        ("?ssl_cert=/tmp&ssl_key=/tmp", "query option ssl_cert='/tmp' names no file"),
    ],
)
def test_tls_file_options_naming_no_file_are_one_line_errors(
    db: Databases, query: str, problem: str
) -> None:
    """PyMySQL fails on these with a bare OSError or ValueError: a traceback, before."""
    info = db.state.mysql
    location = f"{info.host}:{info.port}/twopc"
    line = one_line_error(db, 2, TWOPC_MYSQL_URL=f"mysql://twopc@{location}{query}")
    assert line == f"Error: mysql URL: {problem}"


def test_a_tls_file_that_is_no_certificate_is_a_one_line_error(db: Databases) -> None:
    info = db.state.mysql
    location = f"{info.host}:{info.port}/twopc"
    line = one_line_error(db, 1, TWOPC_MYSQL_URL=f"mysql://twopc@{location}?ssl_ca={__file__}")
    assert line.startswith(
        f"Error: mysql {location}: connect failed: (2026) unusable TLS options: [X509: "
    ), line
