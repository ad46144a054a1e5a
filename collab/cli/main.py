"""The `collab` command line: one subcommand per job, each help ending with an example.

Whatever goes wrong ends in one line on stderr, `collab <command>: <what>`, and
the exit status `collab.errors.exit_code_for` gives it (2 only for usage);
never a usage screen or a traceback for a mistake collab can name.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..config import Settings, env_name, parse_database, parse_path
from ..errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CollabError,
    ConfigError,
    InvalidRoomNameError,
    NotFoundError,
    exit_code_for,
)
from ..formats import FORMATS
from ..logs import configure_logging
from ..units import format_duration, parse_duration, parse_time

__all__ = ["build_parser", "main"]

MAIN_EPILOG = """\
example:
  collab serve --port 1234 --db data/collab.db
  then point a y-websocket client at ws://127.0.0.1:1234/my-document
"""

SERVE_EPILOG = """\
every flag can also be set with its environment variable (COLLAB_PORT=8080 ...);
a flag beats the environment, which beats the default.

examples:
  collab serve --host 0.0.0.0 --port 8080 --db /var/lib/collab/collab.db
  collab serve --db postgresql://collab:PASSWORD@db.internal:5432/collab   (needs collab[postgres])
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
Importing merges (a CRDT merge): content already in a document is not added
twice. A directory restores a whole export: its manifest.json names every
document, long names included. Every file is read and checked before anything
is written. With a server running on the database, the import goes through its
HTTP API, each document reported once the server stored it, and connected
clients see the content at once; over TLS the server's certificate is verified
(against --cafile if given; on a loopback address only with --cafile).
Otherwise all of it is written in one transaction.

examples:
  collab import backups/                       every document collab export wrote there
  collab import backups/meeting.ydoc notes.ydoc
  collab import old.ydoc --name meeting
"""

COPY_EPILOG = """\
SOURCE and TARGET are --db values: a file, sqlite:///path or postgresql://...
Every document is copied with its history (a document the target lacks), or
merged into the target's (a CRDT merge: running it twice changes nothing).
Safe while a server runs on SOURCE; with one running on TARGET, the copy goes
through it (its clients see it at once) but history stays behind.

examples:
  collab copy data/collab.db postgresql://collab@db.internal/collab     grow into PostgreSQL
  collab copy postgresql://collab@db.internal/collab local.db           a local copy
"""

DELETE_EPILOG = """\
Removes each document and all of its history; a later document by that name
starts empty. With a server running on the database, the delete goes through
it: the document's clients are closed (4410) and do not reconnect. On a
terminal it lists what matches and asks first; elsewhere it needs --yes.

examples:
  collab delete meeting
  collab delete --yes 'scratch/*'               every document matching a glob
"""

RENAME_EPILOG = """\
The document keeps its content and history under the new name. With a server
running on the database, the rename goes through it: the old name's clients
are closed (4411, the reason naming NEW).

example:
  collab rename drafts/plan notes/plan
"""

RESTORE_EPILOG = """\
The document's content becomes what it was at TIME again, as a new change:
nothing in its history is rewritten (the restore is one more moment of it,
which can itself be restored away), and clients holding offline edits merge
with it. With a server running on the database, the restore goes through it
and the document's clients see it at once. TIME is a time collab history
lists, or 2h, 3d (ago).

examples:
  collab restore meeting --at 2h
  collab restore notes/plan --at 2026-11-28T14:00:00.000Z
"""

HISTORY_EPILOG = """\
Lists every moment a document can be exported at with --at: the updates still
in its log, and the checkpoints kept when the log was compacted.

example:
  collab history meeting
"""


TOKEN_EPILOG = """\
prints only the token, so it can be captured: TOKEN=$(collab token notes/plan --write)

Each token carries iat (when it was minted) and jti (its id: --id, or a
random one), by which collab revoke can void it before it expires.

