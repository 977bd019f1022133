"""How the MySQL/MariaDB participant connects (against the real server)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pymysql
import pytest
from conftest import ACCOUNTS, Databases

from twopc.participants import DatabaseURL, MySQLParticipant, ParticipantUnavailable


def test_preferred_tls_skips_loading_the_ca_store(db: Databases) -> None:
    """With no TLS options PyMySQL tries TLS without verifying the server; the participant
    gives it that same unverifying context without loading every system CA each time."""
    assert hasattr(pymysql.connections.Connection, "_create_ssl_ctx")  # the hook we use
    conn = MySQLParticipant("mysql", DatabaseURL.parse(db.mysql_url)).connect()
    try:
        assert conn.ctx.verify_mode == ssl.CERT_NONE and conn.ctx.check_hostname is False
        assert conn.ctx.cert_store_stats()["x509_ca"] == 0  # PyMySQL's own loads the store
        cursor = conn.cursor()
        cursor.execute("SELECT @@autocommit, @@innodb_lock_wait_timeout")
        assert cursor.fetchone() == (1, 30)
    finally:
        conn.close()


def cipher(db: Databases, query: str) -> str:
    """The TLS cipher of a participant connection made from the dev URL plus ``query``."""
    url = DatabaseURL.parse(f"{db.mysql_url}{query}")
    conn = MySQLParticipant("mysql", url).connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        (_, name) = cursor.fetchone()
        return str(name)
    finally:
        conn.close()


def test_tls_is_used_verified_or_refused_as_the_url_says(db: Databases) -> None:
    """The dev MariaDB speaks TLS like a stock MySQL 8, with a certificate from its own CA."""
    authority = db.state.mysql.tls_ca
    assert authority is not None and authority.is_file()
    assert cipher(db, "") != ""  # preferred: TLS, unverified (PyMySQL's default)
    assert cipher(db, f"?ssl_ca={authority}") != ""  # verified: certificate and host name
    assert cipher(db, "?ssl_disabled=true") == ""
    # Another CA (the system's) cannot verify this server: refused, never used unverified.
    system = ssl.get_default_verify_paths().openssl_cafile
    assert Path(system).is_file(), system
    with pytest.raises(ParticipantUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        cipher(db, f"?ssl_ca={system}")
    # ... unless verification is turned off explicitly.
    assert cipher(db, f"?ssl_ca={system}&ssl_verify_cert=false&ssl_verify_identity=false") != ""


def test_the_cli_and_init_take_the_urls_tls_options(db: Databases) -> None:
    before = db.balances()
    system = ssl.get_default_verify_paths().openssl_cafile
    wrong = f"{db.mysql_url}?ssl_ca={system}"
    for command in (("balances",), ("init", "--accounts", str(ACCOUNTS))):
        refused = db.twopc(*command, TWOPC_MYSQL_URL=wrong)
        assert refused.returncode == 1, refused.stderr
        assert "certificate verify failed" in refused.stderr
    verified = f"{db.mysql_url}?ssl_ca={db.state.mysql.tls_ca}"
    for command in (("balances", "--json"), ("init", "--accounts", str(ACCOUNTS))):
        result = db.twopc(*command, TWOPC_MYSQL_URL=verified)
        assert result.returncode == 0, result.stderr
    assert db.balances() == before


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("sslmode=require", "unsupported query option 'sslmode' for mysql; supported: ssl_ca, "),
        ("ssl_disabled=maybe", "query option ssl_disabled='maybe' must be true or false"),
        ("ssl_ca=a&ssl_ca=b", "query option 'ssl_ca' is given more than once"),
    ],
)
def test_unknown_or_malformed_url_options_are_refused(
    db: Databases, query: str, problem: str
) -> None:
    result = db.twopc("balances", TWOPC_MYSQL_URL=f"{db.mysql_url}?{query}")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: mysql URL: {problem}")
