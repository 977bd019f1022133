"""How the MySQL/MariaDB participant connects (against the real server)."""

from __future__ import annotations

import ssl

import pymysql
from conftest import Databases

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
