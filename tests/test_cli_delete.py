"""`collab delete` and `collab rename`: through a running server (its clients closed with 4410/4411), or on the
database directly; the confirmation on a terminal and the refusal without one; not found, conflicts, tokens.
The HTTP API's side is tests/test_delete_rename.py, the store's tests/test_store_delete.py."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pycrdt import Doc, Text

from collab.cli.manage import Documents, preview, select_documents
from collab.config import Settings
from collab.errors import DOCUMENT_DELETED, DOCUMENT_RENAMED, EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_USAGE, NotFoundError
from collab.server.app import CollabServer
from collab.store.engines import open_store

from .helpers import ROOT, SECRET, StartServer, room_url, run_collab, stored_text, synced, text, token, with_token


async def seed(db: str | Path, *names: str) -> None:
    """Store each of `names`, its text its own name, through the store a server uses."""
    store = open_store(Settings(db=str(db)))
    await store.start()
    try:
        for name in names:
            doc: Doc = Doc()
            doc.get("content", type=Text).insert(0, name)
            store.append(name, doc.get_update())
    finally:
        await store.close()


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr, which must be one line and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    return result.stderr


def test_a_preview_lists_twenty_names_then_how_many_more() -> None:
    names = [f"doc{index:02}" for index in range(25)]
    lines = preview(names)
    assert lines[:2] == ["  doc00", "  doc01"] and len(lines) == 21 and lines[-1] == "  ... and 5 more"
    assert preview(names[:3]) == ["  doc00", "  doc01", "  doc02"]


def test_names_must_be_stored_and_globs_must_match() -> None:
    available = ["a", "notes/x", "notes/y", "notes [old]"]
    assert select_documents(available, ["notes/*", "a", "notes/x"]) == ["notes/x", "notes/y", "a"]
    assert select_documents(available, ["notes [old]"]) == ["notes [old]"]  # a name that reads as a glob
    with pytest.raises(NotFoundError, match="no document named 'b'"):
        select_documents(available, ["a", "b"])
    with pytest.raises(NotFoundError, match="no document matches 'z\\*'"):
        select_documents(available, ["z*"])


async def test_delete_a_name_and_a_glob_without_a_server(database: str) -> None:
    await seed(database, "meeting", "scratch/one", "scratch/two", "notes/kept")
    result = await run_collab("delete", "--yes", "--db", database, "meeting", "scratch/*")
    assert result.stderr.splitlines() == [
        "deleted 'meeting'",
        "deleted 'scratch/one'",
        "deleted 'scratch/two'",
        f"deleted 3 document(s) and their history (database {database})",
    ]
    for name in ("meeting", "scratch/one", "scratch/two"):
        assert stored_text(database, name) is None
    assert stored_text(database, "notes/kept") == "notes/kept"


async def test_rename_without_a_server(database: str) -> None:
    await seed(database, "drafts/plan", "other")
    result = await run_collab("rename", "--db", database, "drafts/plan", "notes/plan")
    assert result.stderr == f"renamed 'drafts/plan' to 'notes/plan' (database {database})\n"
    assert stored_text(database, "drafts/plan") is None and stored_text(database, "notes/plan") == "drafts/plan"
    refused = await run_collab("rename", "--db", database, "notes/plan", "other", check=False)
    assert refused.returncode == EXIT_FAILURE
    assert one_clear_line(refused).startswith("collab rename: a document named 'other' exists already")
    assert stored_text(database, "notes/plan") == "drafts/plan" and stored_text(database, "other") == "other"


async def test_refusals_change_nothing(db_path: Path) -> None:
    await seed(db_path, "kept", "notes/kept")
    db = str(db_path)
    unasked = await run_collab("delete", "--db", db, "kept", check=False)  # stdin and stderr are pipes here
    assert unasked.returncode == EXIT_USAGE
    assert "add --yes" in one_clear_line(unasked)
    unknown = await run_collab("delete", "--yes", "--db", db, "kept", "nope", check=False)
    assert unknown.returncode == EXIT_NOT_FOUND
    assert one_clear_line(unknown) == "collab delete: no document named 'nope'\n"
    unmatched = await run_collab("delete", "--yes", "--db", db, "drafts/*", check=False)
    assert unmatched.returncode == EXIT_NOT_FOUND
    assert one_clear_line(unmatched) == "collab delete: no document matches 'drafts/*'\n"
    missing = await run_collab("rename", "--db", db, "nope", "new", check=False)
    assert missing.returncode == EXIT_NOT_FOUND
    assert one_clear_line(missing) == "collab rename: no document named 'nope'\n"
    empty = await run_collab("rename", "--db", db, "kept", "", check=False)
    assert empty.returncode == EXIT_USAGE
    assert one_clear_line(empty).startswith("collab rename: NEW is empty")
    assert stored_text(db, "kept") == "kept" and stored_text(db, "notes/kept") == "notes/kept"


async def test_no_database_is_not_created(tmp_path: Path) -> None:
    for command in (["delete", "--yes", "x"], ["rename", "x", "y"]):
        result = await run_collab(*command, "--db", str(tmp_path / "none.db"), check=False)
        assert result.returncode == 5 and "no database at" in one_clear_line(result)
    assert not (tmp_path / "none.db").exists()


def on_a_terminal(argv: list[str], answer: bytes) -> tuple[int, str]:
    """Run `collab ARGV` with stdin and stderr on a pseudo-terminal; answer its question; its status and what it
    showed there."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "collab", *argv],
        stdin=follower,
        stderr=follower,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
        env={key: value for key, value in os.environ.items() if not key.startswith("COLLAB_")},
    )
    os.close(follower)
    shown, answered, deadline = b"", False, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the process ended and closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            if not answered and b"[y/N] " in shown:
                os.write(leader, answer)
                answered = True
            if process.poll() is not None and not ready:
                break
        return process.wait(timeout=10), shown.decode().replace("\r\n", "\n")
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_on_a_terminal_it_lists_and_asks_first(db_path: Path) -> None:
    await seed(db_path, *(f"old/{index:02}" for index in range(22)), "kept")
    argv = ["delete", "--db", str(db_path), "old/*"]
    status, shown = await asyncio.to_thread(on_a_terminal, argv, b"n\n")
    assert status == EXIT_FAILURE
    assert "  old/00\n" in shown and "  old/19\n" in shown and "old/20" not in shown and "... and 2 more\n" in shown
    assert "Delete 22 document(s) and their history? [y/N] " in shown and "nothing deleted" in shown
    assert stored_text(db_path, "old/00") == "old/00"
    status, shown = await asyncio.to_thread(on_a_terminal, argv, b"yes\n")
    assert status == 0, shown
    assert "deleted 'old/21'" in shown and stored_text(db_path, "old/00") is None
    assert stored_text(db_path, "kept") == "kept"


