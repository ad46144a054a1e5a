"""The command line: documented, configurable from flags and the environment, clear on errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from collab.cli.main import build_parser
from collab.config import Settings, parse_duration, parse_size


def subcommands() -> list[str]:
    parser = build_parser()
    return list(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


@pytest.mark.parametrize("argv", [[], *([name] for name in subcommands())])
def test_every_help_ends_with_an_example(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collab", *argv, "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    match = re.search(r"\nexamples?:\n(.*)", result.stdout, re.DOTALL)
    assert match, "help must end with an example"
    assert "collab " in match[1]


def test_flags_beat_environment_which_beats_defaults() -> None:
    environ = {"COLLAB_PORT": "8080", "COLLAB_HOST": "0.0.0.0", "COLLAB_COMMIT_INTERVAL": "20ms"}
    settings = Settings.load({"port": 9000}, environ)
    assert (settings.port, settings.host, settings.commit_interval) == (9000, "0.0.0.0", 0.02)
    assert Settings.load({}, {}).db == Path("data/collab.db")
    assert Settings.load({}, {}).max_message_size >= 64 * 2**20


def test_sizes_and_durations_parse_with_units() -> None:
    assert parse_size("64M") == 64 * 2**20 and parse_size("512KiB") == 512 * 1024 and parse_size("10") == 10
    assert parse_duration("50ms") == 0.05 and parse_duration("2m") == 120 and parse_duration("1.5") == 1.5
    with pytest.raises(ValueError):
        parse_size("lots")


def test_a_bad_environment_value_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collab", "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"COLLAB_PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "COLLAB_PORT" in result.stderr and "not-a-port" in result.stderr


def test_a_bad_flag_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collab", "serve", "--commit-interval", "soon"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--commit-interval" in result.stderr


def test_a_busy_port_and_an_unusable_database_are_clear_errors(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "collab", "serve", "--port", str(port), "--db", str(tmp_path / "a.db")],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    (tmp_path / "file").write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "collab", "serve", "--port", "0", "--db", str(tmp_path / "file" / "x.db")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot open database" in result.stderr
    assert "Traceback" not in result.stderr


def test_scripts_export_wraps_collab_export(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(Path(__file__).parent.parent / "scripts" / "export"), "--db", str(tmp_path / "none.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "no database at" in result.stderr
