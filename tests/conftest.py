"""Fixtures: real collab servers on 127.0.0.1 with a free port, a real SQLite file, a real PostgreSQL database.

PostgreSQL comes from tests/postgres.py (COLLAB_TEST_PG, else the shared server on 127.0.0.1:5432, else a
private cluster for the session); each test gets a fresh database, dropped at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from collab.server.app import CollabServer
from collab.store.memory import MemoryStore

from .helpers import SECRET, StartServer, servers_on
from .postgres import admin_url, drop_database, fresh_database


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "collab.db"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database for this test; dropped at the end (open sessions ended)."""
    admin = admin_url()
    url = fresh_database(admin)
    yield url
    drop_database(url, admin)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    """The `--db` value of a fresh database, once per engine: a SQLite file path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_path"))
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryStore]:
    """A started store on the in-memory engine, committing at once; closed (flushed) at the end."""
    store = MemoryStore()
    await store.start()
    yield store
    await store.close()


@pytest.fixture
async def start_server(db_path: Path) -> AsyncIterator[StartServer]:
    """Start in-process servers on the test's database; all are stopped at the end."""
    async with servers_on(db_path) as start:
        yield start


@pytest.fixture
async def server(start_server: StartServer) -> CollabServer:
    return await start_server()


@pytest.fixture
async def secured(start_server: StartServer) -> CollabServer:
    """A server with access control on: tokens signed with `helpers.SECRET` (`helpers.token`)."""
    return await start_server(auth_secret=SECRET)