async def test_delete_through_a_running_server_closes_its_clients(server: CollabServer, db_path: Path) -> None:
    async with synced(room_url(server, "notes/plan")) as ada:
        text(ada).insert(0, "soon gone")
        async with synced(room_url(server, "notes/kept")) as bob:
            text(bob).insert(0, "stays")
            await server.store.flush()
            result = await run_collab("delete", "--yes", "--db", str(db_path), "notes/plan")
            assert await ada.wait_closed() == (DOCUMENT_DELETED, "document deleted")
            await bob.resync()  # a round trip after the delete: still connected
            assert bob.close_code is None
    assert result.stderr.splitlines()[-1] == (
        f"deleted 1 document(s) and their history (server http://127.0.0.1:{server.port})"
    )
    assert stored_text(db_path, "notes/plan") is None and stored_text(db_path, "notes/kept") == "stays"


async def test_rename_through_a_running_server_closes_the_old_name_s_clients(
    server: CollabServer, db_path: Path
) -> None:
    async with synced(room_url(server, "draft")) as ada:
        text(ada).insert(0, "v1")
        await server.store.flush()
        result = await run_collab("rename", "--db", str(db_path), "draft", "final v1")
        assert await ada.wait_closed() == (DOCUMENT_RENAMED, "renamed to final v1")
    assert result.stderr == f"renamed 'draft' to 'final v1' (server http://127.0.0.1:{server.port})\n"
    assert stored_text(db_path, "draft") is None and stored_text(db_path, "final v1") == "v1"
    async with synced(room_url(server, "other")) as bob:
        text(bob).insert(0, "x")
        await server.store.flush()
    refused = await run_collab("rename", "--db", str(db_path), "final v1", "other", check=False)
    assert refused.returncode == EXIT_FAILURE
    assert one_clear_line(refused).startswith("collab rename: a document named 'other' exists already")
    assert stored_text(db_path, "final v1") == "v1"


