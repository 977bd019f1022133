"""How the MySQL/MariaDB participant connects (against the real server)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pymysql
import pytest
from conftest import ACCOUNTS, Databases

from participants import DatabaseURL, MySQLParticipant


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


def test_tls_options_in_the_url_are_enforced_not_dropped(db: Databases) -> None:
    """A URL that asks for a verified TLS connection gets one or an error: the dev server
    has no TLS, so asking for it fails, and turning TLS off still connects."""
    before = db.balances()
    authorities = ssl.get_default_verify_paths().openssl_cafile  # the system's CA bundle
    assert Path(authorities).is_file(), authorities
    asks = f"{db.mysql_url}?ssl_ca={authorities}&ssl_verify_identity=true"
    refused = db.twopc("balances", TWOPC_MYSQL_URL=asks)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        "connect failed: (2026) SSL is required but the server doesn't support it"
    )
    schema = db.twopc(
        "init", "--accounts", str(ACCOUNTS), TWOPC_MYSQL_URL=asks
    )  # init connects the same way
    assert schema.returncode == 1
    assert "SSL is required but the server doesn't support it" in schema.stderr
    plain_url = f"{db.mysql_url}?ssl_disabled=true"
    plain = db.twopc("balances", "--json", TWOPC_MYSQL_URL=plain_url)
    assert plain.returncode == 0, plain.stderr
    seeded = db.twopc("init", "--accounts", str(ACCOUNTS), TWOPC_MYSQL_URL=plain_url)
    assert seeded.returncode == 0, seeded.stderr
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
