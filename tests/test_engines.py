"""What every engine does alike, run against each: the in-memory engine, SQLite on a real file, and
PostgreSQL in a fresh database of a real server.

The in-memory engine keeps what SQLite and PostgreSQL keep with history off (a snapshot and the log since),
so all are driven here with the same chosen timestamps and must answer the same. Then: choosing an engine
by `--db`, and the read-only `Reader` the command line uses. What servers and the CLI do on both
persistent engines is in test_store_contract.py and test_persistence.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pycrdt import Doc, Text, merge_updates

from collab.config import Settings
from collab.errors import ConfigError, HistoryError, StorageError
from collab.store import Engine, WriteOp
from collab.store.engines import InMemory, PostgresDatabase, SQLiteFile, locate, open_reader, open_store, redacted
from collab.store.history import Retention
from collab.store.memory import MemoryEngine
from collab.store.postgres import PostgresEngine
from collab.store.sqlite import SQLiteEngine

from .helpers import collab_in_process, keystrokes, text_of

T0 = 1_800_000_000.0
NO_HISTORY = Retention(0, 0, 0)


def text_at(engine: Engine, name: str, at: float | None = None) -> str:
    return text_of(record.data for record in engine.load(name, at))


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    opened: Engine
    if request.param == "memory":
        opened = MemoryEngine()
    elif request.param == "sqlite":
        opened = SQLiteEngine(tmp_path / "c.db", retention=NO_HISTORY)
    else:
        # Built as `collab serve --db postgresql://…` builds it, with history off like the others.
        url: str = request.getfixturevalue("postgres_url")
        opened = locate(url).engine(Settings(db=url, history_recent=0, history_hourly=0, history_daily=0))
        assert isinstance(opened, PostgresEngine)
    opened.open()
    yield opened
    opened.close()


def append(name: str, update: bytes, at: float) -> WriteOp:
    return WriteOp("append", name, update, at)


def test_an_unknown_document_is_empty_everywhere(engine: Engine) -> None:
    assert engine.load("nobody") == []
    assert engine.load("nobody", T0) == []
    assert engine.documents() == []
    assert engine.documents("nobody") == []


def test_a_batch_is_loaded_back_in_order_and_marked_checked(engine: Engine) -> None:
    updates = keystrokes("hello")
    engine.commit([append("a", update, T0 + n) for n, update in enumerate(updates)])
    engine.commit([append("b", keystrokes("x")[0], T0 + 9)])
    records = engine.load("a")
    assert [record.kind for record in records] == ["update"] * 5
    assert [record.data for record in records] == updates
    assert all(record.checked for record in records)
    assert len({record.id for record in records}) == 5
    assert text_at(engine, "a") == "hello" and text_at(engine, "b") == "x"


def test_compaction_replaces_snapshot_and_log_by_the_snapshot(engine: Engine) -> None:
    updates = keystrokes("abcdef")
    engine.commit([append("doc", update, T0 + n) for n, update in enumerate(updates[:3])])
    engine.commit([WriteOp("compact", "doc", merge_updates(*updates[:3]), T0 + 10)])
    engine.commit([append("doc", update, T0 + 20 + n) for n, update in enumerate(updates[3:])])
    engine.commit([WriteOp("compact", "doc", merge_updates(*updates[:5]), T0 + 30)])
    engine.commit([append("doc", updates[5], T0 + 40)])
    records = engine.load("doc")
    assert [record.kind for record in records] == ["snapshot", "update"]
    assert text_at(engine, "doc") == "abcdef"
    [info] = engine.documents("doc")
    assert (info.name, info.log_length, info.created_at, info.updated_at) == ("doc", 1, T0, T0 + 40)
    assert info.size == sum(len(record.data) for record in records)


def test_loading_at_a_moment_reaches_back_to_the_last_compaction(engine: Engine) -> None:
    updates = keystrokes("abcd")
    engine.commit([append("doc", update, T0 + n) for n, update in enumerate(updates[:2])])
    assert [text_at(engine, "doc", T0 + n) for n in range(2)] == ["a", "ab"]
    engine.commit([WriteOp("compact", "doc", merge_updates(*updates[:2]), T0 + 10)])
    engine.commit([append("doc", update, T0 + 20 + n) for n, update in enumerate(updates[2:])])
    assert text_at(engine, "doc", T0 + 10) == "ab"
    assert text_at(engine, "doc", T0 + 20) == "abc"
    assert text_at(engine, "doc", T0 + 99) == "abcd"
    with pytest.raises(HistoryError, match="no history is kept"):
        engine.load("doc", T0 + 1)


def test_documents_are_listed_by_name(engine: Engine) -> None:
    for n, name in enumerate(["zeta", "alpha", "mid/dle"]):
        engine.commit([append(name, keystrokes(name)[0], T0 + n)])
    assert [info.name for info in engine.documents()] == ["alpha", "mid/dle", "zeta"]
    [alpha] = engine.documents("alpha")
    assert alpha.created_at == alpha.updated_at == T0 + 1 and alpha.log_length == 1


def test_what_is_committed_survives_closing_and_reopening(database: str) -> None:
    """The one thing the engines differ in: SQLite and PostgreSQL keep documents past `close`, memory does not."""
    first = locate(database).engine(Settings(db=database))
    first.open()
    first.commit([append("doc", update, T0 + n) for n, update in enumerate(keystrokes("kept"))])
    first.close()
    again = locate(database).engine(Settings(db=database))
    again.open()
    try:
        assert text_at(again, "doc") == "kept"
    finally:
        again.close()


# Choosing an engine by --db.


def test_a_path_or_a_url_names_its_engine() -> None:
    assert locate("data/collab.db") == SQLiteFile(Path("data/collab.db"))
    assert locate("/srv/collab.db") == SQLiteFile(Path("/srv/collab.db"))
    assert locate("sqlite:///srv/collab.db") == SQLiteFile(Path("/srv/collab.db"))
    assert locate("SQLite:///srv/collab.db") == SQLiteFile(Path("/srv/collab.db")), "a scheme in any case"
    assert locate("sqlite:relative.db") == SQLiteFile(Path("relative.db"))
    assert locate("./odd:name.db") == SQLiteFile(Path("odd:name.db"))
    assert locate(Path("./odd:name.db")) == SQLiteFile(Path("odd:name.db")), "a Path is a file, whatever its name"
    assert locate(Path("/srv/collab.db")) == SQLiteFile(Path("/srv/collab.db"))
    assert locate("memory:") == locate("MEMORY:") == InMemory()
    assert locate("sqlite:///srv/collab.db").persistent and not locate("memory:").persistent
    assert locate("postgresql://collab:pw@db:5432/collab") == PostgresDatabase("postgresql://collab:pw@db:5432/collab")
    assert locate("Postgres://collab@db/collab") == PostgresDatabase("postgresql://collab@db/collab"), "one spelling"
    assert locate("postgresql:///collab").persistent, "host, port and user from PG* variables or libpq's defaults"


def test_what_no_engine_takes_is_refused_naming_the_forms_it_takes() -> None:
    accepted = (
        r"use a file path \(\./ before a name with a colon\), sqlite:///abs/path\.db, sqlite:rel/path\.db,"
        r" postgresql://user:password@host:port/dbname or memory:"
    )
    with pytest.raises(ConfigError, match="no engine for mysql:; " + accepted):
        locate("mysql://collab@db/collab")
    with pytest.raises(ConfigError, match=r"'odd:name\.db': collab has no engine for odd:"):
        locate("odd:name.db")
    with pytest.raises(ConfigError, match="names no file; " + accepted):
        locate("sqlite://")
    with pytest.raises(ConfigError, match="'sqlite://host/x.db': a SQLite file has no host; " + accepted):
        locate("sqlite://host/x.db")
    with pytest.raises(ConfigError, match="'memory:foo': memory: takes nothing after it; " + accepted):
        locate("memory:foo")
    with pytest.raises(
        ConfigError, match=r"'MySQL://collab:\*\*\*@db/collab': collab has no engine for mysql:"
    ) as refused:
        locate("MySQL://collab:hunter2@db/collab")
    assert "hunter2" not in str(refused.value)
    with pytest.raises(ConfigError, match=r"'postgresql:collab': a PostgreSQL URL starts postgresql://"):
        locate("postgresql:collab")
    with pytest.raises(ConfigError, match=r"'sqlite://u:\*\*\*@host/x.db'") as refused:
        locate("sqlite://u:hunter2@host/x.db")
    assert "hunter2" not in str(refused.value)


def test_a_database_url_is_printed_without_its_password() -> None:
    assert redacted("postgresql://user:secret@host/db") == "postgresql://user:***@host/db"
    assert redacted("postgresql://user:p@ss:w/rd@host:5432/db") == "postgresql://user:***@host:5432/db", "unquoted"
    assert redacted("postgresql://user:@host/db") == "postgresql://user:***@host/db"
    assert redacted("postgresql://host/db?sslmode=require&password=pw&x=1") == (
        "postgresql://host/db?sslmode=require&password=***&x=1"
    ), "libpq takes the password as a parameter too"
    for shown in ("postgresql://user@host:5432/db", "postgresql://host:5432/db?x=a@b", "sqlite:///a:b@c.db", "d.db"):
        assert redacted(shown) == shown


def test_describe_sums_the_database_and_its_wal_by_name(tmp_path: Path) -> None:
    """Not a glob: that counted a neighbouring x.db.bak, and read the brackets of d[1].db as a pattern (0 bytes)."""
    for name in ("x.db", "d[1].db"):
        path = tmp_path / name
        engine = SQLiteEngine(path)
        engine.open()
        engine.commit([append("doc", keystrokes("sized")[0], T0)])  # the WAL holds it until a checkpoint
        (tmp_path / f"{name}.bak").write_bytes(b"an old copy" * 1000)
        on_disk = sum((tmp_path / f"{name}{suffix}").stat().st_size for suffix in ("", "-wal", "-shm"))
        assert (tmp_path / f"{name}-wal").stat().st_size > 0
        assert SQLiteFile(path).describe() == f"{path} ({on_disk} bytes on disk, with WAL)"
        engine.close()


async def test_open_store_runs_on_the_engine_db_names_and_a_reader_sees_it(tmp_path: Path) -> None:
    db = tmp_path / "chosen.db"
    store = open_store(Settings(db=f"sqlite://{db}", commit_interval=0.01))
    await store.start()
    for update in keystrokes("via url"):
        store.append("doc", update)
    await store.close()
    with open_reader(db) as reader:
        [info] = reader.documents()
        doc: Doc = Doc()
        for record in reader.records("doc"):
            doc.apply_update(record.data)
        assert str(doc.get("content", type=Text)) == "via url"
        assert [point.kind for point in reader.history("doc")] == ["update"]
    assert info.name == "doc" and info.log_length == 1


async def test_a_reader_sees_one_moment_while_the_store_keeps_writing(database: str) -> None:
    store = open_store(Settings(db=database, commit_interval=0.01))
    await store.start()
    try:
        store.append("first", keystrokes("1")[0])
        await store.flush()
        with open_reader(database) as reader:
            assert [info.name for info in reader.documents()] == ["first"]
            store.append("second", keystrokes("2")[0])
            await store.flush()
            assert [info.name for info in reader.documents()] == ["first"], "the moment of the first read"
            assert reader.records("second") == []
        with open_reader(database) as later:
            assert [info.name for info in later.documents()] == ["first", "second"]
    finally:
        await store.close()


async def test_memory_is_a_database_only_its_server_reaches() -> None:
    """What a test server on `--db memory:` gets: its own engine, no lock to take, nothing revoked from outside."""
    database = locate("memory:")
    store = open_store(Settings(db="memory:", commit_interval=0))
    assert isinstance(store.engine, MemoryEngine)
    await store.start()
    store.append("doc", keystrokes("m")[0])
    await store.close()
    assert [info.name for info in store.engine.documents()] == ["doc"]
    assert open_store(Settings(db="memory:")).engine is not store.engine, "one engine per server"
    lock = database.lock()
    lock.acquire()
    database.lock().acquire()
    lock.release()
    assert database.running_server() is None and database.revocations().read_new() == []
    with pytest.raises(StorageError, match="inside its server only"):
        open_reader("memory:")


def test_a_reader_needs_an_existing_collab_database(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no database at"):
        open_reader(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all, just bytes" * 100)
    with pytest.raises(StorageError, match="not a collab database"):
        open_reader(tmp_path / "junk.db")


def test_a_reader_needs_a_reachable_collab_database_on_postgresql(postgres_url: str) -> None:
    """A database with no collab tables yet is refused (never created by a reader), as is one not there."""
    with pytest.raises(StorageError, match=r"PostgreSQL collab_test_\w+ on .* is not a collab database"):
        open_reader(postgres_url)
    missing_name = f"collab_test_no_such_database_{uuid.uuid4().hex}"
    with pytest.raises(StorageError, match=f"cannot connect to PostgreSQL {missing_name} on "):
        open_reader(postgres_url.rsplit("/", 1)[0] + f"/{missing_name}")


async def test_the_command_line_reads_through_the_reader(tmp_path: Path) -> None:
    """stats, rooms, history and export on a database no server runs on, named by a sqlite: URL."""
    db = tmp_path / "cli.db"
    store = open_store(Settings(db=str(db), commit_interval=0.01))
    await store.start()
    for update in keystrokes("typed"):
        store.append("notes/a", update)
    await store.close()

    def collab(*args: str) -> str:
        return collab_in_process(*args, "--db", f"sqlite://{db}").stdout

    stats = collab("stats")
    assert f"{db} (" in stats and "bytes on disk, with WAL)" in stats and "not running" in stats
    assert "documents:      1" in stats
    assert collab("rooms").splitlines()[1].startswith("notes/a ")
    assert collab("history", "notes/a").count(" update ") == 1
    assert collab("export", "--format", "txt", "--out", "-", "notes/a") == "typed"
