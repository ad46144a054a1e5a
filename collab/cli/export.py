"""`collab export`: documents from a database file to files, now or as they were.

The database is opened read-only and read in one transaction, so the export is
one consistent moment even while a server keeps writing (WAL), it never blocks
that server, and it includes updates still in the log, not only snapshots.
Updates accepted in the last commit window (`--commit-interval`) may not be on
disk yet and are then not included.

Every stored row is checked before pycrdt reads it (`room.check_records`). A
document that cannot be read is reported, in the result and in the manifest
(`"error"`, no file), and the export carries on with the others; the CLI says
which on stderr and exits 1 once the rest is written.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ExportError, NotFoundError, StorageError
from ..filenames import MANIFEST, file_name_for
from ..formats import FORMATS, check_existed, doc_from_records, render
from ..store import DocumentInfo, Reader
from ..store.engines import open_reader
from ..units import format_time

__all__ = ["Exported", "export", "select_names"]


@dataclass(frozen=True, slots=True)
class Exported:
    name: str
    file: str | None
    bytes: int
    error: str | None = None
    """Why the document could not be exported (then `file` is None); None when it was."""


def select_names(available: list[str], patterns: list[str]) -> list[str]:
    """The names matching any pattern (exact names or shell globs); every pattern must match something."""
    if not patterns:
        return list(available)
    chosen: dict[str, None] = {}
    for pattern in patterns:
        matches = [name for name in available if name == pattern or fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise NotFoundError(f"no document matches {pattern!r}")
        chosen.update(dict.fromkeys(matches))
    return list(chosen)


def export(db: str | Path, out: str, fmt: str, patterns: list[str], at: float | None = None) -> list[Exported]:
    """Write the selected documents to directory `out` (or stdout if `out` is '-'); return what was written."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    with open_reader(db) as reader:
        infos = {info.name: info for info in reader.documents()}
        names = select_names(list(infos), patterns)
        if at is not None:
            if len(names) == 1:
                check_existed(infos[names[0]], at)
            names = [name for name in names if infos[name].created_at <= at]
            if not names:
                raise NotFoundError(f"no selected document existed at {format_time(at)}")
        if out == "-" and len(names) != 1:
            raise ConfigError(f"--out - writes one document, but {len(names)} match; name exactly one")
        rendered: dict[str, bytes] = {}
        failed: dict[str, Exported] = {}
        for name in names:
            try:
                rendered[name] = _render(reader, infos[name], fmt, at)
            except StorageError as error:
                if out == "-":
                    raise
                failed[name] = Exported(name, None, 0, str(error))
    if out == "-":
        [(name, data)] = rendered.items()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return [Exported(name, None, len(data))]
    return _write_files(Path(out), fmt, names, rendered, failed, infos, at)


def _render(reader: Reader, info: DocumentInfo, fmt: str, at: float | None) -> bytes:
    """One document in `fmt`; raises `StorageError` (`CorruptDocumentError` naming the row) if it cannot be read."""
    doc = doc_from_records(info.name, reader.records(info.name, at))
    return render(doc, fmt, info)


def _write_files(
    out: Path,
    fmt: str,
    names: list[str],
    rendered: dict[str, bytes],
    failed: dict[str, Exported],
    infos: dict[str, DocumentInfo],
    at: float | None,
) -> list[Exported]:
    """Write each rendered document and the manifest, listing `names` in order; `failed` could not be read."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".collab-export-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ExportError(f"cannot write to {out}: {error.strerror or error}") from error
    extension = FORMATS[fmt][0]
    written = []
    for name in names:
        failure = failed.get(name)
        if failure is not None:
            written.append(failure)
            continue
        data, file_name = rendered[name], file_name_for(name, extension)
        _write_atomically(out / file_name, data)
        written.append(Exported(name, file_name, len(data)))
    manifest = {
        "format": fmt,
        "exported_at": format_time(time.time()),
        "at": None if at is None else format_time(at),
        "documents": [
            {
                "name": item.name,
                "file": item.file,
                "bytes": item.bytes,
                "size": infos[item.name].size,
                "updated_at": format_time(infos[item.name].updated_at),
                **({"error": item.error} if item.error is not None else {}),
            }
            for item in written
        ],
    }
    _write_atomically(out / MANIFEST, (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode())
    return written


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
