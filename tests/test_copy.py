"""`collab copy`: every document with its history between real SQLite files and real PostgreSQL databases."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from collab.errors import EXIT_CORRUPT, EXIT_STORAGE, EXIT_USAGE
from collab.filenames import MANIFEST

from .helpers import ROOT, StartServer, collab_cli, room_url, run_collab, servers_on, synced, text, write_backup

DOCUMENTS = ("diary", "notes/plan", "日本語 ノート")


async def write_source(db: Path) -> None:
    """Three documents written by clients of a real server: one compacted many times (with history), one
    rich (every root type, for the json export), one with a non-ASCII name; the server stopped at the end."""
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


def exported(db: str, out: Path, fmt: str) -> dict[str, bytes]:
    """Every document of `db` exported as `fmt`: file name -> bytes, and the manifest's document list."""
    collab_cli("export", "--db", db, "--format", fmt, "--out", str(out))
    files = {path.name: path.read_bytes() for path in out.iterdir() if path.name != MANIFEST}
    files[MANIFEST] = json.dumps(json.loads((out / MANIFEST).read_text())["documents"]).encode()
    return files


def histories(db: str) -> dict[str, str]:
    return {name: collab_cli("history", name, "--db", db).stdout for name in DOCUMENTS}


def listing(db: str) -> list[dict[str, object]]:
    documents: list[dict[str, object]] = json.loads(collab_cli("rooms", "--json", "--db", db).stdout)["documents"]
    return documents


