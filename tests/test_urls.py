"""Database URLs mean what SQLAlchemy's URL grammar says (without importing it at run time)."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from twopc.participants import DatabaseURL, InvalidURL

SCHEMES = ["postgresql", "postgres", "postgresql+psycopg", "mysql", "mariadb", "mysql+pymysql"]
WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=12)
HOSTS = st.one_of(
    NAMES,
    st.sampled_from(["127.0.0.1", "10.1.2.3", "[::1]", "[fe80::1%25eth0]", "[2001:db8::7]"]),
)
MYSQL_QUERY = st.dictionaries(
    st.sampled_from(["ssl_ca", "ssl_cert", "ssl_key"]), st.text(min_size=1, max_size=8)
) | st.dictionaries(
    st.sampled_from(["ssl_verify_cert", "ssl_verify_identity", "ssl_disabled"]),
    st.sampled_from(["true", "false", "1", "0", "yes", "no"]),
)
PG_QUERY = st.dictionaries(NAMES, st.text(min_size=1, max_size=8), max_size=3)


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(SCHEMES))
    text = f"{scheme}://"
    user = draw(st.none() | WORDS)
    if user is not None:
        text += quote(user, safe="")
        password = draw(st.none() | WORDS)
        if password is not None:
            text += ":" + quote(password, safe="")
        text += "@"
    text += draw(HOSTS)
    port = draw(st.none() | st.integers(1, 65535))
    if port is not None:
        text += f":{port}"
    text += "/" + quote(draw(WORDS.filter(bool)), safe="")
    query = draw(MYSQL_QUERY if scheme.startswith(("mysql", "mariadb")) else PG_QUERY)
    if query:
        text += "?" + "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in query.items())
    return text


@given(urls())
def test_urls_parse_and_render_as_sqlalchemy_does(text: str) -> None:
    ours, theirs = DatabaseURL.parse(text), make_url(text)
    assert ours.scheme == theirs.drivername
    assert (ours.username, ours.password) == (theirs.username, theirs.password)
    assert (ours.host, ours.port, ours.database) == (theirs.host, theirs.port, theirs.database)
    assert dict(ours.query) == dict(theirs.query)
    assert str(ours) == theirs.render_as_string(hide_password=True)
    assert ours.with_password() == theirs.render_as_string(hide_password=False)
    assert DatabaseURL.parse(ours.with_password()) == ours  # what a child process gets back
    if ours.password is not None:
        assert ":***@" in str(ours) and ":***@" in repr(ours)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("postgresql://u:pw@h:abc/db", "port 'abc' is not a number from 1 to 65535"),
        ("postgresql://u:pw@h:70000/db", "port '70000' is not a number from 1 to 65535"),
        ("postgresql://u:pw@h/db?a=1&a=2", "query option 'a' is given more than once"),
    ],
)
def test_bad_ports_and_repeated_options_are_refused(text: str, problem: str) -> None:
    with pytest.raises(InvalidURL) as raised:
        DatabaseURL.parse(text)
    assert str(raised.value) == problem


def test_sqlalchemy_url_for_the_schema_code() -> None:
    url = DatabaseURL.parse("mariadb://u:p%40ss@h:3307/d?ssl_disabled=true").sqlalchemy_url()
    assert url.drivername == "mysql+pymysql" and url.password == "p@ss"
    assert (url.host, url.port, url.database, dict(url.query)) == ("h", 3307, "d", {})
