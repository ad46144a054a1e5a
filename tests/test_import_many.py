"""`collab import` of a whole backup: an export directory (its manifest names every document, long names
included) or several files, into a fresh database or through a running server; refusals in one line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

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
    stored_text,
    synced,
    text,
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
    ],
)
async def test_a_manifest_that_cannot_be_followed_is_refused_in_one_line(
    tmp_path: Path, manifest: object, said: str
) -> None:
    backup = tmp_path / "backup"
    backup.mkdir()
    write_backup(backup / "x.ydoc", "x")
    (backup / MANIFEST).write_text(json.dumps(manifest))
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
