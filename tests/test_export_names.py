"""Export file names: a document's own name can never produce, or overwrite, another's generated one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from collab.filenames import GENERATED_PREFIX, MANIFEST, file_name_for, is_generated, name_from_file_name
from collab.server.app import CollabServer

from .helpers import room_url, run_collab, stored_text, synced, text, wait_for

LONG = "長い名前/" * 30  # 420 bytes: too long for a file name, so it gets a generated one
FORGED = GENERATED_PREFIX + hashlib.sha256(LONG.encode()).hexdigest()[:32]


def test_the_forged_name_no_longer_collides() -> None:
    assert is_generated(file_name_for(LONG, "txt"))
    assert file_name_for(FORGED, "txt") != file_name_for(LONG, "txt")
    assert not is_generated(file_name_for(FORGED, "txt"))
    assert name_from_file_name(file_name_for(FORGED, "txt")) == FORGED


@pytest.mark.parametrize("name", ["_long-abc", "_", "__init__", "_LONG-x", "a_b", "._x", "%5F"])
def test_names_starting_with_an_underscore_are_escaped_and_reversible(name: str) -> None:
    file_name = file_name_for(name, "ydoc")
    assert not is_generated(file_name) and not file_name.lower().startswith("_")
    assert name_from_file_name(file_name) == name


def test_files_from_older_exports_still_import_under_their_names() -> None:
    assert name_from_file_name("_notes.ydoc") == "_notes", "unescaped leading _ of exports before the fix"


async def test_export_writes_the_long_and_the_forged_document_apart_and_import_restores_both(
    server: CollabServer, db_path: Path, tmp_path: Path
) -> None:
    contents = {LONG: "the long one's text", FORGED: "the forger's text"}
    async with synced(room_url(server, "bystander")) as bystander:
        text(bystander).insert(0, "unrelated")
        for name, body in contents.items():
            async with synced(room_url(server, name)) as writer:
                text(writer).insert(0, body)
                await writer.resync()
        await wait_for(lambda: all(stored_text(db_path, name) == body for name, body in contents.items()))
        out = tmp_path / "out"
        await run_collab("export", "--db", str(db_path), "--out", str(out), "--format", "ydoc", LONG, FORGED)
        manifest = json.loads((out / MANIFEST).read_text())
        files = {entry["name"]: entry["file"] for entry in manifest["documents"]}
        assert len(set(files.values())) == 2 and sorted(path.name for path in out.glob("*.ydoc")) == sorted(
            files.values()
        )
        txt = tmp_path / "txt"
        await run_collab("export", "--db", str(db_path), "--out", str(txt), "--format", "txt", LONG, FORGED)
        txt_files = {e["name"]: e["file"] for e in json.loads((txt / MANIFEST).read_text())["documents"]}
        assert {name: (txt / file).read_text() for name, file in txt_files.items()} == contents
        fresh = tmp_path / "fresh.db"
        for file in out.glob("*.ydoc"):
            await run_collab("import", str(file), "--db", str(fresh))
        assert {name: stored_text(fresh, name) for name in contents} == contents
        generated = tmp_path / files[LONG]  # away from its manifest
        generated.write_bytes((out / files[LONG]).read_bytes())
        refused = await run_collab("import", str(generated), "--db", str(fresh), check=False)
        assert refused.returncode == 2 and "pass --name" in refused.stderr, "no manifest: no guessing"
        await bystander.resync()
        assert str(text(bystander)) == "unrelated"
