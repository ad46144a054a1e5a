"""`collab copy`: every document with its history between real SQLite files and real PostgreSQL databases.

Most commands run in this process (`collab_in_process`): a new interpreter per command made this file take
minutes. A subprocess is kept where the process itself is under test: a row that would crash pycrdt, a terminal.
The middle of a copy is reached through its `Progress`, called after each document is written (`Midway`).
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from collab.cli.copy import Copied, copy_databases
from collab.cli.importer import import_backups, read_backups
from collab.config import Settings
from collab.errors import EXIT_CORRUPT, EXIT_IN_USE, EXIT_STORAGE, EXIT_USAGE, DatabaseInUseError, StorageError
from collab.filenames import MANIFEST
from collab.store import DocumentInfo, HistoryPoint, WriteOp
from collab.store.engines import locate, open_reader, redacted
from collab.sync.yupdate import MAX_CLOCK
from collab.units import format_time

from . import craft
from .helpers import (
    ROOT,
    collab_cli,
    collab_in_process,
    insert_by_hand,
    one_line,
    room_url,
    servers_on,
    stored_text,
    synced,
    text,
    with_password,
    write_backup,
)

DOCUMENTS = ("diary", "notes/plan", "日本語 ノート")
POSTSCRIPT = "P.S. "
"""Imported into "diary" once its server stopped: the one row the source's log keeps."""


def independent_update(typed: str) -> bytes:
    """A document whose "content" is `typed` by a client of its own: merged with another such one, both stay."""
    doc: Doc = Doc()
    doc.get("content", type=Text).insert(0, typed)
    return doc.get_update()


async def write_source(db: Path) -> None:
    """Three documents written by clients of a real server: one compacted many times (with history), one
    rich (every root type, for the json export), one with a non-ASCII name. Then, the server stopped (which
    compacts every log away), a backup imported into "diary": a log row, and an "update" history point."""
    async with servers_on(db) as start:
        server = await start(commit_interval=0.01, compact_after=4, unload_after=0)
        async with synced(room_url(server, "diary")) as writer:
            for word in ("Monday. ", "Tuesday. ", "Wednesday. ", "Thursday. ", "Friday."):
                for char in word:
                    text(writer).insert(len(str(text(writer))), char)
                    await writer.resync()  # a row each, so compaction has a log to keep as checkpoints
            del text(writer)[0:8]
            await writer.resync()
        async with synced(room_url(server, "notes/plan")) as writer:
            with writer.doc.transaction():
                text(writer).insert(0, "# Plan\n\nShip it. Grüße 👋\n")
                writer.doc.get("meta", type=Map)["owner"] = "ada"
                writer.doc.get("items", type=Array).extend(["one", 2, True])
                fragment = writer.doc.get("prosemirror", type=XmlFragment)
                paragraph = fragment.children.append(XmlElement("paragraph", {"align": "left"}))
                paragraph.children.append(XmlText("hello"))
            await writer.resync()
            text(writer).insert(0, "draft: ")
            await writer.resync()
        async with synced(room_url(server, "日本語 ノート")) as writer:
            text(writer).insert(0, "こんにちは")
            await writer.resync()
    backups, _ = read_backups([write_backup(db.parent / "postscript.ydoc", POSTSCRIPT)], "diary")
    [imported] = import_backups(Settings(db=str(db)), backups)
    assert imported.changed and imported.via.startswith("database ")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite source written once for the module (seconds of typing); tests only read it."""
    db = tmp_path_factory.mktemp("copy-source") / "source.db"
    asyncio.run(write_source(db))
    return db


def exported(db: str, out: Path, fmt: str) -> dict[str, bytes]:
    """Every document of `db` exported as `fmt`: file name -> bytes, and the manifest's document list."""
    collab_in_process("export", "--db", db, "--format", fmt, "--out", str(out))
    files = {path.name: path.read_bytes() for path in out.iterdir() if path.name != MANIFEST}
    files[MANIFEST] = json.dumps(json.loads((out / MANIFEST).read_text())["documents"]).encode()
    return files


def exported_at(db: str, name: str, at: float) -> str:
    """`name`'s text as `collab export --at` gives it; `at` rounded up to the millisecond the flag takes."""
    return collab_in_process("export", "--db", db, "--out", "-", "--at", format_time(at + 0.001), name).stdout


def histories(db: str | Path) -> dict[str, list[HistoryPoint]]:
    with open_reader(db) as reader:
        return {name: reader.history(name) for name in DOCUMENTS}


def listing(db: str | Path) -> list[DocumentInfo]:
    """Every document's size, log length and times: equal listings mean rows and times copied verbatim."""
    with open_reader(db) as reader:
        return reader.documents()


def names_in(db: str | Path) -> list[str]:
    """The documents in the order a copy goes through them."""
    return [info.name for info in listing(db)]