examples:
  collab token notes/plan --write --ttl 8h
  collab token team/ --ttl 7d                   read access to every document under team/
  collab token notes/plan --write --subject ada --id session-42
"""

REVOKE_EPILOG = """\
Stored in the database; a running server on it picks the revocation up within
a second (it polls the database), closes the connections it voids with 4401
and refuses the tokens from then on, on WebSocket and HTTP alike.

examples:
  collab revoke --id session-42                 one token, by its jti
  collab revoke --doc notes/plan                every token for notes/plan minted before now
  collab revoke --doc team/ --before 2h         every token for team/... minted more than 2 hours ago
"""

STATS_EPILOG = """\
example:
  collab stats --db data/collab.db
"""

ROOMS_EPILOG = """\
example:
  collab rooms --json
"""

WEBHOOKS_EPILOG = """\
states: gathering (the document is still changing: its document.changed is not sealed yet), pending
(sent or being retried with backoff), failed (given up after --webhook-retry-for). Delivered events
are not kept. --retry and --forget change the outbox beside a running server; --forget knows the URLs
the server last started with.

examples:
  collab webhooks --failed
  collab webhooks --retry
"""


DEFAULT_TTL = 3600.0

# An option value that starts with "-" and a digit (`--ttl -5m`): argparse takes it for an
# option and says "expected one argument"; no collab option looks like that, so it is a value.
_DASH_VALUE = re.compile(r"^-\d")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line with a pointer to --help, instead of the whole usage screen."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message.removeprefix('argument ')}; see {self.prog} --help\n")


def _flag(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type` that shows `parse`'s ValueError as it is (argparse's own says "invalid <name> value")."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _lifetime(text: str) -> float:
    ttl = parse_duration(text)
    if ttl <= 0:
        raise ValueError(f"a token must live longer than 0s: {text!r} (try 30m, 12h or 7d)")
    return ttl


def _moment(text: str) -> float:
    return parse_time(text, time.time())


def _past_moment(text: str) -> float:
    """A moment that has been: a restore goes back in time, and a time to come is a mistake (a wrong zone)."""
    now = time.time()
    moment = parse_time(text, now)
    if moment > now:
        raise ValueError(f"{text} is in the future: a restore goes back to an earlier time")
    return moment


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """`--ttl -5m` -> `--ttl=-5m`, so that the value reaches its parser and is refused there, by name."""
    joined: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":  # what follows is positional, taken as it is
            return [*joined, *argv[index:]]
        previous = joined[-1] if joined else ""
        if _DASH_VALUE.match(arg) and previous.startswith("--") and "=" not in previous:
            joined[-1] = f"{previous}={arg}"
        else:
            joined.append(arg)
    return joined


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="collab",
        description="Real-time collaboration server for Yjs clients (y-websocket protocol).",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"collab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    serve = command(
        "serve",
        "run the server",
        "Serve documents to y-websocket clients over WebSocket, stored in the database --db names.",
        SERVE_EPILOG,
    )
    _add_setting_flags(serve)
    serve.set_defaults(handler=_serve)

    export = command(
        "export", "export documents to files", "Export documents to files, now or as they were.", EXPORT_EPILOG
    )
    _add_db_flag(export)
    export.add_argument("--out", default="exports", help="directory to write to, or - for stdout [default exports]")
    export.add_argument("--format", default="txt", choices=sorted(FORMATS), help="file format [default txt]")
    export.add_argument(
        "--at", metavar="TIME", type=_flag(_moment), help="export as of TIME: 2h, 3d (ago) or ISO 8601 (UTC if no zone)"
    )
    export.add_argument("names", nargs="*", metavar="NAME_OR_GLOB", help="documents to export [default: all]")
    export.set_defaults(handler=_export)

    merge = command(
        "import",
        "merge ydoc backups into documents",
        "Merge .ydoc backups, files or whole export directories, into their documents.",
        IMPORT_EPILOG,
    )
    _add_db_flag(merge)
    merge.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="a .ydoc file, or a directory collab export --format ydoc wrote (its manifest.json names each document)",
    )
    merge.add_argument(
        "--name", help="with one file: the document to merge into [default: the name the file name stands for]"
    )
    merge.add_argument(
        "--cafile",
        type=Path,
        metavar="FILE",
        help="a CA certificate (PEM) to verify a running server's TLS certificate with [default: the system's]",
    )
    merge.set_defaults(handler=_import)

    copy = command(
        "copy",
        "copy every document into another database",
        "Copy every document, with its history, from one database into another, as a CRDT merge.",
        COPY_EPILOG,
    )
    copy.add_argument("source", type=_flag(parse_database), metavar="SOURCE", help="the database to read")
    copy.add_argument("target", type=_flag(parse_database), metavar="TARGET", help="the database to write into")
    copy.set_defaults(handler=_copy)

    token = command(
        "token",
        "mint an access token",
        "Mint a token for a document (or a prefix ending in /) with the configured auth secret.",
        TOKEN_EPILOG,
    )
    token.add_argument("name", help="document name, or a prefix ending in / for every document under it")
    token.add_argument("--write", action="store_true", help="allow editing [default: read only]")
    token.add_argument(
        "--ttl",
        type=_flag(_lifetime),
        default=DEFAULT_TTL,
        help=f"lifetime: 30m, 12h, 7d, 2w [default {format_duration(DEFAULT_TTL)}]",
    )
    token.add_argument(
        "--auth-secret-file", type=_flag(parse_path), help="[COLLAB_AUTH_SECRET_FILE, or COLLAB_AUTH_SECRET]"
    )
    token.add_argument("--subject", help="who the token is for (its sub claim): the same person across reconnects")
    token.add_argument(
        "--id",
        dest="token_id",
        type=_flag(_token_id),
        help="the token's id (its jti claim), for collab revoke [default: random]",
    )
    token.set_defaults(handler=_token)

    revoke = command(
        "revoke",
        "void tokens before they expire",
        "Revoke one token by its id, or every token for a document (or prefix) minted before a time.",
        REVOKE_EPILOG,
    )
    _add_db_flag(revoke)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="token_id", type=_flag(_token_id), help="the jti of the token to revoke")
    which.add_argument(
        "--doc", metavar="NAME", help="a document name, or a prefix ending in / for all documents under it"
    )
    revoke.add_argument(
        "--before",
        metavar="TIME",
        type=_flag(_moment),
        help="with --doc: tokens minted before TIME: 2h (ago) or ISO 8601 [default: now]",
    )
    revoke.set_defaults(handler=_revoke)

    stats = command(
        "stats", "database totals", "Totals for a database: documents, bytes, log rows, history.", STATS_EPILOG
    )
    _add_db_flag(stats)
    stats.set_defaults(handler=_stats)

    rooms = command("rooms", "list documents", "Every document: size, log length, history, last change.", ROOMS_EPILOG)
    _add_db_flag(rooms)
    rooms.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rooms.set_defaults(handler=_rooms)

    webhooks = command(
        "webhooks",
        "list webhook events not yet delivered",
        "Webhook events still in the outbox: pending, retried or given up on, per URL.",
        WEBHOOKS_EPILOG,
    )
    _add_db_flag(webhooks)
    webhooks.add_argument("--failed", action="store_true", help="only the deliveries given up on")
    webhooks.add_argument("--json", action="store_true", help="print JSON instead of a table")
    change = webhooks.add_mutually_exclusive_group()
    change.add_argument("--retry", action="store_true", help="try the deliveries given up on again, now")
    change.add_argument(
        "--forget", action="store_true", help="drop the deliveries given up on, and those to URLs no longer configured"
    )
    webhooks.set_defaults(handler=_webhooks)

    delete = command(
        "delete",
        "delete documents and their history",
        "Delete documents, by name or glob, with all their history.",
        DELETE_EPILOG,
    )
    _add_db_flag(delete)
    delete.add_argument("--yes", action="store_true", help="do not ask first (needed when not on a terminal)")
    delete.add_argument("names", nargs="+", metavar="NAME_OR_GLOB", help="documents to delete")
    delete.set_defaults(handler=_delete)

    rename = command("rename", "rename a document", "Give a document, with its history, a new name.", RENAME_EPILOG)
    _add_db_flag(rename)
    rename.add_argument("old", metavar="OLD", help="the document's name")
    rename.add_argument("new", metavar="NEW", help="its new name (no document may have it yet)")
    rename.set_defaults(handler=_rename)

    restore = command(
        "restore",
        "bring a document back to an earlier version",
        "Make a document read as it did at a moment of its history, by a new change.",
        RESTORE_EPILOG,
    )
    _add_db_flag(restore)
    restore.add_argument("name", metavar="NAME", help="the document's name")
    restore.add_argument(
        "--at",
        metavar="TIME",
        type=_flag(_past_moment),
        required=True,
        help="the moment to go back to: 2h, 3d (ago) or ISO 8601 (UTC if no zone)",
    )
    restore.set_defaults(handler=_restore)

    history = command(
        "history", "list the moments a document can be exported at", "List a document's history.", HISTORY_EPILOG
    )
    _add_db_flag(history)
    history.add_argument("name", help="document name")
    history.set_defaults(handler=_history)
    return parser


def _add_db_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        type=_flag(parse_database),
        help=(
            "database: a file, sqlite:///path, postgresql://user:pass@host/dbname"
            f" [{env_name('db')}, default {Settings.db}]"
        ),
    )


def _db(args: argparse.Namespace) -> str:
    return Settings.load({"db": args.db}).db


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for item in fields(Settings):
        help = f"{item.metadata['help']} [{env_name(item.name)}, default {item.metadata['show'](item.default)}]"
        repeated = item.metadata["repeated"]
        if repeated is not None:
            flag, parse_one = repeated
            parser.add_argument(
                flag,
                dest=item.name,
                type=_flag(parse_one),
                action="append",
                metavar=item.metadata["metavar"],
                help=help,
            )
            continue
        parser.add_argument(
            "--" + item.name.replace("_", "-"),
            type=_flag(item.metadata["parse"]),
            default=None,
            metavar=item.metadata["metavar"],
            help=help,
        )


def _serve(args: argparse.Namespace) -> int:
    from ..server.app import run

    settings = Settings.load(vars(args))
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from ..cluster.workers import Supervisor

        return Supervisor(settings).run()
    run(settings)
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..filenames import MANIFEST
    from .export import export

    written = export(_db(args), args.out, args.format, args.names, args.at)
    failed = [item for item in written if item.error is not None]
    for item in failed:
        print(f"collab export: {item.error}", file=sys.stderr)
    if args.out != "-":
        print(
            f"exported {len(written) - len(failed)} document(s) to {args.out}/ (see {args.out}/{MANIFEST})"
            + (f"; {len(failed)} could not be read" if failed else ""),
            file=sys.stderr,
        )
    return 1 if failed else 0


def _import(args: argparse.Namespace) -> int:
    from .importer import Backup, Imported, import_backups, read_backups

    name = _document_name(args.name, "--name") if args.name is not None else None
    backups, missing = read_backups(args.paths, name)  # all read and checked before anything is written
    for lacking in missing:
        print(f"collab import: {lacking.name!r} is not in the backup: {lacking.error}", file=sys.stderr)

    def done(backup: Backup, result: Imported) -> None:
        outcome = "merged into" if result.changed else "already contained in"
        print(f"{backup.source}: {outcome} {result.name!r} ({result.via})", file=sys.stderr)

    imported = import_backups(Settings.load({"db": args.db}), backups, done, args.cafile)
    if len(imported) > 1 or missing:
        merged = sum(result.changed for result in imported)
        print(
            f"imported {len(imported)} file(s): {merged} merged, {len(imported) - merged} already contained"
            + (f"; {len(missing)} listed document(s) not in the backup" if missing else ""),
            file=sys.stderr,
        )
    return EXIT_FAILURE if missing else 0


def _copy(args: argparse.Namespace) -> int:
    from ..store.engines import redacted
    from .copy import LineProgress, TerminalProgress, copy_databases

    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else LineProgress(sys.stderr)
    try:
        copied = copy_databases(args.source, args.target, progress)
    finally:
        progress.end()  # before an error line, which must not land on the bar's
    counts = {outcome: sum(item.outcome == outcome for item in copied) for outcome in ("new", "merged", "unchanged")}
    print(
        f"copied {len(copied)} document(s) from {redacted(args.source)} to {redacted(args.target)}: "
        + ", ".join(f"{count} {outcome}" for outcome, count in counts.items())
    )
    return 0


def _delete(args: argparse.Namespace) -> int:
    from .manage import Documents, select_documents

    patterns = [_document_name(pattern, "a name or glob") for pattern in args.names]
    documents = Documents(Settings.load({"db": args.db}))  # first: a server it cannot go through stops it here
    names = select_documents(documents.stored(), patterns)
    if not args.yes and not _confirmed(names):
        print("collab delete: nothing deleted", file=sys.stderr)
        return EXIT_FAILURE
    missing: list[str] = []

    def done(name: str, error: NotFoundError | None) -> None:
        if error is None:
            print(f"deleted {name!r}", file=sys.stderr)
        else:  # deleted meanwhile, by someone else: the others still go
            missing.append(name)
            print(f"collab delete: {error}", file=sys.stderr)

    documents.delete(names, done)
    print(
        f"deleted {len(names) - len(missing)} document(s) and their history ({documents.via})"
        + (f"; {len(missing)} no longer existed" if missing else ""),
        file=sys.stderr,
    )
    return EXIT_NOT_FOUND if missing else 0


def _confirmed(names: list[str]) -> bool:
    """Ask on the terminal; refuse (usage: exit 2) where nobody can answer, rather than delete unasked."""
    from .manage import preview

    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise ConfigError(f"no terminal to confirm on: add --yes to delete {len(names)} document(s) and their history")
    for line in preview(names):
        print(line, file=sys.stderr)
    print(f"Delete {len(names)} document(s) and their history? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _rename(args: argparse.Namespace) -> int:
    from .manage import Documents

    old, new = _document_name(args.old, "OLD"), _document_name(args.new, "NEW")
    documents = Documents(Settings.load({"db": args.db}))
    documents.rename(old, new)
    print(f"renamed {old!r} to {new!r} ({documents.via})", file=sys.stderr)
    return 0


def _restore(args: argparse.Namespace) -> int:
    from ..units import format_time
    from .manage import Documents

    name = _document_name(args.name, "NAME")
    documents = Documents(Settings.load({"db": args.db}))
    documents.restore(name, args.at)
    print(f"restored {name!r} to {format_time(args.at)} ({documents.via})", file=sys.stderr)
    return 0


def _token_id(text: str) -> str:
    if not text.strip():
        raise ValueError("empty token id")
    return text


def _token(args: argparse.Namespace) -> int:
    from ..auth import Permission, mint_token

    _document_name(args.name, "the document name")
    secret = Settings.load({"auth_secret_file": args.auth_secret_file}).secret()
    if secret is None:
        raise ConfigError("no auth secret: set COLLAB_AUTH_SECRET or pass --auth-secret-file")
    permission = Permission.WRITE if args.write else Permission.READ
    print(mint_token(secret, args.name, permission, args.ttl, subject=args.subject, token_id=args.token_id))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from ..auth import Revocation
    from ..units import format_time

    if args.token_id is not None:
        if args.before is not None:
            raise ConfigError("--before goes with --doc; --id revokes the token whatever its age")
        revocation = Revocation(token_id=args.token_id)
        what = f"token {args.token_id!r}"
    else:
        _document_name(args.doc, "--doc")
        before = time.time() if args.before is None else args.before
        revocation = Revocation(scope=args.doc, before=before)
        what = f"tokens for {args.doc!r} minted before {format_time(before)}"
    from ..store.engines import locate

    locate(_db(args)).add_revocation(revocation)
    print(f"revoked {what}", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ..store.engines import locate

    database = locate(_db(args))
    with database.reader() as reader:
        infos = reader.documents()
    lines = {
        "database": database.describe(),
        "server": _server_line(database.running_server()),
        "documents": str(len(infos)),
        "stored bytes": f"{sum(info.size for info in infos)} (snapshots and logs)",
        "history bytes": str(sum(info.history_size for info in infos)),
        "log rows": f"{sum(info.log_length for info in infos)} (not yet compacted)",
    }
    if infos:
        from ..units import format_time

        lines["last change"] = format_time(max(info.updated_at for info in infos))
    for key, value in lines.items():
        print(f"{key + ':':<15} {value}")
    return 0


def _server_line(holder: dict[str, Any] | None) -> str:
    """Who holds the database's lock, for `collab stats`: a server, or a command writing the database."""
    if holder is None:
        return "not running"
    if "command" in holder:
        return f"not running; collab {holder['command']} (pid {holder.get('pid')}) is writing to it"
    return f"running, pid {holder.get('pid')}, {holder.get('url', 'starting')}"


