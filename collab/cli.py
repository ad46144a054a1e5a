"""The `collab` command line: one subcommand per job, each help ending with an example."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields

from . import __version__
from .config import Settings, env_name
from .errors import CollabError, ConfigError
from .logs import configure_logging

__all__ = ["build_parser", "main"]

MAIN_EPILOG = """\
example:
  collab serve --port 1234 --db data/collab.db
  then point a y-websocket client at ws://127.0.0.1:1234/my-document
"""

SERVE_EPILOG = """\
every flag can also be set with its environment variable (COLLAB_PORT=8080 ...);
a flag beats the environment, which beats the default.

example:
  collab serve --host 0.0.0.0 --port 8080 --db /var/lib/collab/collab.db
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collab",
        description="Real-time collaboration server for Yjs clients (y-websocket protocol).",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"collab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Serve documents to y-websocket clients over WebSocket, with SQLite persistence.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_setting_flags(serve)
    serve.set_defaults(handler=_serve)
    return parser


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for item in fields(Settings):
        parser.add_argument(
            "--" + item.name.replace("_", "-"),
            type=item.metadata["parse"],
            default=None,
            metavar=item.name.split("_")[-1].upper(),
            help=f"{item.metadata['help']} [{env_name(item.name)}, default {item.default}]",
        )


def _serve(args: argparse.Namespace) -> int:
    from .server import run

    settings = Settings.load(vars(args))
    configure_logging(settings.log_level)
    run(settings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as error:
        parser.exit(2, f"collab: error: {error}\n")
    except CollabError as error:
        parser.exit(1, f"collab: error: {error}\n")
    except KeyboardInterrupt:
        return 130