def row_counts(db: str | Path) -> list[tuple[int, str, int]]:
    """Each document's place in a copy, name, and how many rows it has (snapshot, log and checkpoints)."""
    with open_reader(db) as reader:
        dumps = [reader.dump(info.name) for info in reader.documents()]
    return [(number, dump.name, len(dump.rows)) for number, dump in enumerate(dumps, 1) if dump is not None]


def copy(source: str | Path, target: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return collab_in_process("copy", str(source), target, check=check)


class Midway:
    """A `Progress` that runs `act` once, right after the first document is written into the target: a test's
    way into the middle of a copy, without timing."""

    def __init__(self, act: Callable[[], None]) -> None:
        self.act = act
        self.copied_names: list[str] = []

    def begin(self, documents: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def copied(self, document: Copied) -> None:
        self.copied_names.append(document.name)
        if len(self.copied_names) == 1:
            self.act()

    def end(self) -> None:
        pass


async def test_sqlite_to_postgresql_to_sqlite_keeps_exports_and_history(
    source: Path, tmp_path: Path, postgres_url: str
) -> None:
    back = str(tmp_path / "back.db")
    diary = histories(source)["diary"]
    kinds = [point.kind for point in diary]
    assert kinds.count("checkpoint") >= 2 and kinds[-1] == "update", "compaction kept checkpoints; a log row"
    assert listing(source)[0].log_length == 1

    there = await asyncio.to_thread(copy, source, postgres_url)
    assert there.stdout == f"copied 3 document(s) from {source} to {postgres_url}: 3 new, 0 merged, 0 unchanged\n"
    await asyncio.to_thread(copy, postgres_url, back)
    twice = await asyncio.to_thread(copy, postgres_url, back)
    assert twice.stdout.endswith(": 0 new, 0 merged, 3 unchanged\n")

    for fmt in ("txt", "json"):
        assert exported(back, tmp_path / f"back-{fmt}", fmt) == exported(str(source), tmp_path / f"source-{fmt}", fmt)
    assert exported(postgres_url, tmp_path / "pg-json", "json") == exported(
        str(source), tmp_path / "source-json-2", "json"
    )
    assert histories(back) == histories(postgres_url) == histories(source)
    assert listing(back) == listing(postgres_url) == listing(source), "sizes, log lengths and times verbatim"

    before, update = diary[-2], diary[-1]
    for point, has_postscript in ((before, False), (update, True)):
        expected = exported_at(str(source), "diary", point.at)
        assert (POSTSCRIPT in expected) is has_postscript, (point, expected)
        assert exported_at(postgres_url, "diary", point.at) == exported_at(back, "diary", point.at) == expected


async def test_copying_twice_changes_nothing(source: Path, database: str) -> None:
    first = await asyncio.to_thread(copy, source, database)
    assert first.stdout.endswith(": 3 new, 0 merged, 0 unchanged\n")
    names = names_in(source)
    assert first.stderr.splitlines() == [
        f"copied {number}/3 {name!r}: new, {rows} row{'s' * (rows != 1)}" for number, name, rows in row_counts(source)
    ]
    stored, history = listing(database), histories(database)

    second = await asyncio.to_thread(copy, source, database)
    assert second.stdout.endswith(": 0 new, 0 merged, 3 unchanged\n")
    assert second.stderr.splitlines() == [
        f"copied {number}/3 {name!r}: unchanged" for number, name in enumerate(names, 1)
    ]
    assert listing(database) == stored, "no row added: the same sizes, log lengths and times"
    assert histories(database) == history


def test_copy_merges_into_a_document_the_target_has(tmp_path: Path, database: str) -> None:
    source = str(tmp_path / "source.db")
    backups = {
        "s": tmp_path / "s.ydoc",
        "t": tmp_path / "t.ydoc",
    }
    backups["s"].write_bytes(independent_update("from the source. "))
    backups["t"].write_bytes(independent_update("from the target. "))
    collab_in_process("import", str(backups["s"]), "--name", "notes", "--db", source)
    collab_in_process(
        "import", str(write_backup(tmp_path / "only.ydoc", "only here")), "--name", "only", "--db", source
    )
    collab_in_process("import", str(backups["t"]), "--name", "notes", "--db", database)

    result = copy(source, database)
    assert result.stderr.splitlines() == ["copied 1/2 'notes': merged", "copied 2/2 'only': new, 1 row"]
    assert result.stdout.endswith(": 1 new, 1 merged, 0 unchanged\n")
    merged = collab_in_process("export", "--db", database, "--out", "-", "notes").stdout
    assert sorted([merged[:17], merged[17:]]) == ["from the source. ", "from the target. "], merged
    assert collab_in_process("export", "--db", database, "--out", "-", "only").stdout == "only here"

    again = copy(source, database)
    assert again.stdout.endswith(": 0 new, 0 merged, 2 unchanged\n")
    assert collab_in_process("export", "--db", database, "--out", "-", "notes").stdout == merged


async def test_copy_into_a_database_a_server_holds_goes_through_it(source: Path, database: str) -> None:
    names = names_in(source)
    async with servers_on(database) as start:
        server = await start(commit_interval=0.01)
        held = locate(database).running_server()
        assert held is not None and "url" in held
        copied_diary = stored_text(source, "diary")
        async with synced(room_url(server, "diary")) as watcher:
            result = await asyncio.to_thread(copy, source, database)
            await watcher.wait_until(lambda: str(text(watcher)) == copied_diary)
        lines = result.stderr.splitlines()
        assert lines[0] == (
            f"collab copy: a server holds {redacted(database)}: merging each document's current state through it, "
            "without its history (stop the server to copy history)"
        )
        assert lines[1:] == [f"copied {number}/3 {name!r}: merged" for number, name in enumerate(names, 1)]
        assert result.stdout.endswith(": 0 new, 3 merged, 0 unchanged\n")
        assert locate(database).running_server() == held, "the server's lock is left as it was"
        again = await asyncio.to_thread(copy, source, database)
        assert again.stdout.endswith(": 0 new, 0 merged, 3 unchanged\n")
        assert again.stderr.count("without its history") == 1


def test_a_copy_holds_the_target_and_says_so(source: Path, database: str, tmp_path: Path) -> None:
    """While a copy writes the target, no server starts on it, and serve, import, stats and another copy say a
    copy is writing it (not "a server starting")."""
    said: dict[str, str] = {}
    late = write_backup(tmp_path / "late.ydoc", "imported meanwhile")

    def meanwhile() -> None:
        with pytest.raises(DatabaseInUseError) as serve_refused:
            locate(database).lock().acquire()  # what `collab serve` does first
        said["serve"] = str(serve_refused.value)
        said["stats"] = collab_in_process("stats", "--db", database).stdout
        refused = collab_in_process("import", str(late), "--name", "late", "--db", database, check=False)
        assert refused.returncode == EXIT_IN_USE, refused.stderr
        said["import"] = one_line(refused.stderr)
        second = collab_in_process("copy", str(source), database, check=False)
        assert second.returncode == EXIT_IN_USE, second.stderr
        said["copy"] = one_line(second.stderr)

    copied = copy_databases(str(source), database, Midway(meanwhile))
    assert len(copied) == 3
    writing = f"collab copy (pid {os.getpid()}"
    assert f"is in use: {writing}" in said["serve"] and said["serve"].endswith(") is writing to it"), said
    assert f"server:         not running; {writing}) is writing to it\n" in said["stats"], said
    for command in ("import", "copy"):
        expected = f"collab {command}: {writing}) is writing to {redacted(database)}; try again once it is done\n"
        assert said[command] == expected, said
    assert stored_text(database, "late") is None
    lock = locate(database).lock()
    lock.acquire()  # released when the copy ended
    lock.release()
    assert "server:         not running\n" in collab_in_process("stats", "--db", database).stdout


def test_a_copy_is_of_one_moment_while_the_source_is_written(source: Path, database: str, tmp_path: Path) -> None:
    """A server keeps committing to the source between two documents: the copy has none of it."""
    copy_databases(str(source), database, Midway(lambda: None))  # `database` is the source here
    before = {name: stored_text(database, name) for name in DOCUMENTS}
    target = str(tmp_path / "target.db")
    written: list[str] = []

    def commit_to_the_source(progress: Midway) -> None:
        pending = next(name for name in DOCUMENTS if name not in progress.copied_names)
        engine = locate(database).engine(Settings(db=database))
        engine.open()
        try:
            now = time.time()
            update = independent_update("written meanwhile ")
            engine.commit([WriteOp("append", pending, update, now), WriteOp("append", "late", update, now)])
        finally:
            engine.close()
        written.append(pending)

    progress = Midway(lambda: commit_to_the_source(progress))
    copied = copy_databases(database, target, progress)
    assert [item.name for item in copied] == names_in(source) and len(written) == 1
    assert "written meanwhile" in str(stored_text(database, written[0])) and stored_text(database, "late")
    assert {name: stored_text(target, name) for name in DOCUMENTS} == before
    assert names_in(target) == names_in(source), "not the document created meanwhile"


def test_a_copy_that_failed_halfway_is_finished_by_running_it_again(source: Path, database: str) -> None:
    def fail() -> None:
        raise StorageError("the target went away")

    with pytest.raises(StorageError, match="the target went away"):
        copy_databases(str(source), database, Midway(fail))
    assert len(listing(database)) == 1

    again = copy(source, database)
    assert again.stdout.endswith(": 2 new, 0 merged, 1 unchanged\n")
    assert listing(database) == listing(source) and histories(database) == histories(source)


def test_a_terminal_gets_a_bar_redrawn_in_place(source: Path, tmp_path: Path) -> None:
    """In a subprocess: only a real process has a terminal for stderr. Read while it runs, as a terminal is."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "collab", "copy", str(source), str(tmp_path / "target.db")],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            cwd=ROOT,
        )
        os.close(terminal)
        drawn = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the process closed the terminal (it exited) and everything was read
                break
            if not chunk:
                break
            drawn += chunk
        stdout, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(controller)
    assert process.returncode == 0 and stdout.endswith(": 3 new, 0 merged, 0 unchanged\n")
    frames = drawn.decode().replace("\r\n", "\n").split("\r")
    assert frames[0] == ""
    assert frames[1].startswith("[" + "." * 30 + "] 0/3 documents, 0.0 MiB")
    assert frames[-1].startswith("[" + "#" * 30 + "] 3/3 documents, ") and frames[-1].endswith(" MiB\n")
    assert len(frames) == 5, "drawn once before the first document and once after each"


def test_refusals_are_one_line_with_their_exit_code(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.db"
    spelled_otherwise = f"{source.parent}/../{source.parent.name}/./{source.name}"
    cases = [
        (str(source), spelled_otherwise, EXIT_USAGE, f"{source} is both the source and the target"),
        ("memory:", str(target), EXIT_USAGE, "the source memory: lives inside its server only"),
        (str(source), "memory:", EXIT_USAGE, "the target memory: keeps nothing once this command ends"),
        (str(tmp_path / "none.db"), str(target), EXIT_STORAGE, f"no database at {tmp_path / 'none.db'}"),
    ]
    for source_db, target_db, code, message in cases:
        result = copy(source_db, target_db, check=False)
        assert (result.returncode, result.stdout) == (code, ""), (source_db, target_db, result.stderr)
        assert one_line(result.stderr).startswith("collab copy: ") and message in result.stderr, result.stderr
    assert not (tmp_path / "none.db").exists() and not target.exists()


def test_refusals_on_either_engine(tmp_path: Path, database: str) -> None:
    # The same database spelt otherwise: postgres:// and an extra parameter; for SQLite, another path to it.
    respelt = (
        database.replace("postgresql://", "postgres://", 1) + ("&" if "?" in database else "?") + "connect_timeout=5"
        if database.startswith("postgresql:")
        else str(tmp_path / "." / Path(database).name)
    )
    cases = [
        (database, database, EXIT_USAGE, "is both the source and the target: name two databases"),
        (database, respelt, EXIT_USAGE, "is both the source and the target: name two databases"),
        ("memory:", database, EXIT_USAGE, "the source memory: lives inside its server only"),
        (str(tmp_path / "none.db"), database, EXIT_STORAGE, f"no database at {tmp_path / 'none.db'}"),
    ]
    for source_db, target_db, code, message in cases:
        result = copy(source_db, target_db, check=False)
        assert (result.returncode, result.stdout) == (code, ""), (source_db, target_db, result.stderr)
        assert one_line(result.stderr).startswith("collab copy: ") and message in result.stderr, result.stderr
    assert not (tmp_path / "none.db").exists()


def test_a_password_is_never_printed(postgres_url: str) -> None:
    password = urlsplit(postgres_url).password or "hunter2"  # a server that checks passwords wants its own
    url = with_password(postgres_url, password)
    result = copy(url, url, check=False)
    assert result.returncode == EXIT_USAGE
    assert password not in result.stderr and f"{urlsplit(url).username}:***@" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("rows", "number"),
    [
        ([craft.nested_any(30_000)], 2),  # overflows pycrdt's stack: the process dies
        ([craft.text_update(7, 0, "XYZ"), craft.text_update(7, MAX_CLOCK, "ab")], 3),  # wraps a clock: a panic
    ],
    ids=["deep", "wrapped"],
)
def test_a_row_that_would_crash_pycrdt_stops_the_copy_naming_it(
    tmp_path: Path, database: str, rows: list[bytes], number: int
) -> None:
    """In a subprocess: were the walk skipped, the crash would end the copy's process, not the test run."""
    collab_in_process("import", str(write_backup(tmp_path / "a.ydoc", "fine")), "--name", "broken", "--db", database)
    for data in rows:
        insert_by_hand(database, "broken", data)
    target = str(tmp_path / "target.db")
    result = collab_cli("copy", database, target, check=False)
    assert (result.returncode, result.stdout) == (EXIT_CORRUPT, ""), result.stderr
    assert one_line(result.stderr).startswith(
        f"collab copy: document 'broken': stored update {number} of {number} (1970-01-01T00:00:00.000Z)"
        " does not decode ("
    )
    assert listing(target) == []
