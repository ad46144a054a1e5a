"""The test infrastructure that provides PostgreSQL (tests/postgres.py and the fixtures in tests/conftest.py).

Every PostgreSQL test trusts these parts: that its database is fresh and is dropped (made ahead and dropped
behind by a pool, and swept up after a killed run), that a private cluster really restarts and really crashes,
and that a missing server leads to a private cluster rather than a skip.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from .postgres import (
    TEST_DATABASE_NAME,
    TEST_DATABASE_PREFIX,
    DatabasePool,
    PostgresUnavailable,
    PrivateCluster,
    admin_url,
    choose_server,
    database_name,
    drop_database,
    free_port,
    fresh_database,
    reachable,
    redacted,
    sweep_stale_databases,
    with_database,
)


def database_names(admin: str) -> set[str]:
    with psycopg.connect(admin, autocommit=True) as connection:
        return {str(name) for (name,) in connection.execute("SELECT datname FROM pg_database")}


def database_exists(admin: str, name: str) -> bool:
    with psycopg.connect(admin, autocommit=True) as connection:
        return connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def user_tables(url: str) -> list[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return [str(name) for (name,) in rows]


def test_a_fresh_database_is_empty_writable_and_dropped_afterwards() -> None:
    admin = admin_url()
    url = fresh_database(admin)
    try:
        name = database_name(url)
        match = TEST_DATABASE_NAME.fullmatch(name)
        assert match is not None and name.startswith(TEST_DATABASE_PREFIX) and int(match[1]) == os.getpid()
        assert database_exists(admin, name)
        assert user_tables(url) == []
        with psycopg.connect(url) as connection:
            connection.execute("CREATE TABLE probe (value text)")
            connection.execute("INSERT INTO probe VALUES ('written')")
        with psycopg.connect(url) as connection:
            assert connection.execute("SELECT value FROM probe").fetchall() == [("written",)]

        drop_database(url, admin)

        assert not database_exists(admin, name)
    finally:
        drop_database(url, admin)  # dropping twice is harmless (IF EXISTS)
    another = fresh_database(admin)
    drop_database(another, admin)
    assert another != url  # each call makes a new one


def test_dropping_ends_sessions_still_connected() -> None:
    """A test's server may still hold connections when the fixture drops its database (WITH (FORCE))."""
    admin = admin_url()
    url = fresh_database(admin)
    try:
        with psycopg.connect(url) as lingering:
            drop_database(url)  # default admin connection: the same server's postgres database
            assert not database_exists(admin, database_name(url))
            with pytest.raises(psycopg.OperationalError):
                lingering.execute("SELECT 1")
    finally:
        drop_database(url, admin)


def test_dropping_refuses_a_database_the_tests_did_not_make() -> None:
    with pytest.raises(ValueError, match="refusing to drop 'postgres'"):
        drop_database(with_database(admin_url(), "postgres"))
    assert database_exists(admin_url(), "postgres")


def test_postgres_url_is_a_fresh_database_on_the_admin_server(postgres_url: str) -> None:
    assert postgres_url == with_database(admin_url(), database_name(postgres_url))
    assert database_name(postgres_url).startswith(TEST_DATABASE_PREFIX)
    assert user_tables(postgres_url) == []


