"""`collab copy SOURCE TARGET`: every document, with its history, from one database into another.

The source is read through one `Reader`, so the copy is of one consistent moment even while a server
keeps writing it. Every row is walked (`collab.sync.yupdate`, `strict=False` as for any stored row)
before pycrdt or the target sees it: a corrupt row stops the copy, naming the document and the row.

Into a database no server holds (its lock taken meanwhile), a document the target lacks is restored
row for row with its times, so its history points come out identical; one the target has receives,
as one append, the part of the source's state it lacks (a CRDT merge), and nothing if it lacks
nothing: copying twice changes nothing, and a copy that failed halfway is finished by running it
again. Into a database a running server holds, each document's current state is merged through
that server, as `collab import` does, so its clients see the copy at once; history cannot travel
that way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, Protocol, TextIO, TypeVar

from pycrdt import Doc, get_state

from ..config import Settings
from ..errors import ConfigError, CorruptDocumentError, InvalidUpdateError, StorageError
from ..formats import doc_from_records, doc_from_updates
from ..store import DocumentDump, Engine, Reader, WriteOp
from ..store.engines import Backend, locate, redacted
from ..sync.yupdate import check_update as walk_update
from ..units import format_time
from .importer import ServerApi, driver_errors, server_address

__all__ = ["Copied", "LineProgress", "Progress", "TerminalProgress", "copy_databases"]

Outcome = Literal["new", "merged", "unchanged"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Copied:
    """What copying one document did."""

    name: str
    outcome: Outcome
    """new: restored with its history; merged: the target lacked part of it; unchanged: it lacked nothing."""
    rows: int
    """Rows read from the source."""
    size: int
    """Bytes read from the source."""


class Progress(Protocol):
    """Where `copy_databases` reports how far it is (the command line draws a bar or writes lines)."""

    def begin(self, documents: int) -> None: ...

    def note(self, text: str) -> None:
        """Something the user must know once (history not copied through a server)."""
        ...

    def copied(self, document: Copied) -> None: ...

    def end(self) -> None:
        """Called once, also when the copy fails, before anything else is printed."""
        ...


def copy_databases(source: str, target: str, progress: Progress) -> list[Copied]:
    """Copy every document of `source` into `target` (`--db` values); what became of each, by name.

    Raises `ConfigError` for a `memory:` database or the same database twice, `StorageError` if the
    source does not exist, `CorruptDocumentError` for a row that does not decode, `DatabaseInUseError`
    if a server is starting on the target or another copy is writing it.
    """
    source_db, target_db = locate(source), locate(target)
    if not source_db.persistent:
        raise ConfigError("the source memory: lives inside its server only: there is nothing to copy from it")
    if not target_db.persistent:
        raise ConfigError("the target memory: keeps nothing once this command ends: copy into a file or a server")
    if source_db.same_as(target_db):
        raise ConfigError(f"{redacted(source)} is both the source and the target: name two databases")
    settings = Settings.load({"db": target})
    with source_db.reader() as reader:
        names = [info.name for info in reader.documents()]
        progress.begin(len(names))
        server = target_db.running_server()
        if server is not None:
            server_address(settings, server)  # a copy or an import writing it now: refused before saying "merging"
            progress.note(
                f"a server holds {redacted(target)}: merging each document's current state through it, "
                "without its history (stop the server to copy history)"
            )
            return _through_server(reader, names, settings, server, progress)
        return _into_database(reader, names, target_db, settings, progress)


def _read(reader: Reader, name: str) -> DocumentDump:
    """`name`'s rows, each walked; `CorruptDocumentError` names a bad row by its place among those of its kind
    ("stored update 2 of 5"): a dump carries no row ids, and ids differ between databases anyway."""
    dump = reader.dump(name)
    if dump is None:  # listed a moment ago in the same read: the engine broke its promise
        raise StorageError(f"document {name!r} is listed but cannot be read")
    counts = Counter(row.kind for row in dump.rows)
    numbers: Counter[str] = Counter()
    for row in dump.rows:
        numbers[row.kind] += 1
        try:
            walk_update(row.data, strict=False)  # before pycrdt reads it, as for any stored row
            get_state(row.data)  # what yrs refuses that the walk lets through
        except (InvalidUpdateError, ValueError) as error:
            what = f"stored {row.kind} {numbers[row.kind]} of {counts[row.kind]} ({format_time(row.created_at)})"
            raise CorruptDocumentError(f"document {name!r}: {what} does not decode ({error})") from error
    return dump


def _current(dump: DocumentDump) -> Doc:
    """The document as it is now: its snapshot and log (checkpoints are history), all walked by `_read`."""
    try:
        return doc_from_updates([row.data for row in dump.rows if row.kind != "checkpoint"])
    except ValueError as error:
        raise CorruptDocumentError(f"document {dump.name!r} does not decode: {error}") from error


def _copied(dump: DocumentDump, outcome: Outcome) -> Copied:
    return Copied(dump.name, outcome, len(dump.rows), sum(len(row.data) for row in dump.rows))


def _through_server(
    reader: Reader, names: list[str], settings: Settings, server: dict[str, Any], progress: Progress
) -> list[Copied]:
    """Merge each document's state through `server`'s HTTP API, each stored before the next is read."""
    api = ServerApi.of(settings, server)
    copied = []
    for name in names:
        dump = _read(reader, name)
        merged = api.merge(name, _current(dump).get_update())
        copied.append(_copied(dump, "merged" if merged.changed else "unchanged"))
        progress.copied(copied[-1])
    return copied


def _into_database(
    reader: Reader, names: list[str], target: Backend, settings: Settings, progress: Progress
) -> list[Copied]:
    """Write into `target`'s engine directly, holding its lock so that no server starts meanwhile.

    One transaction per document: not the server's group-commit store, which retries forever, since
    a command must finish; what a failure leaves done is merged, not duplicated, by the next run.
    """
    lock = target.lock()
    lock.acquire()
    try:
        lock.describe(command="copy")  # so that serve, import and stats say a copy is writing, not a server starting
        engine = target.engine(settings)
        _engine_call(engine.open)
        try:
            copied = []
            for name in names:
                dump = _read(reader, name)
                copied.append(_copied(dump, _engine_call(_write, engine, dump)))
                progress.copied(copied[-1])
            return copied
        finally:
            engine.close()
    finally:
        lock.release()


def _write(engine: Engine, dump: DocumentDump) -> Outcome:
    """Restore `dump` if the target lacks the document, else append the part of its state the target lacks, if any.

    Only a merge decodes the document: a restore writes the walked rows as they are.
    """
    if not engine.documents(dump.name):
        engine.restore(dump)
        return "new"
    stored: Doc = doc_from_records(dump.name, engine.load(dump.name))  # a target row that would crash pycrdt
    source = _current(dump)
    before = stored.get_update()
    lacking = source.get_update(stored.get_state())
    stored.apply_update(lacking)
    if stored.get_update() == before:  # `lacking` always holds the whole delete set: only applying it tells
        return "unchanged"
    engine.commit([WriteOp("append", dump.name, lacking, time.time())])
    return "merged"


def _engine_call(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`call(...)`, with the driver's own errors (a locked or unwritable database) as one `StorageError`.

    Only those: anything else is a bug, and its traceback must show.
    """
    try:
        return call(*args, **kwargs)
    except driver_errors() as error:
        raise StorageError(f"cannot write to the target: {type(error).__name__}: {error}") from error