def _rooms(args: argparse.Namespace) -> int:
    from ..http.api import document_json
    from ..store.engines import open_reader

    with open_reader(_db(args)) as reader:
        documents = [document_json(info) for info in reader.documents()]
    if args.json:
        print(json.dumps({"documents": documents}, ensure_ascii=False, indent=2))
        return 0
    columns = ("name", "size", "log_length", "history_size", "updated_at")
    widths = {column: max([len(column), *(len(str(doc[column])) for doc in documents)]) for column in columns}
    header: dict[str, object] = dict(zip(columns, columns, strict=True))
    for row in [header, *documents]:
        print("  ".join(str(row[column]).ljust(widths[column]) for column in columns).rstrip())
    return 0


def _webhooks(args: argparse.Namespace) -> int:
    from .webhooks import change_outbox, print_listing, read_listing

    if args.retry or args.forget:
        print(change_outbox(_db(args), retry=args.retry), file=sys.stderr)
        return 0
    print_listing(read_listing(_db(args), failed_only=args.failed), as_json=args.json)
    return 0


def _history(args: argparse.Namespace) -> int:
    from ..store.engines import open_reader
    from ..units import format_time

    with open_reader(_db(args)) as reader:
        if not reader.documents(args.name):
            raise NotFoundError(f"no document named {args.name!r}")
        points = reader.history(args.name)  # none for a compacted document when history is off
    for point in points:
        print(f"{format_time(point.at)}  {point.kind:<10}  {point.size} bytes")
    return 0


def _document_name(name: str, what: str) -> str:
    """`name` if it can name a document; the reason why not in terms of the command line, not of URLs."""
    from ..sync.names import validate_room_name

    if not name:
        raise InvalidRoomNameError(f"{what} is empty: name a document (or a prefix ending in /)")
    return validate_room_name(name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        status = int(args.handler(args))
        sys.stdout.flush()  # here, so that a reader gone early is caught below and not at exit
        return status
    except CollabError as error:
        print(f"collab {args.command}: {error}", file=sys.stderr)
        return exit_code_for(error)
    except BrokenPipeError:
        # `collab rooms | head`: the reader has what it wanted. Point stdout at /dev/null so that
        # the interpreter's last flush does not fail again, and exit as a process killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
