"""`collab import` of a whole backup: an export directory (its manifest names every document, long names
included) or several files, into a fresh database or through a running server; refusals in one line."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from pathlib import Path

import pytest

from collab.cli import importer
from collab.cli.importer import server_tls
from collab.client import Client
from collab.errors import EXIT_FAILURE, EXIT_USAGE
from collab.filenames import MANIFEST, is_generated
from collab.server.app import CollabServer
from collab.store.engines import open_reader
from collab.sync.names import MAX_NAME_LENGTH

from .helpers import (
    SECRET,
    ServerProcess,
    StartServer,
    contents,
    doc_of,
    one_line,
    room_url,
    row_counts,
    run_collab,
    run_in_process,
    self_signed_certificate,
    stored_text,
    synced,
    text,
    wait_for,
    wait_stored,
    write_backup,
    write_rich_document,
)

LONG = "x" * MAX_NAME_LENGTH  # the longest name there is: its file name would be too long, so it is generated
TEXTS = {"notes/2024/plan": "the plan", LONG: "the long one", "a b": "spaced", "日本語/ノート": "ノート"}


async def exported_backup(server: CollabServer, db_path: Path, out: Path) -> dict[str, object]:
    """Every document of TEXTS and a rich one ("rich", every kind of root), exported as ydoc to `out`; the rich
    one's contents."""
    for name, body in TEXTS.items():
        async with synced(room_url(server, name)) as writer:
            text(writer).insert(0, body)
            await writer.resync()
    rich = await write_rich_document(room_url(server, "rich"))
    for name, body in TEXTS.items():
        await wait_stored(db_path, name, body)
    await server.store.flush()
    await run_in_process("export", "--db", str(db_path), "--format", "ydoc", "--out", str(out))
    files = {entry["name"]: entry["file"] for entry in json.loads((out / MANIFEST).read_text())["documents"]}
    assert is_generated(files[LONG]) and "/" not in files["notes/2024/plan"], files
    return rich


async def test_an_export_directory_restores_every_name_into_a_fresh_database(
    server: CollabServer, db_path: Path, tmp_path: Path
) -> None:
    rich = await exported_backup(server, db_path, tmp_path / "backup")
    fresh = tmp_path / "fresh.db"
    result = await run_in_process("import", str(tmp_path / "backup"), "--db", str(fresh))
    assert {name: stored_text(fresh, name) for name in TEXTS} == TEXTS, "the long name too, from the manifest"
    with open_reader(fresh) as reader:
        assert sorted(info.name for info in reader.documents()) == sorted([*TEXTS, "rich"]), "no _long-<hash>"
        assert contents(doc_of(record.data for record in reader.records("rich"))) == rich, "every kind of root"
    lines = result.stderr.splitlines()
    assert len(lines) == len(TEXTS) + 2 and lines[-1] == "imported 5 file(s): 5 merged, 0 already contained"
    assert f"{tmp_path / 'backup'}/notes%2F2024%2Fplan.ydoc: merged into 'notes/2024/plan' (database {fresh})" in lines
    again = await run_in_process("import", str(tmp_path / "backup"), "--db", str(fresh))
    assert again.stderr.splitlines()[-1] == "imported 5 file(s): 0 merged, 5 already contained"
    assert row_counts(fresh, LONG)["updates"] == 1, "the second import wrote nothing"


async def test_an_export_directory_restores_through_a_running_server(
    start_server: StartServer, db_path: Path, tmp_path: Path
) -> None:
    source = await start_server()
    rich = await exported_backup(source, db_path, tmp_path / "backup")
    fresh = tmp_path / "fresh.db"
    target = await start_server(db=fresh)
    async with synced(room_url(target, LONG)) as watcher:
        result = await run_in_process("import", str(tmp_path / "backup"), "--db", str(fresh))
        await watcher.wait_until(lambda: str(text(watcher)) == TEXTS[LONG])  # connected clients see it at once
    assert result.stderr.splitlines()[-1] == "imported 5 file(s): 5 merged, 0 already contained"
    assert f"(server ws://127.0.0.1:{target.port})" in result.stderr
    assert {name: stored_text(fresh, name) for name in TEXTS} == TEXTS, "reported once stored, not once sent"
    for name, body in TEXTS.items():
        async with synced(room_url(target, name)) as reader:
            assert str(text(reader)) == body, name
    async with synced(room_url(target, "rich")) as reader:
        assert contents(reader.doc) == rich


