"""The command line: documented, configurable from flags and the environment, clear on errors."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collab.cli.main import build_parser
from collab.config import Settings
from collab.errors import EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_IN_USE, EXIT_NOT_FOUND, EXIT_STORAGE, EXIT_USAGE
from collab.store.lockfile import DatabaseLock
from collab.units import parse_duration, parse_size

from .helpers import SECRET, ServerProcess, collab_cli, write_backup


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr, which must be one line and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def subcommands() -> list[str]:
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert isinstance(choices, dict)
    return list(choices)


@pytest.mark.parametrize("argv", [[], *([name] for name in subcommands())])
def test_every_help_ends_with_an_example(argv: list[str]) -> None:
    result = collab_cli(*argv, "--help")
    match = re.search(r"\nexamples?:\n(.*)", result.stdout, re.DOTALL)
    assert match, "help must end with an example"
    assert "collab " in match[1]


def test_flags_beat_environment_which_beats_defaults() -> None:
    environ = {"COLLAB_PORT": "8080", "COLLAB_HOST": "0.0.0.0", "COLLAB_COMMIT_INTERVAL": "20ms"}
    settings = Settings.load({"port": 9000}, environ)
    assert (settings.port, settings.host, settings.commit_interval) == (9000, "0.0.0.0", 0.02)
    assert Settings.load({}, {}).db == "data/collab.db"
    assert Settings.load({}, {}).max_message_size >= 64 * 2**20


def test_sizes_and_durations_parse_with_units() -> None:
    assert parse_size("64M") == 64 * 2**20 and parse_size("512KiB") == 512 * 1024 and parse_size("10") == 10
    assert parse_duration("50ms") == 0.05 and parse_duration("2m") == 120 and parse_duration("1.5") == 1.5
    with pytest.raises(ValueError):
        parse_size("lots")


def test_a_bad_environment_value_is_a_clear_error() -> None:
    result = collab_cli("serve", env={"COLLAB_PORT": "not-a-port"}, check=False)
    assert result.returncode == 2
    assert "COLLAB_PORT" in result.stderr and "not-a-port" in result.stderr


def test_a_bad_flag_is_a_clear_error() -> None:
    result = collab_cli("serve", "--commit-interval", "soon", check=False)
    assert result.returncode == 2
    assert "--commit-interval" in result.stderr


def test_a_busy_port_and_an_unusable_database_are_clear_errors(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = collab_cli("serve", "--port", str(port), "--db", str(tmp_path / "a.db"), check=False)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    (tmp_path / "file").write_text("not a directory")
    result = collab_cli("serve", "--port", "0", "--db", str(tmp_path / "file" / "x.db"), check=False)
    assert result.returncode == EXIT_STORAGE
    assert "cannot open database" in result.stderr
    assert "Traceback" not in result.stderr


def test_scripts_export_wraps_collab_export(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(Path(__file__).parent.parent / "scripts" / "export"), "--db", str(tmp_path / "none.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_STORAGE
    assert "no database at" in result.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--port", "abc"], "collab serve: --port: not a port number: 'abc'"),
        (["serve", "--port", "99999"], "collab serve: --port: not a port number: '99999'"),
        (["serve", "--port", "65536"], "collab serve: --port: not a port number: '65536'"),
        (["serve", "--port", "-1"], "collab serve: --port: not a port number: '-1'"),
        (["serve", "--log-level", "verbose"], "collab serve: --log-level: 'verbose' is not one of debug, info"),
        (["serve", "--max-message-size", "64X"], "collab serve: --max-message-size: not a size: '64X'"),
        (["serve", "--compact-after", "many"], "collab serve: --compact-after: not a whole number: 'many'"),
        (["serve", "--db", ""], "collab serve: --db: empty database name"),
        (["stats", "--db", ""], "collab stats: --db: empty database name"),
        (["token", "x", "--ttl", "-5m"], "collab token: --ttl: a duration cannot be negative: '-5m'"),
        (["token", "x", "--ttl=-5m"], "collab token: --ttl: a duration cannot be negative: '-5m'"),
        (["token", "x", "--ttl", "0"], "collab token: --ttl: a token must live longer than 0s: '0'"),
        (["token", "x", "--ttl", "soon"], "collab token: --ttl: not a duration: 'soon'"),
        (["export", "--at", "-2h"], "collab export: --at: not a time: '-2h'"),
        (["history"], "collab history: the following arguments are required: name"),
        (["token", "x", "--ttl", "9" * 400 + "w"], "collab token: --ttl: not a duration: "),
        (["serve", "--handshake-timeout", "0"], "collab serve: --handshake-timeout: must be more than 0: '0'"),
        (["revoke", "--id", ""], "collab revoke: --id: empty token id"),
        (["token", "x", "--id", " "], "collab token: --id: empty token id"),
    ],
)
def test_a_bad_flag_value_is_one_line_naming_the_flag(argv: list[str], expected: str) -> None:
    result = collab_cli(*argv, check=False)
    assert result.returncode == EXIT_USAGE
    line = one_clear_line(result)
    assert line.startswith(expected), line
    assert line.rstrip().endswith(f"see collab {argv[0]} --help")
    assert "parse_" not in line and "invalid" not in line and "usage:" not in line


def test_an_out_of_range_port_in_the_environment_is_refused(tmp_path: Path) -> None:
    result = collab_cli("serve", "--db", str(tmp_path / "a.db"), env={"COLLAB_PORT": "70000"}, check=False)
    assert result.returncode == EXIT_USAGE
    assert one_clear_line(result).startswith("collab serve: COLLAB_PORT: not a port number: '70000'")
    assert not (tmp_path / "a.db").exists(), "nothing was started"


def test_an_empty_variable_counts_as_unset() -> None:
    """`COLLAB_DB=` in an env file, or `${COLLAB_DB}` of a Compose file when it is unset."""
    assert Settings.load({}, {"COLLAB_DB": "", "COLLAB_PORT": ""}) == Settings()


@pytest.mark.parametrize("variable", ["COLLAB_AUTH_SECRET", "COLLAB_AUTH_SECRET_FILE", "COLLAB_AUTH_PUBLIC_KEY"])
def test_an_empty_access_control_variable_is_refused_not_ignored(variable: str) -> None:
    """A blank secret in an env file must not quietly serve every document to anyone."""
    result = collab_cli("token", "notes", env={variable: ""}, check=False)
    assert result.returncode == EXIT_USAGE
    assert one_clear_line(result).startswith(f"collab token: {variable} is empty")


def test_an_empty_document_name_says_so() -> None:
    result = collab_cli("token", "", env={"COLLAB_AUTH_SECRET": "s" * 32}, check=False)
    assert result.returncode == EXIT_USAGE
    line = one_clear_line(result)
    assert line.startswith("collab token: the document name is empty") and "ws://" not in line


def test_a_token_can_live_a_week() -> None:
    result = collab_cli("token", "notes", "--ttl", "1w", env={"COLLAB_AUTH_SECRET": "s" * 32})
    from collab.auth import verify_token

    grant = verify_token(b"s" * 32, result.stdout.strip())
    assert grant.issued_at is not None and grant.expires_at - grant.issued_at == 7 * 86400


def test_serve_help_shows_defaults_as_they_are_written() -> None:
    help_text = " ".join(collab_cli("serve", "--help").stdout.split())
    for shown in ("default 64M]", "default 50ms]", "default 1h]", "default 30d]", "default 20s]", "default 16M]"):
        assert shown in help_text
    assert "67108864" not in help_text and "3600.0" not in help_text and "0.05" not in help_text


def test_a_missing_document_is_not_found_not_a_usage_error(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    collab_cli("import", str(write_backup(tmp_path / "hello.ydoc", "hello")), "--name", "hello", "--db", str(db))
    result = collab_cli("history", "nope", "--db", str(db), check=False)
    assert result.returncode == EXIT_NOT_FOUND
    assert one_clear_line(result) == "collab history: no document named 'nope'\n"


def test_a_database_in_use_has_its_own_exit_code(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    lock = DatabaseLock(db)
    lock.acquire()
    try:
        result = collab_cli("serve", "--port", "0", "--db", str(db), check=False)
    finally:
        lock.release()
    assert result.returncode == EXIT_IN_USE
    assert one_clear_line(result).startswith(f"collab serve: the database {db} is in use by pid {os.getpid()}")


@pytest.mark.parametrize("command", [["rooms"], ["rooms", "--json"], ["history", "hello"], ["stats"]])
def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path, command: list[str]) -> None:
    """`collab rooms | head`: the pipe's reading end is gone before collab writes its first line."""
    db = tmp_path / "a.db"
    collab_cli("import", str(write_backup(tmp_path / "hello.ydoc", "hello")), "--name", "hello", "--db", str(db))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "collab", *command, "--db", str(db)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert result.returncode == EXIT_BROKEN_PIPE
    assert result.stderr == ""


