"""Configuring any number of named participants: ``--participant NAME=URL`` (repeatable) and
``TWOPC_PARTICIPANTS``, beside ``--pg-url``/``--mysql-url``. A name becomes the bqual of its
branches, so a bad or repeated one is refused with one line and exit 2, before anything is
touched. These run without servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from twopc.cli import main
from twopc.commands.common import BadInput, Context, ParticipantOption

PG = "postgresql://twopc@127.0.0.1:1/flights"
MYSQL = "mysql://twopc@127.0.0.1:1/bookings"


def unset(**env: str) -> dict[str, str | None]:
    """An environment with no TWOPC_ variable but ``env``."""
    return {k: None for k in os.environ if k.startswith("TWOPC_")} | env


def invoke(home: Path, *args: str, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--home", str(home), *args], env=unset(**env))
    return result.exit_code, result.output


BAD = [
    ("1x=" + PG, "participant name '1x' must be 1 to 64 characters of A-Z a-z 0-9 _ . -"),
    ("a:b=" + PG, "participant name 'a:b' must be"),
    ("=" + PG, "participant name '' must be"),
    ("x" * 65 + "=" + PG, "participant name 'xxxx"),
    ("flights=", "participant 'flights' has an empty URL"),
    ("postgresql://u:secret@h/db", "expected NAME=URL, got no '='"),
]


@pytest.mark.parametrize(("given", "message"), BAD)
def test_a_bad_participant_is_one_line_exit_2(tmp_path: Path, given: str, message: str) -> None:
    for args, env in [(("--participant", given), {}), ((), {"TWOPC_PARTICIPANTS": given})]:
        code, output = invoke(tmp_path, *args, "in-doubt", **env)
        assert code == 2, output
        (line,) = output.splitlines()
        assert line.startswith("Error: Invalid value for '--participant': "), line
        assert message in line and line.endswith("(see `twopc --help`)"), line
        assert "secret" not in line  # a URL is never echoed: it may hold a password


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--participant", f"flights={PG}", "--participant", f"flights={MYSQL}"],
            {},
            "participant 'flights' is configured twice in --participant / TWOPC_PARTICIPANTS:",
        ),
        (
            [],
            {"TWOPC_PARTICIPANTS": f"flights={PG} Flights={MYSQL}"},
            "participant 'Flights' is configured twice in --participant / TWOPC_PARTICIPANTS "
            "(as 'flights': names differing only in case are one name):",
        ),
        (
            ["--pg-url", PG, "--participant", f"pg={PG}"],
            {},
            "participant 'pg' is configured twice by --pg-url / TWOPC_PG_URL and by "
            "--participant / TWOPC_PARTICIPANTS:",
        ),
        (
            ["--participant", f"MySQL={MYSQL}"],
            {"TWOPC_MYSQL_URL": MYSQL},
            "participant 'MySQL' is configured twice by --mysql-url / TWOPC_MYSQL_URL",
        ),
    ],
)
def test_a_name_configured_twice_is_refused(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    code, output = invoke(tmp_path, *args, "recover", **env)
    assert code == 2, output
    (line,) = output.splitlines()
    assert line.startswith(f"Error: {message}"), line


def test_the_environment_takes_pairs_separated_by_spaces_or_commas() -> None:
    option = ParticipantOption()
    text = f" flights={PG},bookings={MYSQL}\n\tpayments={PG}?sslmode=require , "
    assert list(option.split_envvar_value(text)) == [
        f"flights={PG}",
        f"bookings={MYSQL}",
        f"payments={PG}?sslmode=require",
    ]
    # Only the first '=' separates: a URL's query keeps its own.
    assert option.convert(f"payments={PG}?sslmode=require", None, None) == (
        "payments",
        f"{PG}?sslmode=require",
    )


def test_every_configured_participant_is_listed_in_order(tmp_path: Path) -> None:
    named = {"flights": PG, "bookings": MYSQL}
    context = Context(tmp_path, {"pg": PG.replace("flights", "twopc"), "mysql": None}, named)
    # mysql has no URL and no dev server runs under tmp_path: it is not configured.
    assert context.participant_names() == ["pg", "flights", "bookings"]
    assert context.url("bookings").backend == "mysql" and context.url("bookings").database == (
        "bookings"
    )
    with pytest.raises(BadInput, match="no participant 'payments' configured: give"):
        context.url("payments")
    with pytest.raises(BadInput, match="no mysql database configured"):
        context.url("mysql")


def test_a_named_participant_may_be_of_either_kind_but_pg_and_mysql_keep_theirs(
    tmp_path: Path,
) -> None:
    context = Context(tmp_path, {"pg": MYSQL, "mysql": None}, {"mysql": PG})
    assert context.url("mysql").backend == "pg"  # named: whatever its URL says
    with pytest.raises(BadInput, match="pg URL: expected a pg URL"):
        context.url("pg")


def test_nothing_configured_says_how_to_configure(tmp_path: Path) -> None:
    code, output = invoke(tmp_path, "in-doubt")
    assert code == 2
    assert output == (
        "Error: no database configured: set --pg-url / TWOPC_PG_URL, --mysql-url / "
        "TWOPC_MYSQL_URL or --participant / TWOPC_PARTICIPANTS (NAME=URL), or run "
        "`twopc dev up`\n"
    )
