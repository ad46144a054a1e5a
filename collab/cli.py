"""The `collab` command line: one subcommand per job, each help ending with an example."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from . import __version__
from .config import Settings, env_name
from .errors import CollabError, ConfigError
from .formats import FORMATS
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


EXPORT_EPILOG = """\
formats: txt and md write the text of the root Y.Text "content" (what the web
editor edits); json writes every root type plus metadata; ydoc writes the whole
document as a binary Yjs update, for backups (collab import reads it back).
Safe to run while the server is running; it never writes to the database.

examples:
  collab export --format ydoc --out backups/            every document
  collab export --format md --out notes/ 'notes/*'      documents matching a glob
  collab export --out - --at 2h meeting                 one document as it was 2 hours ago
"""

IMPORT_EPILOG = """\
Importing merges (a CRDT merge): content already in the document is not added
twice. With a server running on the database, the import goes through it and
connected clients see the content at once.

example:
  collab import backups/meeting.ydoc --name meeting
"""

HISTORY_EPILOG = """\
Lists every moment a document can be exported at with --at: the updates still
in its log, and the checkpoints kept when the log was compacted.

example:
  collab history meeting
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

    def command(name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
        )

    serve = command(
        "serve",
        "run the server",
        "Serve documents to y-websocket clients over WebSocket, with SQLite persistence.",
        SERVE_EPILOG,
    )
    _add_setting_flags(serve)
    serve.set_defaults(handler=_serve)

    export = command("export", "export documents to files", "Export documents to files, now or as they were.", EXPORT_EPILOG)
    _add_db_flag(export)
    export.add_argument("--out", default="exports", help="directory to write to, or - for stdout [default exports]")
    export.add_argument("--format", default="txt", choices=sorted(FORMATS), help="file format [default txt]")
    export.add_argument("--at", metavar="TIME", help="export as of TIME: 2h, 3d (ago) or ISO 8601 (UTC if no zone)")
    export.add_argument("names", nargs="*", metavar="NAME_OR_GLOB", help="documents to export [default: all]")
    export.set_defaults(handler=_export)

    restore = command("import", "merge a ydoc backup into a document", "Merge a .ydoc backup into a document.", IMPORT_EPILOG)
    _add_db_flag(restore)
    restore.add_argument("file", type=Path, metavar="FILE.ydoc", help="a file written by collab export --format ydoc")
    restore.add_argument("--name", help="document to merge into [default: the name the file name stands for]")
    restore.set_defaults(handler=_import)

    history = command("history", "list the moments a document can be exported at", "List a document's history.", HISTORY_EPILOG)
    _add_db_flag(history)
    history.add_argument("name", help="document name")
    history.set_defaults(handler=_history)
    return parser


def _add_db_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help=f"database file [{env_name('db')}, default {Settings.db}]")


def _db(args: argparse.Namespace) -> Path:
    return Settings.load({"db": args.db}).db


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


def _export(args: argparse.Namespace) -> int:
    from .export import export

    at = None if args.at is None else _time(args.at)
    written = export(_db(args), args.out, args.format, args.names, at)
    if args.out != "-":
        print(f"exported {len(written)} document(s) to {args.out}/ (see {args.out}/manifest.json)", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    from .filenames import name_from_file_name
    from .importer import import_update

    try:
        update = args.file.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {args.file}: {error.strerror}") from error
    name = args.name or name_from_file_name(args.file.name)
    result = asyncio.run(import_update(_db(args), update, name))
    outcome = "merged into" if result.changed else "already contained in"
    print(f"{args.file}: {outcome} {result.name!r} ({result.via})", file=sys.stderr)
    return 0


def _history(args: argparse.Namespace) -> int:
    from .store.history import format_time
    from .store.sqlite_read import SQLiteReader, read_history

    with SQLiteReader(_db(args)) as reader, reader.snapshot() as conn:
        points = read_history(conn, args.name)
    if not points:
        raise ConfigError(f"no document named {args.name!r}")
    for point in points:
        print(f"{format_time(point.at)}  {point.kind:<10}  {point.size} bytes")
    return 0


def _time(text: str) -> float:
    from .store.history import parse_time

    try:
        return parse_time(text, time.time())
    except ValueError as error:
        raise ConfigError(f"--at: {error}") from error


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