class LineProgress:
    """One line per document, for a log or a pipe: `copied 3/40 'notes': new, 12 rows`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.total = 0
        self.done = 0

    def begin(self, documents: int) -> None:
        self.total = documents

    def note(self, text: str) -> None:
        print(f"collab copy: {text}", file=self.stream, flush=True)

    def copied(self, document: Copied) -> None:
        self.done += 1
        plural = "" if document.rows == 1 else "s"
        rows = f", {document.rows} row{plural}" if document.outcome == "new" else ""
        where = f"{self.done}/{self.total}"
        print(f"copied {where} {document.name!r}: {document.outcome}{rows}", file=self.stream, flush=True)

    def end(self) -> None:
        pass


class TerminalProgress:
    """A one-line bar redrawn in place: `[#######.............]  3/10 documents, 1.2 MiB`."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.total = 0
        self.done = 0
        self.size = 0
        self.drawn = False

    def begin(self, documents: int) -> None:
        self.total = documents
        self._draw()

    def note(self, text: str) -> None:
        self._clear()
        print(f"collab copy: {text}", file=self.stream, flush=True)
        self._draw()

    def copied(self, document: Copied) -> None:
        self.done += 1
        self.size += document.size
        self._draw()

    def end(self) -> None:
        if self.drawn:
            print(file=self.stream, flush=True)  # the bar stays, finished, on its own line
            self.drawn = False

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // self.total if self.total else self.WIDTH
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} documents, {_megabytes(self.size)}")
        self.stream.flush()
        self.drawn = True

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")  # erase the bar, so that the note starts a clean line
            self.drawn = False


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