async def test_several_files_at_once_each_under_its_own_name(tmp_path: Path) -> None:
    files = [write_backup(tmp_path / "one.ydoc", "first"), write_backup(tmp_path / "team%2Ftwo.ydoc", "second")]
    also = write_backup(tmp_path / "again.ydoc", "more for the first")
    db = tmp_path / "a.db"
    result = await run_collab("import", *map(str, files), "--db", str(db))
    assert stored_text(db, "one") == "first" and stored_text(db, "team/two") == "second"
    assert result.stderr.splitlines()[-1] == "imported 2 file(s): 2 merged, 0 already contained"
    single = await run_collab("import", str(also), "--name", "one", "--db", str(db))
    assert one_line(single.stderr) == f"{also}: merged into 'one' (database {db})\n", "one file: one line, as ever"
    merged = stored_text(db, "one") or ""
    assert len(merged) == len("first" + "more for the first") and "more for the first" in merged


async def test_a_refused_token_stops_a_directory_import_at_once_in_one_line(db_path: Path, tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in ("a", "b", "c"):
        write_backup(backup / f"{name}.ydoc", f"text of {name}")
    server = ServerProcess(db_path, env={"COLLAB_AUTH_SECRET": SECRET}).start()
    try:
        started = time.monotonic()
        result = await run_collab(
            "import", str(backup), "--db", str(db_path), env={"COLLAB_AUTH_SECRET": "wrong" * 8}, check=False
        )
        took = time.monotonic() - started
    finally:
        server.stop()
    assert result.returncode == EXIT_FAILURE and took < 15, (result.returncode, took)
    assert one_line(result.stderr).startswith("collab import: the server refused the token: invalid token signature")
    assert all(stored_text(db_path, name) is None for name in ("a", "b", "c"))


async def test_nothing_is_written_when_one_file_of_many_is_bad(tmp_path: Path) -> None:
    good = write_backup(tmp_path / "good.ydoc", "fine")
    (tmp_path / "bad.ydoc").write_bytes(b"not yjs")
    db = tmp_path / "a.db"
    write_backup(tmp_path / "seed.ydoc", "seed")
    await run_collab("import", str(tmp_path / "seed.ydoc"), "--db", str(db))
    before = row_counts(db, "good")
    result = await run_collab("import", str(good), str(tmp_path / "bad.ydoc"), "--db", str(db), check=False)
    assert result.returncode == EXIT_FAILURE
    assert one_line(result.stderr).startswith(f"collab import: {tmp_path / 'bad.ydoc'}: not a Yjs update")
    assert row_counts(db, "good") == before and stored_text(db, "good") is None


@pytest.mark.parametrize(
    ("manifest", "said"),
    [
        ({"format": "txt", "documents": []}, "holds a txt export, which cannot be merged back"),
        ({"format": "ydoc", "documents": [{"name": "x", "file": "../x.ydoc"}]}, "lists '../x.ydoc' for 'x'"),
        ({"format": "ydoc", "documents": [{"name": "x", "file": "/etc/passwd"}]}, "lists '/etc/passwd' for 'x'"),
        ({"format": "ydoc", "documents": [{"name": 7, "file": "x.ydoc"}]}, "not a document name"),
        ({"format": "ydoc"}, "is not a manifest collab export wrote"),
        ([1, 2], "is not a manifest collab export wrote"),
        ({"format": "ydoc", "documents": [{"name": "x", "file": "x\x00.ydoc"}]}, "lists 'x\\x00.ydoc' for 'x'"),
        ("[" * 100_000, "is not a manifest collab export wrote: it is nested too deeply"),
    ],
)
async def test_a_manifest_that_cannot_be_followed_is_refused_in_one_line(
    tmp_path: Path, manifest: object, said: str
) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    write_backup(backup / "x.ydoc", "x")
    (backup / MANIFEST).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    result = await run_in_process("import", str(backup), "--db", str(tmp_path / "a.db"), check=False)
    assert result.returncode == EXIT_USAGE
    assert said in one_line(result.stderr)
    assert not (tmp_path / "a.db").exists()


async def test_a_document_the_export_could_not_read_is_reported_and_the_rest_restored(tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    write_backup(backup / "kept.ydoc", "kept")
    documents = [{"name": "kept", "file": "kept.ydoc"}, {"name": "broken", "file": None, "error": "row #3 is bad"}]
    (backup / MANIFEST).write_text(json.dumps({"format": "ydoc", "documents": documents}))
    db = tmp_path / "a.db"
    result = await run_in_process("import", str(backup), "--db", str(db), check=False)
    assert result.returncode == EXIT_FAILURE, "the backup is not whole"
    assert result.stderr.splitlines()[0] == "collab import: 'broken' is not in the backup: row #3 is bad"
    assert result.stderr.splitlines()[-1].endswith("; 1 listed document(s) not in the backup")
    assert stored_text(db, "kept") == "kept"


async def test_usage_mistakes_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cases = [
        (["import", str(tmp_path / "empty")], "holds no .ydoc files and no manifest.json"),
        (["import", str(tmp_path / "empty"), "--name", "x"], "--name names the document of one file"),
        (["import", str(write_backup(tmp_path / "a.ydoc", "a")), str(tmp_path / "a.ydoc"), "--name", "x"], "--name"),
        (["import"], "the following arguments are required: PATH"),
    ]
    for args, said in cases:
        result = await run_in_process(*args, "--db", str(tmp_path / "a.db"), check=False)
        assert result.returncode == EXIT_USAGE, (args, result.stderr)
        assert said in one_line(result.stderr), (args, result.stderr)


async def test_a_generated_file_name_beside_a_broken_manifest_reports_the_manifest(tmp_path: Path) -> None:
    """The manifest's error was swallowed, and the advice was to keep the manifest beside the file: it was."""
    generated = write_backup(tmp_path / "_long-0123456789abcdef.ydoc", "long")
    assert is_generated(generated.name)
    (tmp_path / MANIFEST).write_text("{not json")
    result = await run_in_process("import", str(generated), "--db", str(tmp_path / "a.db"), check=False)
    assert result.returncode == EXIT_USAGE
    assert f"{tmp_path / MANIFEST} is not a manifest collab export wrote" in one_line(result.stderr)


# Through a running server: its HTTP API, each document stored before it is reported.


async def test_a_busy_server_is_tried_again_until_it_takes_the_import(
    start_server: StartServer, tmp_path: Path
) -> None:
    """503 (here the rooms limit; a document being renamed, a store slow to confirm) is worth trying again,
    within the document's budget: a transient refusal stopped the import."""
    db = tmp_path / "busy.db"
    server = await start_server(db=db, max_rooms=1, unload_after=0)
    holder = await Client(room_url(server, "held"), reconnect=False).start()  # the one room there may be
    backup = write_backup(tmp_path / "notes.ydoc", "restored")
    importing = asyncio.create_task(run_in_process("import", str(backup), "--db", str(db), check=False))
    try:
        await wait_for(lambda: server.metrics.rejected.get("ServerBusyError") >= 1)
    finally:
        await holder.close()  # its room unloads: there is room for the import's
    result = await importing
    assert result.returncode == 0, result.stderr
    assert one_line(result.stderr) == f"{backup}: merged into 'notes' (server ws://127.0.0.1:{server.port})\n"
    assert stored_text(db, "notes") == "restored"


async def test_an_import_refused_halfway_keeps_what_it_merged_and_says_where_it_stopped(
    start_server: StartServer, tmp_path: Path
) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    write_backup(backup / "a.ydoc", "small")
    write_backup(backup / "b.ydoc", "too large " * 20_000)
    write_backup(backup / "c.ydoc", "never reached")
    db = tmp_path / "half.db"
    server = await start_server(db=db, max_document_size=10_000)
    result = await run_in_process("import", str(backup), "--db", str(db), check=False)
    lines = result.stderr.splitlines()
    assert result.returncode == EXIT_FAILURE and len(lines) == 2, result.stderr
    assert lines[0] == f"{backup / 'a.ydoc'}: merged into 'a' (server ws://127.0.0.1:{server.port})"
    assert lines[1].startswith(f"collab import: the server at ws://127.0.0.1:{server.port} refused 'b' (HTTP 413)")
    assert stored_text(db, "a") == "small", "stored before it was reported"
    assert stored_text(db, "b") is None and stored_text(db, "c") is None


async def test_an_import_through_a_tls_server_verifies_it_with_cafile(
    start_server: StartServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The wss:// path: a server on this machine is reached by an address its certificate may not name; with
    --cafile its certificate is verified, without it the import says it is not."""
    caplog.set_level(logging.WARNING, "collab.cli")
    cert, key = self_signed_certificate(tmp_path)
    db = tmp_path / "tls.db"
    server = await start_server(db=db, certfile=cert, keyfile=key)
    where = f"wss://127.0.0.1:{server.port}"
    verified = await run_in_process(
        "import", str(write_backup(tmp_path / "one.ydoc", "verified")), "--db", str(db), "--cafile", str(cert)
    )
    assert one_line(verified.stderr).endswith(f"merged into 'one' (server {where})\n")
    assert "not verified" not in caplog.text
    unverified = await run_in_process("import", str(write_backup(tmp_path / "two.ydoc", "unverified")), "--db", str(db))
    assert unverified.stderr.endswith(f"merged into 'two' (server {where})\n")
    assert f"TLS certificate of the server at {where} not verified: it listens on this machine" in caplog.text
    other = tmp_path / "other"
    other.mkdir()
    stranger, _ = self_signed_certificate(other)  # a CA that did not sign the server's certificate
    refused = await run_in_process(
        "import", str(write_backup(tmp_path / "three.ydoc", "no")), "--db", str(db), "--cafile", str(stranger),
        check=False,
    )  # fmt: skip
    assert refused.returncode == EXIT_FAILURE
    assert "certificate verify failed" in one_line(refused.stderr) and "pass --cafile" in refused.stderr
    assert (stored_text(db, "one"), stored_text(db, "two"), stored_text(db, "three")) == (
        "verified",
        "unverified",
        None,
    )


def test_tls_to_a_server_is_verified_unless_it_is_on_a_loopback_address(tmp_path: Path) -> None:
    """On PostgreSQL the lock may name another machine, and a token is minted for it: verified as any client
    verifies a server, name included."""
    elsewhere = server_tls("wss://collab.internal:1234")
    assert elsewhere.verify_mode == ssl.CERT_REQUIRED and elsewhere.check_hostname
    for loopback in ("wss://127.0.0.1:1234", "wss://[::1]:1234", "wss://localhost:1234"):
        assert server_tls(loopback).verify_mode == ssl.CERT_NONE, loopback
    cert, _ = self_signed_certificate(tmp_path)
    with_ca = server_tls("wss://127.0.0.1:1234", cert)
    assert with_ca.verify_mode == ssl.CERT_REQUIRED and not with_ca.check_hostname


async def test_a_server_that_stays_busy_stops_the_import_after_the_budget_saying_why(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried again for SERVER_TIMEOUT seconds (60; 1.5 here), then one line naming the last answer; the server
    said the update was not applied (a 503's `applied`), so the line does not say it may have been."""
    monkeypatch.setattr(importer, "SERVER_TIMEOUT", 1.5)
    db = tmp_path / "full.db"
    server = await start_server(db=db, max_rooms=1)
    async with synced(room_url(server, "held")):  # the one room there may be, held throughout
        backup = write_backup(tmp_path / "notes.ydoc", "never in")
        started = time.monotonic()
        result = await run_in_process("import", str(backup), "--db", str(db), check=False)
    assert result.returncode == EXIT_FAILURE and time.monotonic() - started < 10
    said = one_line(result.stderr)
    where = f"ws://127.0.0.1:{server.port}"
    assert said.startswith(f"collab import: the server at {where} did not take 'notes' within 1.5 s; HTTP 503: ")
    assert "limit of 1 documents open" in said and "may have been merged" not in said, said
    assert stored_text(db, "notes") is None