def test_scripts_collab_runs_any_command_from_anywhere(tmp_path: Path) -> None:
    """The wrapper the README puts on PATH: linked from another folder, run from a third."""
    root = Path(__file__).parent.parent
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "collab").symlink_to(root / "scripts" / "collab")
    environ = {key: value for key, value in os.environ.items() if key != "COLLAB_DB"}
    version = subprocess.run(
        [str(tmp_path / "bin" / "collab"), "--version"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert version.returncode == 0 and version.stdout.startswith("collab "), version.stderr
    missing = subprocess.run(
        [str(tmp_path / "bin" / "collab"), "history", "x", "--db", str(tmp_path / "none.db")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=environ,
    )
    assert missing.returncode == EXIT_STORAGE
    assert one_clear_line(missing) == f"collab history: no database at {tmp_path / 'none.db'}\n"


def test_import_into_a_memory_database_is_refused(tmp_path: Path) -> None:
    """`--db memory:` keeps nothing once the command ends: saying "merged" would be a lie."""
    backup = write_backup(tmp_path / "notes.ydoc", "kept?")
    result = collab_cli("import", str(backup), "--name", "notes", "--db", "memory:", check=False)
    assert result.returncode == EXIT_USAGE
    assert one_clear_line(result).startswith("collab import: --db memory: keeps nothing once this command ends")


def test_import_into_a_locked_database_fails_in_bounded_time(tmp_path: Path) -> None:
    """Another process holds the write lock: one line and exit 5, after the busy timeout, not a retry forever."""
    db = tmp_path / "locked.db"
    backup = write_backup(tmp_path / "notes.ydoc", "later")
    collab_cli("import", str(backup), "--name", "first", "--db", str(db))  # creates the database
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        result = collab_cli(
            "import", str(backup), "--name", "notes", "--db", str(db),
            env={"COLLAB_SQLITE_BUSY_TIMEOUT": "200ms"}, check=False,
        )  # fmt: skip
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert result.returncode == EXIT_STORAGE
    assert one_clear_line(result).startswith("collab import: cannot write to the database")
    collab_cli("import", str(backup), "--name", "notes", "--db", str(db))  # and once free, it goes in


def test_import_through_a_server_with_the_wrong_secret_says_so_at_once(tmp_path: Path) -> None:
    db = tmp_path / "secured.db"
    server = ServerProcess(db, env={"COLLAB_AUTH_SECRET": SECRET}).start()
    try:
        backup = write_backup(tmp_path / "notes.ydoc", "x")
        started = time.monotonic()
        result = collab_cli(
            "import", str(backup), "--name", "notes", "--db", str(db),
            env={"COLLAB_AUTH_SECRET": "wrong" * 4}, check=False,
        )  # fmt: skip
        assert time.monotonic() - started < 20, "refused at once, not after the 60 s import timeout"
    finally:
        server.stop()
    assert result.returncode == EXIT_FAILURE
    assert one_clear_line(result).startswith("collab import: the server refused the token")
