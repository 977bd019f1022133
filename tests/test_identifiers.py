"""Identifiers and inputs that validate themselves: xids, gtrids, URLs, accounts, amounts."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from twopc.bank import AccountRef, InvalidInput, parse_amount
from twopc.coordinator import InvalidCoordinatorId, check_coordinator_id, coordinator_of, mint_gtrid
from twopc.participants import FORMAT_ID, DatabaseURL, InvalidURL, InvalidXid, Xid


def test_xid_pg_gid_matches_psycopg_encoding() -> None:
    xid = Xid(FORMAT_ID, "t-0123.abcdef", "pg")
    theirs = psycopg.Xid.from_parts(FORMAT_ID, "t-0123.abcdef", "pg")
    assert xid.pg_gid() == str(theirs)
    assert Xid.from_pg_gid(xid.pg_gid()) == xid


def test_xid_mysql_literal_is_hex_only() -> None:
    xid = Xid(FORMAT_ID, "ab.c", "mysql")
    assert xid.mysql_literal() == f"X'61622e63',X'6d7973716c',{FORMAT_ID}"
    assert Xid.from_mysql_recover(FORMAT_ID, 4, 5, b"ab.cmysql") == xid


@pytest.mark.parametrize(
    ("gtrid", "bqual"),
    [("", "pg"), ("a'b", "pg"), ("a b", "pg"), ("x" * 65, "pg"), ("ok", ""), ("ok", "p;g")],
)
def test_xid_rejects_what_we_never_generate(gtrid: str, bqual: str) -> None:
    with pytest.raises(InvalidXid):
        Xid(FORMAT_ID, gtrid, bqual)


def test_xid_rejects_bad_format_id() -> None:
    with pytest.raises(InvalidXid):
        Xid(-1, "a", "b")
    with pytest.raises(InvalidXid):
        Xid(2**31, "a", "b")


@pytest.mark.parametrize("gid", ["plain-gid", "1_!!_cGc=", "x_YQ==_cGc=", "1_YQ==", "1_4pyT_cGc="])
def test_foreign_pg_gids_are_not_xids(gid: str) -> None:
    assert Xid.from_pg_gid(gid) is None


def test_foreign_mysql_rows_are_not_xids() -> None:
    assert Xid.from_mysql_recover(1, 2, 1, b"\xff\xfeb") is None
    assert Xid.from_mysql_recover(1, 5, 1, b"ab") is None
    assert Xid(1, "ab", "c").is_ours is False


def test_gtrid_embeds_coordinator_id() -> None:
    gtrid = mint_gtrid("billing-1")
    assert coordinator_of(gtrid) == "billing-1"
    assert len(gtrid.encode()) <= 64
    assert coordinator_of("someone-else's") is None
    assert mint_gtrid("c") != mint_gtrid("c")


@pytest.mark.parametrize("bad", ["", "a b", "a.b", "x" * 41, "../etc", "é", "_operator", "-x"])
def test_coordinator_id_validation(bad: str) -> None:
    with pytest.raises(InvalidCoordinatorId):
        check_coordinator_id(bad)


def test_url_forms_and_password_hiding() -> None:
    url = DatabaseURL.parse("postgresql+psycopg://u:pw@h:5433/db")
    assert url.backend == "pg" and url.location() == "h:5433/db"
    assert "pw" not in str(url) and "pw" not in repr(url)
    assert str(url) == "postgresql+psycopg://u:***@h:5433/db"  # masked by structure
    assert DatabaseURL.parse("mariadb://u@h/db").backend == "mysql"
    assert DatabaseURL.parse("mysql+pymysql://u@h/db").pymysql_kwargs()["port"] == 3306


@pytest.mark.parametrize(
    "text",
    ["oracle://u:pw@h/db", "mysql+mysqldb://u:pw@h/db", "postgresql://u:pw@h", "nonsense pw"],
)
def test_bad_urls_are_refused_without_echoing_the_password(text: str) -> None:
    with pytest.raises(InvalidURL) as raised:
        DatabaseURL.parse(text)
    assert "pw" not in str(raised.value)


def test_url_of_the_wrong_backend() -> None:
    with pytest.raises(InvalidURL, match="expected a pg URL"):
        DatabaseURL.parse("mysql://u@h/db", expect="pg")


def test_amounts() -> None:
    assert parse_amount("12") == Decimal("12.00")
    assert parse_amount("0.5") == Decimal("0.50")
    assert str(parse_amount("999999999999999999.99")) == "999999999999999999.99"
    for bad in ["0", "-1", "1.234", "1e2", "", " ", "1,5", "inf", "0x10", "1_000"]:
        with pytest.raises(InvalidInput):
            parse_amount(bad)


def test_account_refs() -> None:
    assert AccountRef.parse("mysql:a-7_X") == AccountRef("mysql", "a-7_X")
    for bad in ["a1", "pg:", "pg:a 1", "pg:" + "x" * 65, "PG:a1", "sqlite:a1"]:
        with pytest.raises(InvalidInput):
            AccountRef.parse(bad)