def copy(source: str, target: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return collab_cli("copy", source, target, check=check)


def clear_line(result: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr, which must be one line and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.rstrip("\n")


async def test_sqlite_to_postgresql_to_sqlite_keeps_exports_and_history(tmp_path: Path, postgres_url: str) -> None:
    original = tmp_path / "original.db"
    await write_source(original)
    back = str(tmp_path / "back.db")
    assert len(histories(str(original))["diary"].splitlines()) >= 3, "compaction kept checkpoints"
    assert "checkpoint" in histories(str(original))["diary"]

    there = await asyncio.to_thread(copy, str(original), postgres_url)
    assert there.stdout == (f"copied 3 document(s) from {original} to {postgres_url}: 3 new, 0 merged, 0 unchanged\n")
    await asyncio.to_thread(copy, postgres_url, back)

    for fmt in ("txt", "json"):
        assert exported(back, tmp_path / f"back-{fmt}", fmt) == exported(
            str(original), tmp_path / f"original-{fmt}", fmt
        )
    assert exported(postgres_url, tmp_path / "pg-json", "json") == exported(
        str(original), tmp_path / "original-json-2", "json"
    )
    assert histories(back) == histories(postgres_url) == histories(str(original))
    assert listing(back) == listing(str(original)), "sizes, log lengths and times verbatim"


async def test_copying_twice_changes_nothing(tmp_path: Path, database: str) -> None:
    source = tmp_path / "source.db"
    await write_source(source)
    first = await asyncio.to_thread(copy, str(source), database)
    assert first.stdout.endswith(": 3 new, 0 merged, 0 unchanged\n")
    stored, history = listing(database), histories(database)

    second = await asyncio.to_thread(copy, str(source), database)
    assert second.stdout.endswith(": 0 new, 0 merged, 3 unchanged\n")
    assert sorted(second.stderr.splitlines()) == sorted(f"copied {name!r}: unchanged" for name in DOCUMENTS)
    assert listing(database) == stored, "no row added: the same sizes, log lengths and times"
    assert histories(database) == history


def independent_backup(path: Path, typed: str) -> Path:
    """A `.ydoc` of `typed` by a client of its own: merging it with another such document keeps both."""
    doc: Doc = Doc()
    doc.get("content", type=Text).insert(0, typed)
    path.write_bytes(doc.get_update())
    return path


def test_copy_merges_into_a_document_the_target_has(tmp_path: Path, database: str) -> None:
    source = str(tmp_path / "source.db")
    collab_cli(
        "import", str(independent_backup(tmp_path / "s.ydoc", "from the source. ")), "--name", "notes", "--db", source
    )
    collab_cli("import", str(write_backup(tmp_path / "only.ydoc", "only here")), "--name", "only", "--db", source)
    collab_cli(
        "import", str(independent_backup(tmp_path / "t.ydoc", "from the target. ")), "--name", "notes", "--db", database
    )

    result = copy(source, database)
    assert sorted(result.stderr.splitlines()) == ["copied 'notes': merged", "copied 'only': new, 1 row"]
    assert result.stdout.endswith(": 1 new, 1 merged, 0 unchanged\n")
    merged = collab_cli("export", "--db", database, "--out", "-", "notes").stdout
    assert sorted([merged[:17], merged[17:]]) == ["from the source. ", "from the target. "], merged
    assert collab_cli("export", "--db", database, "--out", "-", "only").stdout == "only here"

    again = copy(source, database)
    assert again.stdout.endswith(": 0 new, 0 merged, 2 unchanged\n")
    assert collab_cli("export", "--db", database, "--out", "-", "notes").stdout == merged


async def test_copy_into_a_database_a_server_holds_goes_through_it(
    tmp_path: Path, start_server: StartServer, db_path: Path
) -> None:
    source = tmp_path / "source.db"
    await write_source(source)
    server = await start_server(commit_interval=0.01)
    lock_file = db_path.with_name(db_path.name + ".lock")
    held = lock_file.read_bytes()
    async with synced(room_url(server, "diary")) as watcher:
        result = await run_collab("copy", str(source), str(db_path))
        await watcher.wait_until(lambda: str(text(watcher)) == "Tuesday. Wednesday. Thursday. Friday.")
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"collab copy: a server holds {db_path}: merging each document's current state through it, "
        "without its history (stop the server to copy history)"
    )
    assert sorted(lines[1:]) == sorted(f"copied {name!r}: merged" for name in DOCUMENTS)
    assert result.stdout.endswith(": 0 new, 3 merged, 0 unchanged\n")
    assert lock_file.read_bytes() == held, "the server's lock is left as it was"
    again = await run_collab("copy", str(source), str(db_path))
    assert again.stdout.endswith(": 0 new, 0 merged, 3 unchanged\n")
    assert again.stderr.count("without its history") == 1


async def test_a_terminal_gets_a_bar_redrawn_in_place(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    await write_source(source)
    controller, terminal = pty.openpty()
    try:
        process = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "collab", "copy", str(source), str(tmp_path / "target.db")],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        os.close(terminal)
        drawn = b""
        while select.select([controller], [], [], 5)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal side is closed and everything was read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
    assert process.returncode == 0 and process.stdout.endswith(": 3 new, 0 merged, 0 unchanged\n")
    frames = drawn.decode().replace("\r\n", "\n").split("\r")
    assert frames[0] == ""
    assert frames[1].startswith("[" + "." * 30 + "] 0/3 documents, 0.0 MiB")
    assert frames[-1].startswith("[" + "#" * 30 + "] 3/3 documents, ") and frames[-1].endswith(" MiB\n")
    assert len(frames) == 5, "drawn once before the first document and once after each"


def test_refusals_are_one_line_with_their_exit_code(tmp_path: Path, database: str) -> None:
    source = tmp_path / "source.db"
    collab_cli("import", str(write_backup(tmp_path / "a.ydoc", "a")), "--name", "a", "--db", str(source))
    spelled_otherwise = f"{tmp_path}/../{tmp_path.name}/./source.db"
    cases = [
        (str(source), spelled_otherwise, EXIT_USAGE, f"{source} is both the source and the target"),
        (database, database, EXIT_USAGE, "is both the source and the target: name two databases"),
        ("memory:", database, EXIT_USAGE, "the source memory: lives inside its server only"),
        (str(source), "memory:", EXIT_USAGE, "the target memory: keeps nothing once this command ends"),
        (str(tmp_path / "none.db"), database, EXIT_STORAGE, f"no database at {tmp_path / 'none.db'}"),
    ]
    for source_db, target_db, code, message in cases:
        result = copy(source_db, target_db, check=False)
        assert (result.returncode, result.stdout) == (code, ""), (source_db, target_db, result.stderr)
        assert clear_line(result).startswith("collab copy: ") and message in result.stderr, result.stderr
    assert not (tmp_path / "none.db").exists()


def test_a_password_is_never_printed(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    user = parts.username or "postgres"
    with_password = urlunsplit(parts._replace(netloc=f"{user}:hunter2@{parts.hostname}:{parts.port or 5432}"))
    result = copy(with_password, with_password, check=False)
    assert result.returncode == EXIT_USAGE
    assert "hunter2" not in result.stderr and f"{user}:***@" in clear_line(result)


def test_a_corrupt_source_row_stops_the_copy_naming_it(tmp_path: Path, database: str) -> None:
    source = tmp_path / "source.db"
    collab_cli("import", str(write_backup(tmp_path / "a.ydoc", "fine")), "--name", "broken", "--db", str(source))
    with sqlite3.connect(source) as conn:
        conn.execute("INSERT INTO updates (doc_id, created_at, data) VALUES (1, 1e9, x'deadbeef')")
    result = copy(str(source), database, check=False)
    assert result.returncode == EXIT_CORRUPT and result.stdout == ""
    assert clear_line(result).startswith(
        "collab copy: document 'broken': update 2 of 2 (stored 2001-09-09T01:46:40.000Z) does not decode ("
    )
    assert json.loads(collab_cli("rooms", "--json", "--db", database).stdout)["documents"] == []
