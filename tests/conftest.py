"""Fixtures: real collab servers on 127.0.0.1 with a free port and a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collab.server.app import CollabServer
from collab.store.memory import MemoryStore

from .helpers import SECRET, StartServer, servers_on


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "collab.db"


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