async def test_a_document_gone_meanwhile_is_reported_and_the_rest_still_go(
    start_server: StartServer, db_path: Path
) -> None:
    """`select_documents` read the names a moment before; someone deleted one since. Directly, then through a
    server (which answers 404)."""
    await seed(db_path, "a", "b", "c", "d")
    gone: list[str] = []

    def done(name: str, error: NotFoundError | None) -> None:
        if error is not None:
            gone.append(name)

    await asyncio.to_thread(Documents(Settings(db=str(db_path))).delete, ["a", "ghost", "b"], done)
    assert gone == ["ghost"] and stored_text(db_path, "a") is None and stored_text(db_path, "b") is None
    server = await start_server()
    documents = await asyncio.to_thread(Documents, Settings(db=str(db_path)))
    assert documents.via == f"server http://127.0.0.1:{server.port}"
    await asyncio.to_thread(documents.delete, ["c", "ghost", "d"], done)
    assert gone == ["ghost", "ghost"] and stored_text(db_path, "c") is None and stored_text(db_path, "d") is None


async def test_a_secured_server_needs_the_secret(start_server: StartServer, db_path: Path) -> None:
    server = await start_server(auth_secret=SECRET)
    async with synced(with_token(room_url(server, "team/a"), token("team/a"))) as ada:
        text(ada).insert(0, "a")
    async with synced(with_token(room_url(server, "team/b"), token("team/b"))) as bob:
        text(bob).insert(0, "b")
    await server.store.flush()
    db = str(db_path)
    unable = await run_collab("delete", "--yes", "--db", db, "team/a", check=False)
    assert unable.returncode == EXIT_USAGE
    assert one_clear_line(unable).startswith("collab delete: the server requires tokens: set COLLAB_AUTH_SECRET")
    wrong = await run_collab("delete", "--yes", "--db", db, "team/a", env={"COLLAB_AUTH_SECRET": "w" * 20}, check=False)
    assert wrong.returncode == EXIT_FAILURE
    assert one_clear_line(wrong).startswith("collab delete: the server refused the token")
    assert stored_text(db, "team/a") == "a"
    secret = {"COLLAB_AUTH_SECRET": SECRET}
    await run_collab("rename", "--db", db, "team/a", "team/c", env=secret)
    assert stored_text(db, "team/a") is None and stored_text(db, "team/c") == "a"
    await run_collab("rename", "--db", db, "team/c", "elsewhere", env=secret)  # a token for each name
    assert stored_text(db, "team/c") is None and stored_text(db, "elsewhere") == "a"
    await run_collab("delete", "--yes", "--db", db, "team/*", env=secret)
    assert stored_text(db, "team/b") is None and stored_text(db, "elsewhere") == "a"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_a_server_serving_tls_is_reached_over_https(
    start_server: StartServer, db_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    await seed(db_path, "secure")
    server = await start_server(certfile=cert, keyfile=key)
    result = await run_collab("delete", "--yes", "--db", str(db_path), "secure")
    assert result.stderr.splitlines()[-1].endswith(f"(server https://127.0.0.1:{server.port})")
    assert stored_text(db_path, "secure") is None