def test_database_gives_each_engine_in_turn(database: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    engine = request.node.callspec.id
    if engine == "sqlite":
        assert database == str(tmp_path / "collab.db")
        assert not Path(database).exists()  # the engine creates it
    else:
        assert engine == "postgresql"
        assert database.startswith("postgresql://")
        assert user_tables(database) == []


def test_urls_keep_everything_but_the_database_name() -> None:
    url = "postgresql://alice:s%40cret@db.example:6543/postgres?sslmode=require"
    assert (
        with_database(url, "collab_test_1")
        == "postgresql://alice:s%40cret@db.example:6543/collab_test_1?sslmode=require"
    )
    assert database_name("postgresql://postgres@127.0.0.1:5432/collab%5Ftest") == "collab_test"
    assert redacted(url) == "postgresql://alice:***@db.example:6543/postgres?sslmode=require"
    assert redacted("postgresql://postgres@127.0.0.1:5432/postgres") == "postgresql://postgres@127.0.0.1:5432/postgres"


def test_the_pool_makes_fresh_databases_ahead_and_drops_every_one_at_close(private_cluster: PrivateCluster) -> None:
    admin = private_cluster.admin_url
    before = database_names(admin)
    pool = DatabasePool(admin, ahead=2)
    try:
        first, second = pool.take(), pool.take()
        assert first != second
        for url in (first, second):
            assert TEST_DATABASE_NAME.fullmatch(database_name(url)) and user_tables(url) == []
        with psycopg.connect(first) as connection:
            connection.execute("CREATE TABLE probe (value text)")
        pool.give_back(first)
        pool.give_back(second)
    finally:
        pool.close()
    assert database_names(admin) == before, "given back or made ahead and never taken: all dropped"


def test_databases_a_killed_run_left_are_swept_and_none_of_a_live_one(private_cluster: PrivateCluster) -> None:
    admin = private_cluster.admin_url
    finished = subprocess.Popen(["true"])
    finished.wait()  # a pid that is no longer alive, as a killed pytest's
    dead, live = f"collab_test_{finished.pid}_{uuid.uuid4().hex}", database_name(fresh_database(admin))
    unlike = f"collab_test_{finished.pid}_not_made_by_fresh_database"
    with psycopg.connect(admin, autocommit=True) as connection:
        for name in (dead, unlike):
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        assert sweep_stale_databases(admin) == [dead]
        assert live in database_names(admin) and unlike in database_names(admin)
        assert dead not in database_names(admin)
        assert sweep_stale_databases(admin.replace("127.0.0.1", "db.elsewhere")) == [], "not this machine's pids"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            for name in (dead, unlike, live):
                connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_private_cluster_listens_on_its_own_port(private_cluster: PrivateCluster) -> None:
    assert private_cluster.port != 5432
    assert private_cluster.admin_url == f"postgresql://postgres@127.0.0.1:{private_cluster.port}/postgres"
    with psycopg.connect(private_cluster.admin_url) as connection:
        port = connection.execute("SHOW port").fetchone()
    assert port == (str(private_cluster.port),)


def test_a_private_cluster_keeps_port_and_data_across_restart(
    private_cluster: PrivateCluster, private_url: str
) -> None:
    with psycopg.connect(private_url) as connection:
        connection.execute("CREATE TABLE probe AS SELECT 'before restart' AS value")
    port = private_cluster.port

    private_cluster.restart()

    assert private_cluster.port == port
    with psycopg.connect(private_url) as connection:
        assert connection.execute("SELECT value FROM probe").fetchall() == [("before restart",)]


def test_an_immediate_stop_is_a_crash_that_start_recovers_from(
    private_cluster: PrivateCluster, private_url: str
) -> None:
    """(Should it fail with the cluster stopped, `private_cluster` starts it again for the next test.)"""
    with psycopg.connect(private_url, autocommit=True) as connected:
        connected.execute("CREATE TABLE probe AS SELECT 'committed' AS value")

        private_cluster.stop("immediate")

        assert not private_cluster.running
        with pytest.raises(psycopg.OperationalError):
            connected.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(private_url, connect_timeout=2)
    assert not reachable(private_url)

    private_cluster.start()

    # Crash recovery replays the WAL: with fsync=off, what was committed before the crash is still there.
    with psycopg.connect(private_url) as connection:
        assert connection.execute("SELECT value FROM probe").fetchall() == [("committed",)]


def test_an_unreachable_server_leads_to_a_private_cluster() -> None:
    """Where 127.0.0.1:5432 does not answer, the session gets a cluster of its own rather than a skip."""
    nothing_listens = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    assert not reachable(nothing_listens)

    url, private = choose_server(None, nothing_listens)

    assert private is not None
    try:
        assert url == private.admin_url != nothing_listens
        assert reachable(url)
        database = fresh_database(url)
        assert user_tables(database) == []
        assert (private.root / "data" / "PG_VERSION").exists()
    finally:
        private.remove()
    assert not private.root.exists()  # removing a cluster (as its context manager does on exit) leaves no files
    assert not reachable(url)


def test_a_reachable_server_is_used_as_it_is() -> None:
    assert choose_server(None, admin_url()) == (admin_url(), None)
    assert choose_server(admin_url(), "postgresql://unused@127.0.0.1:1/postgres") == (admin_url(), None)


def test_a_configured_server_that_does_not_answer_fails_instead_of_falling_back() -> None:
    """COLLAB_TEST_PG names the server to test against; quietly testing another one would hide the mistake."""
    configured = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(PostgresUnavailable, match="does not answer") as failure:
        choose_server(configured, admin_url())
    assert "hunter2" not in str(failure.value)
