"""Fixtures: real collab servers on 127.0.0.1 with a free port, a real SQLite file, a real PostgreSQL database.

PostgreSQL comes from tests/postgres.py (COLLAB_TEST_PG, else the shared server on 127.0.0.1:5432, else a
private cluster for the session); each test gets a fresh database, dropped after it (in the background; every
one by the session's end). Tests that stop PostgreSQL share one private cluster (`private_cluster`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from collab.server.app import CollabServer
from collab.store import Engine
from collab.store.memory import MemoryStore

from .helpers import SECRET, StartServer, engine_on, servers_on
from .postgres import DatabasePool, PrivateCluster, admin_url, drop_database, fresh_database, sweep_stale_databases
from .redis import PrivateRedis, delete_prefix, fresh_prefix, redis_admin_url


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "collab.db"


@pytest.fixture(scope="session")
def database_pool() -> Iterator[DatabasePool]:
    """Fresh PostgreSQL databases made ahead and dropped behind (`postgres_url`); all dropped at the session's end.

    First drops what killed runs left behind, so that they do not pile up on a shared server.
    """
    admin = admin_url()
    sweep_stale_databases(admin)
    pool = DatabasePool(admin)
    yield pool
    pool.close()


@pytest.fixture
def postgres_url(database_pool: DatabasePool) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database for this test; dropped after it (open sessions ended)."""
    url = database_pool.take()
    yield url
    database_pool.give_back(url)


@pytest.fixture(scope="session")
def session_cluster() -> Iterator[PrivateCluster]:
    """The private cluster of the session (starting one takes about a second); use `private_cluster`."""
    with PrivateCluster() as started:
        yield started


@pytest.fixture
def private_cluster(session_cluster: PrivateCluster) -> Iterator[PrivateCluster]:
    """A private PostgreSQL cluster, running, for tests that stop, crash or restart it; never the shared server.

    Shared by the session, so a test may stop it only for a while: one that leaves it stopped (a test failing
    mid-outage) has it started again here, so that the next test finds it running.
    """
    if not session_cluster.running:
        session_cluster.start()
    yield session_cluster
    if not session_cluster.running:
        session_cluster.start()


@pytest.fixture
def private_url(private_cluster: PrivateCluster) -> Iterator[str]:
    """A fresh database on the private cluster, dropped at the end (the cluster started again first if the test
    left it stopped)."""
    url = fresh_database(private_cluster.admin_url)
    yield url
    if not private_cluster.running:
        private_cluster.start()
    drop_database(url, private_cluster.admin_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    """The `--db` value of a fresh database, once per engine: a SQLite file path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_path"))
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def another_database(request: pytest.FixtureRequest, database: str, tmp_path: Path) -> Iterator[str]:
    """A second fresh `--db` value on the engine `database` is on: a database nothing has written to yet (on
    SQLite, a file that does not exist yet; on PostgreSQL, a database without collab's tables)."""
    if request.node.callspec.params["database"] == "sqlite":
        yield str(tmp_path / "another.db")
        return
    pool: DatabasePool = request.getfixturevalue("database_pool")
    url = pool.take()
    yield url
    pool.give_back(url)


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


@pytest.fixture
def redis_url() -> str:
    """The URL of the session's Redis (tests/redis.py: COLLAB_TEST_REDIS, else 127.0.0.1:6379, else a private one).

    Shared: write only keys under `relay_prefix`.
    """
    return redis_admin_url()


@pytest.fixture
def relay_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix for this test alone (`--relay-prefix`); every key under it in `redis_url` is deleted after it."""
    prefix = fresh_prefix()
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture(scope="session")
def session_private_redis() -> Iterator[PrivateRedis]:
    """The private Redis of the session; use `private_redis`."""
    with PrivateRedis() as started:
        yield started


@pytest.fixture
def private_redis(session_private_redis: PrivateRedis) -> Iterator[PrivateRedis]:
    """A private Redis, running, for tests that stop, kill or restart it; never the shared server.

    Shared by the session, so a test may stop it only for a while: one that leaves it stopped (a test failing
    mid-outage) has it started again here, so that the next test finds it running. Its keys are gone after each
    test (FLUSHALL, or the restart), so that none finds another's.
    """
    if not session_private_redis.running:
        session_private_redis.start()
    yield session_private_redis
    if session_private_redis.running:
        session_private_redis.flush()
    else:
        session_private_redis.start()


@pytest.fixture
def two_engines(database: str) -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one database, as two processes would have: "mine" and "theirs"."""
    mine, theirs = engine_on(database), engine_on(database)
    yield mine, theirs
    mine.close()
    theirs.close()
