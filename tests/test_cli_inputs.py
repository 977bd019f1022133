"""Bad input to the ``twopc`` command line, through click's ``CliRunner`` (no servers needed):
every refusal is one line on stderr, ``Error: …``, with its documented exit code, and comes
before any connection is attempted.

The configured URLs point at a closed port: a command that got past its input checks would
fail to connect (exit 1, "connect failed") instead of being refused with exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from twopc.bank import InvalidInput, parse_amount
from twopc.bank.accounts import AccountRef
from twopc.cli import main
from twopc.txlog import Record, TransactionLog

NOWHERE = {
    "TWOPC_PG_URL": "postgresql://twopc@127.0.0.1:1/twopc",
    "TWOPC_MYSQL_URL": "mysql://twopc@127.0.0.1:1/twopc",
    "TWOPC_COORDINATOR_ID": None,
}


def twopc(home: Path, *args: str, **env: str | None) -> Result:
    """Run ``twopc --home HOME ARGS`` in-process with the URLs of :data:`NOWHERE` (group
    options may lead ``ARGS``)."""
    return CliRunner().invoke(main, ["--home", str(home), *args], env=NOWHERE | env)


def refused(result: Result, line: str, code: int = 2) -> None:
    """The command printed exactly ``line`` on stderr, nothing on stdout, and exited ``code``."""
    assert (result.exit_code, result.stdout, result.stderr) == (code, "", f"{line}\n")


# -- usage errors: one line, pointing at the command's help -----------------------------------

USAGE_ERRORS = [
    (
        ["transfer", "pg:a1"],
        "Error: Missing argument 'DESTINATION'. (see `twopc transfer --help`)",
    ),
    (["bogus"], "Error: No such command 'bogus'. (see `twopc --help`)"),
    (["--bogus", "balances"], "Error: No such option '--bogus'. (see `twopc --help`)"),
    (
        ["bench", "transfers", "--workers"],
        "Error: Option '--workers' requires an argument. (see `twopc bench transfers --help`)",
    ),
    (["sagas", "retry"], "Error: Missing argument 'SAGA_ID'. (see `twopc sagas retry --help`)"),
    (["dev", "bogus"], "Error: No such command 'bogus'. (see `twopc dev --help`)"),
    (
        ["transfer", "pg:a1", "mysql:a2", "1", "--mode", "3pc"],
        "Error: Invalid value for '--mode': '3pc' is not one of '2pc', 'saga'. "
        "(see `twopc transfer --help`)",
    ),
    (
        ["log", "show", "--coordinator", "a", "--orchestrator", "b"],
        "Error: --coordinator and --orchestrator cannot be combined (see `twopc log show --help`)",
    ),
    (
        ["resolve", "c1.0123456789abcdef0123"],
        "Error: say --commit or --rollback (see `twopc resolve --help`)",
    ),
    (
        ["transfer", "pg:a1", "mysql:a2", "1", "extra"],
        "Error: Got unexpected extra argument (extra) (see `twopc transfer --help`)",
    ),
]


@pytest.mark.parametrize(("args", "line"), USAGE_ERRORS)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], line: str) -> None:
    refused(twopc(tmp_path, *args), line)


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += leaf_commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


@pytest.mark.parametrize("command", leaf_commands(main), ids=" ".join)
def test_every_command_refuses_an_unknown_option_in_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = " ".join(("twopc", *command))
    result = twopc(tmp_path, *command, "--no-such-option")
    refused(result, f"Error: No such option '--no-such-option'. (see `{path} --help`)")
    assert list(tmp_path.iterdir()) == []  # nothing was created under HOME


def test_a_group_without_its_command_still_shows_its_help(tmp_path: Path) -> None:
    result = twopc(tmp_path, "bench")
    assert result.exit_code == 2
    assert "Commands:" in result.stderr + result.stdout


# -- seconds: finite and bounded ---------------------------------------------------------------

TRANSFER = ["transfer", "pg:a1", "mysql:a2", "1"]
SECONDS_OPTIONS = [
    (TRANSFER, "--lock-wait", "0.001 to 86400"),
    ([*TRANSFER, "--mode", "saga"], "--retry-deadline", "0 to 604800"),
    (["recover"], "--retry-deadline", "0 to 604800"),
    (["sagas", "retry", "s1"], "--retry-deadline", "0 to 604800"),
    (["bench", "transfers"], "--lock-wait", "0.001 to 86400"),
    (["demo", "blocking"], "--hold", "0 to 60"),
    ([*TRANSFER, "--pause-at", "after-prepare"], "--pause-seconds", "0 to 604800"),
]
BAD_SECONDS = ["nan", "inf", "-inf", "1e308", "-1", "", " 5", "\u0665", "3000000", "1e7"]


@pytest.mark.parametrize("value", BAD_SECONDS)
@pytest.mark.parametrize(("args", "option", "bounds"), SECONDS_OPTIONS)
def test_seconds_options_refuse_what_no_timer_holds(
    tmp_path: Path, args: list[str], option: str, bounds: str, value: str
) -> None:
    result = twopc(tmp_path, *args, option, value)
    command = " ".join(["twopc", *args[: 2 if args[0] in ("sagas", "bench", "demo") else 1]])
    refused(
        result,
        f"Error: Invalid value for '{option}': {value!r} is not a number of seconds "
        f"from {bounds} (see `{command} --help`)",
    )


def test_lock_wait_help_gives_its_range(tmp_path: Path) -> None:
    result = twopc(tmp_path, "transfer", "--help")
    assert result.exit_code == 0
    assert "Seconds to wait for a row lock before aborting. (0.001 to 86400 s)" in " ".join(
        result.stdout.split()
    )


# -- HOME ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["balances"], TRANSFER, ["dev", "up"], ["bench", "log"]])
def test_home_under_a_regular_file_is_refused(tmp_path: Path, command: list[str]) -> None:
    file = tmp_path / "file"
    file.write_text("not a directory")
    home = file / "home"
    refused(
        twopc(home, *command),
        f"Error: Invalid value for '--home': '{home}' is under {file}, a file (see `twopc --help`)",
    )
    refused(
        CliRunner().invoke(main, command, env=NOWHERE | {"TWOPC_HOME": str(file)}),
        f"Error: Invalid value for '--home': '{file}' is not a directory (see `twopc --help`)",
    )
    assert sorted(tmp_path.iterdir()) == [file] and file.read_text() == "not a directory"


# -- resolve ------------------------------------------------------------------------------------


def test_resolve_refuses_both_decisions(tmp_path: Path) -> None:
    result = twopc(tmp_path, "resolve", "c1.0123456789abcdef0123", "--commit", "--rollback")
    refused(
        result, "Error: --commit and --rollback cannot be combined (see `twopc resolve --help`)"
    )


@pytest.mark.parametrize(
    "gtrid",
    [
        "garbage",
        "x.y",
        "",
        "c1.0123456789abcdef012",  # 19 hex digits
        "c1.0123456789abcdef01234",  # 21
        "c1.0123456789ABCDEF0123",  # upper case: never minted
        "_operator.0123456789abcdef0123",  # reserved, not a coordinator id
        "c1.0123456789abcdef0123\n",
        "a b.0123456789abcdef0123",
    ],
)
def test_resolve_refuses_what_is_not_our_gtrid_before_connecting(
    tmp_path: Path, gtrid: str
) -> None:
    result = twopc(tmp_path, "resolve", gtrid, "--rollback")
    refused(
        result,
        f"Error: {gtrid!r} is not a gtrid of ours: they look like "
        "<coordinator-id>.<20 hex digits> (see `twopc in-doubt`)",
    )


def test_resolve_of_a_well_formed_gtrid_goes_on_to_the_servers(tmp_path: Path) -> None:
    result = twopc(tmp_path, "resolve", "c1.0123456789abcdef0123", "--rollback")
    assert result.exit_code == 1 and "connect failed" in result.stderr, result.stderr


# -- --at-step ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (["--at-step", "2"], "--at-step only applies with --mode saga"),
        (
            ["--at-step", "1", "--crash-at", "after-prepare"],
            "--at-step only applies with --mode saga",
        ),
        (["--mode", "saga", "--at-step", "2"], "--at-step only applies with after-step-commit"),
        (
            ["--mode", "saga", "--at-step", "2", "--pause-at", "after-debit"],
            "--at-step only applies with after-step-commit",
        ),
    ],
)
def test_at_step_is_never_silently_ignored(tmp_path: Path, extra: list[str], line: str) -> None:
    refused(twopc(tmp_path, *TRANSFER, *extra), f"Error: {line} (see `twopc transfer --help`)")


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "option"), [("pg", "--pg-url"), ("mysql", "--mysql-url")])
def test_an_empty_url_is_refused_not_replaced_by_the_dev_servers(
    tmp_path: Path, side: str, option: str
) -> None:
    envvar = f"TWOPC_{side.upper()}_URL"
    line = (
        f"Error: {side} URL is empty ({option} / {envvar}): give a URL, or leave it unset "
        "to use the servers of `twopc dev up`"
    )
    refused(twopc(tmp_path, option, "", "balances"), line)
    refused(twopc(tmp_path, "balances", **{envvar: ""}), line)
    refused(twopc(tmp_path, *TRANSFER, **{envvar: " "}), line)


# -- amounts and accounts -----------------------------------------------------------------------

BAD_AMOUNTS = ["\u0665", "\uff15", "1\u0660", " 0.5 ", "0.5 ", "\t1", "1\n", "+1", "1.", ".5"]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_only_ascii_digits_make_an_amount(tmp_path: Path, amount: str) -> None:
    with pytest.raises(InvalidInput):
        parse_amount(amount)
    refused(
        twopc(tmp_path, "transfer", "pg:a1", "mysql:a2", amount),
        f"Error: amount {amount!r} must be a positive decimal with at most 2 places, like 12.50",
    )


@pytest.mark.parametrize(
    "text", ["pg:a1\n", "pg:a\u0661", "pg:\uff41", " pg:a1", "pg:a1 ", "PG:a1"]
)
def test_account_references_are_ascii_and_exact(text: str) -> None:
    with pytest.raises(InvalidInput):
        AccountRef.parse(text)


def test_plain_amounts_still_parse() -> None:
    assert str(parse_amount("0.5")) == "0.50" and str(parse_amount("007")) == "7.00"


# -- --json: a failure of transfer is a document too --------------------------------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["pg:a1", "mysql:a2", "0"], "amount '0' must be greater than 0"),
        (["pg:a1", "pg:a1", "1"], "source and destination are the same account (pg:a1)"),
        (["pg:a1", "mysql:a2", "1", "--at-step", "2"], "--at-step only applies with --mode saga"),
        (["pg:a1", "mysql:a2", "1", "--saga-id", "s"], "--saga-id only apply with --mode saga"),
        (
            ["pg:a1", "mysql:a2", "1", "--mode", "saga", "--prepare-timeout", "5"],
            "--prepare-timeout only applies with --mode 2pc",
        ),
    ],
)
def test_transfer_json_reports_bad_input(tmp_path: Path, args: list[str], error: str) -> None:
    result = twopc(tmp_path, "transfer", *args, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {"outcome": "invalid", "error": error, "exit_code": 2}
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {error}")


def test_transfer_json_reports_an_unreachable_server(tmp_path: Path) -> None:
    result = twopc(tmp_path, *TRANSFER, "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["outcome"] == "failed" and document["exit_code"] == 1
    assert "connect failed" in document["error"]
    assert result.stderr == f"Error: {document['error']}\n"


# -- log show / log verify on directories that hold no log --------------------------------------

DATA = Path(__file__).parent / "data" / "logs"


def logs_home(tmp_path: Path, **logs: str) -> Path:
    """A HOME whose txlog/ holds copies of the stored logs ``logs`` names (id -> data dir)."""
    root = tmp_path / "home" / "txlog"
    root.mkdir(parents=True)
    for name, stored in logs.items():
        target = root / name
        target.mkdir()
        for file in (DATA / stored).iterdir():
            (target / file.name).write_bytes(file.read_bytes())
    return tmp_path / "home"


def test_log_commands_on_a_directory_with_only_its_lock(tmp_path: Path) -> None:
    home = logs_home(tmp_path)
    (home / "txlog" / "c1").mkdir()
    (home / "txlog" / "c1" / "LOCK").touch()
    problem = f"{home / 'txlog' / 'c1'}: offset 0: no segment and no checkpoint: no log here"
    verified = twopc(home, "log", "verify")
    assert verified.exit_code == 1, verified.stderr
    assert f"PROBLEM {problem}" in verified.stdout.splitlines()
    assert verified.stderr == f"Error: 1 damaged log(s): {home / 'txlog' / 'c1'} (1 problem(s))\n"
    (report,) = json.loads(twopc(home, "log", "verify", "--json").stdout)
    assert report["ok"] is False and report["records"] == 0
    shown = twopc(home, "log", "show", "--coordinator", "c1")
    assert shown.exit_code == 1
    assert (
        shown.stderr
        == f"Error: {home / 'txlog' / 'c1'}: no segment and no checkpoint: no log here\n"
    )


def test_log_commands_with_stray_directories(tmp_path: Path) -> None:
    home = logs_home(tmp_path, good="good")
    (home / "txlog" / "lost+found").mkdir()  # not a coordinator id: not a log
    (home / "txlog" / "stray" / "sub").mkdir(parents=True)  # a coordinator id, no log inside
    (home / "txlog" / "good" / "spare").mkdir()  # beside the segments: ignored
    verified = twopc(home, "log", "verify", "--json")
    assert verified.exit_code == 1, verified.stderr
    reports = {r["id"]: r for r in json.loads(verified.stdout)}
    assert set(reports) == {"good", "stray"}
    assert reports["good"]["ok"] is True and reports["stray"]["ok"] is False
    shown = twopc(home, "log", "show", "--json")
    assert shown.exit_code == 1
    logs = {log["id"]: log for log in json.loads(shown.stdout)}
    assert len(logs["good"]["records"]) == 20 and "error" not in logs["good"]
    assert logs["stray"]["error"].endswith("no segment and no checkpoint: no log here")


def test_log_commands_on_a_directory_where_a_segment_should_be(tmp_path: Path) -> None:
    home = logs_home(tmp_path, odd="good")
    segment = home / "txlog" / "odd" / "segment-00000000000000000007.log"
    segment.mkdir()
    verified = twopc(home, "log", "verify")
    assert verified.exit_code == 1
    assert f"PROBLEM {segment}: offset 0: cannot be read: Is a directory" in verified.stdout
    shown = twopc(home, "log", "show")
    assert shown.exit_code == 1
    assert shown.stderr == f"Error: {segment}: offset 0: cannot be read: Is a directory\n"


def test_log_show_lists_the_rest_and_reports_the_damaged_log(tmp_path: Path) -> None:
    home = logs_home(tmp_path, a="good", b="mid-corrupt", c="torn-tail")
    result = twopc(home, "log", "show")
    assert result.exit_code == 1
    damage = f"{home / 'txlog' / 'b'}/segment-00000000000000000003.log: offset 140: "
    assert result.stderr.startswith(f"Error: {damage}") and result.stderr.count("\n") == 1
    headings = [line for line in result.stdout.splitlines() if line.startswith("== ")]
    assert headings == ["== a (not running)", "== b (not running)", "== c (not running)"]
    assert f"DAMAGED: {damage}record checksum mismatch" in result.stdout
    documents = json.loads(twopc(home, "log", "show", "--json").stdout)
    assert [(d["id"], bool(d["records"]), "error" in d) for d in documents] == [
        ("a", True, False),
        ("b", False, True),
        ("c", True, False),
    ]


def test_log_show_prints_the_operators_decision(tmp_path: Path) -> None:
    home = tmp_path / "home"
    body = {
        "gtrid": "c1.0123456789abcdef0123",
        "decision": "rollback",
        "logged_decision": "commit",
        "heuristic": True,
        "branches": [
            {"gtrid": "c1.0123456789abcdef0123", "server": "pg", "action": "rolled back"},
            {"gtrid": "c1.0123456789abcdef0123", "server": "mysql", "action": "rolled back"},
        ],
    }
    with TransactionLog.open(home / "txlog" / "_operator") as log:
        log.append(Record("RESOLVE", "c1.0123456789abcdef0123", body, final=True), force=True)
    result = twopc(home, "log", "show")
    assert result.exit_code == 0, result.stderr
    heading, line = result.stdout.splitlines()
    assert heading == "== operator's resolutions (twopc resolve)"
    assert line.endswith(
        "RESOLVE  c1.0123456789abcdef0123  decision: rollback (heuristic: the log said commit)"
        "  pg: rolled back mysql: rolled back"
    )


def test_sagas_reports_a_damaged_orchestrator_log_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "sagas").mkdir(parents=True)
    (home / "sagas" / "o1").mkdir()
    for file in (DATA / "mid-corrupt").iterdir():
        (home / "sagas" / "o1" / file.name).write_bytes(file.read_bytes())
    result = twopc(home, "sagas")
    assert result.exit_code == 1
    assert result.stdout.startswith("damaged log of orchestrator o1: ")
    assert result.stderr == (
        "Error: damaged log of orchestrator(s) o1: their sagas need an operator\n"
    )
