"""`collab restore NAME --at TIME`: on the database directly (through the rooms a server has, with no one in them),
or through a running server (its clients see the restore at once); refusals, each one clear line. The HTTP API's
side is tests/test_restore.py."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from pycrdt import Doc, Text

from collab.config import Settings
from collab.errors import EXIT_NOT_FOUND, EXIT_STORAGE, EXIT_USAGE
from collab.server.app import CollabServer
from collab.store.engines import open_reader, open_store
from collab.sync.moments import group_moments
from collab.sync.textdiff import edit_text
from collab.units import format_time

from .helpers import SECRET, StartServer, room_url, run_collab, stored_text, synced, text, token, with_token

PAUSE = 0.3


async def write_versions(db: str | Path, name: str, *versions: str) -> list[str]:
    """Store each of `versions` of `name` in turn (the text becomes it), a pause between, as a server would;
    the time that reads each back (`collab history`'s moments), oldest first."""
    store = open_store(Settings(db=str(db)))
    await store.start()
    try:
        doc: Doc = Doc()
        made: list[bytes] = []
        doc.observe(lambda event: made.append(event.update))
        for version in versions:
            with doc.transaction():
                edit_text(doc.get("content", type=Text), version)
            store.append(name, made.pop())
            await store.flush()
            await asyncio.sleep(PAUSE)
    finally:
        await store.close()
    with open_reader(str(db)) as reader:
        return [format_time(moment.at) for moment in group_moments(reader.history(name), gap=PAUSE / 2)]


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr, which must be one line and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    return result.stderr


async def test_restore_without_a_server(database: str) -> None:
    times = await write_versions(database, "notes/plan", "draft", "draft, then more", "something else")
    assert len(times) == 3
    result = await run_collab("restore", "--db", database, "notes/plan", "--at", times[0])
    assert result.stderr == f"restored 'notes/plan' to {times[0]} (database {database})\n"
    assert stored_text(database, "notes/plan") == "draft"
    with open_reader(database) as reader:  # a new change on top: nothing before it rewritten
        assert len(reader.history("notes/plan")) == 4
    again = await run_collab("restore", "--db", database, "notes/plan", "--at", times[2])  # the restore undone
    assert again.returncode == 0 and stored_text(database, "notes/plan") == "something else"


async def test_restore_through_a_running_server_is_seen_by_its_clients(server: CollabServer, db_path: Path) -> None:
    async with synced(room_url(server, "memo")) as ada:
        text(ada).insert(0, "kept")
        await server.store.flush()
        await asyncio.sleep(PAUSE)
        moment = time.time()
        await asyncio.sleep(PAUSE)
        text(ada).insert(4, " and lost")
        await server.store.flush()
        result = await run_collab("restore", "--db", str(db_path), "memo", "--at", format_time(moment))
        await ada.wait_until(lambda: str(text(ada)) == "kept", timeout=5)
    assert result.stderr == (f"restored 'memo' to {format_time(moment)} (server http://127.0.0.1:{server.port})\n")
    assert stored_text(db_path, "memo") == "kept"


async def test_refusals_are_one_clear_line_and_change_nothing(start_server: StartServer, db_path: Path) -> None:
    db = str(db_path)
    times = await write_versions(db, "kept", "v1", "v2")
    unknown = await run_collab("restore", "--db", db, "nope", "--at", "1m", check=False)
    assert unknown.returncode == EXIT_NOT_FOUND
    assert one_clear_line(unknown) == "collab restore: no document named 'nope'\n"
    early = await run_collab("restore", "--db", db, "kept", "--at", "1h", check=False)
    assert early.returncode == EXIT_NOT_FOUND
    assert one_clear_line(early).startswith("collab restore: document 'kept' did not exist yet at")
    bad_time = await run_collab("restore", "--db", db, "kept", "--at", "yesterday", check=False)
    assert bad_time.returncode == EXIT_USAGE and "not a time: 'yesterday'" in bad_time.stderr
    future = await run_collab("restore", "--db", db, "kept", "--at", "2999-01-01T00:00:00Z", check=False)
    assert future.returncode == EXIT_USAGE and "2999-01-01T00:00:00Z is in the future" in one_clear_line(future)
    past_any_year = await run_collab("restore", "--db", db, "kept", "--at", "9999-12-31T23:59:59-12:00", check=False)
    assert past_any_year.returncode == EXIT_USAGE and "after the year 9999" in one_clear_line(past_any_year)
    no_time = await run_collab("restore", "--db", db, "kept", check=False)
    assert no_time.returncode == EXIT_USAGE and "--at" in no_time.stderr
    empty = await run_collab("restore", "--db", db, "", "--at", "1m", check=False)
    assert empty.returncode == EXIT_USAGE and one_clear_line(empty).startswith("collab restore: NAME is empty")
    missing = await run_collab("restore", "--db", str(db_path.parent / "none.db"), "kept", "--at", "1m", check=False)
    assert missing.returncode == EXIT_STORAGE and "no database at" in one_clear_line(missing)
    assert not (db_path.parent / "none.db").exists()
    assert stored_text(db, "kept") == "v2"
    server = await start_server(auth_secret=SECRET)  # through a server: the same refusals, and tokens
    secret = {"COLLAB_AUTH_SECRET": SECRET}
    early = await run_collab("restore", "--db", db, "kept", "--at", "1h", env=secret, check=False)
    assert early.returncode == EXIT_NOT_FOUND and "did not exist yet at" in one_clear_line(early)
    unknown = await run_collab("restore", "--db", db, "nope", "--at", "1m", env=secret, check=False)
    assert unknown.returncode == EXIT_NOT_FOUND
    assert one_clear_line(unknown) == "collab restore: no document named 'nope'\n"
    unable = await run_collab("restore", "--db", db, "kept", "--at", "1m", check=False)
    assert unable.returncode == EXIT_USAGE
    assert one_clear_line(unable).startswith("collab restore: the server requires tokens: set COLLAB_AUTH_SECRET")
    assert stored_text(db, "kept") == "v2"
    async with synced(with_token(room_url(server, "kept"), token("kept"))) as ada:
        restored = await run_collab("restore", "--db", db, "kept", "--at", times[0], env=secret)
        assert restored.returncode == 0
        await ada.wait_until(lambda: str(text(ada)) == "v1", timeout=5)
