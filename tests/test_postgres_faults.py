"""PostgreSQL going away while clients type: nothing is lost, /readyz says so, nothing is served empty.

A commit that fails (its connection terminated, the server stopped or crashed, a row lock held past
`postgres_lock_timeout`) is kept in memory and retried with backoff; the rooms keep serving from memory, a
room whose writes are not yet durable stays loaded, and a document that cannot be loaded is refused (1011),
never served as empty. These tests stop, crash and restart PostgreSQL, so they run on the session's private
cluster (`private_cluster`), never on the shared server; only the row lock test, which stops nothing, uses the
usual fresh database. kill -9 of a server on PostgreSQL is in the contract suite
(test_persistence.py, `database` fixture).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import psycopg
import pytest

from collab.client import Client
from collab.errors import DatabaseInUseError
from collab.server.app import LOCK_CHECK_INTERVAL, CollabServer
from collab.store.postgres_read import running_server

from .helpers import get, refused, room_url, servers_on, stored_text, synced, text, wait_for, wait_stored
from .postgres import PrivateCluster, StopMode, database_name

UNLOAD_AFTER = 0.2
"""Short, so that a room whose writes are pending would have unloaded long before the test ends."""
RECOVERY_TIMEOUT = 15.0
"""The store retries at most every 5 s (its backoff cap), so commits succeed again within this of a restart."""
COLD = "a document that must never be served empty"


def terminate_sessions(cluster: PrivateCluster, url: str) -> int:
    """End every session connected to `url`'s database (collab's store, lock, revocations); how many ended."""
    with psycopg.connect(cluster.admin_url, autocommit=True) as admin:
        ended = admin.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = %s AND pid <> pg_backend_pid()""",
            [database_name(url)],
        ).fetchall()
    return sum(1 for (done,) in ended if done)


@asynccontextmanager
async def outage(cluster: PrivateCluster, mode: StopMode) -> AsyncIterator[None]:
    """PostgreSQL stopped (`mode`) for the body, started again however the body ends.

    Started again on failure too: the servers' stop flushes, and would wait forever on a stopped database.
    """
    await asyncio.to_thread(cluster.stop, mode)
    try:
        yield
    finally:
        await asyncio.to_thread(cluster.start)


async def type_at_end(client: Client, typed: str, pause: float = 0.0) -> None:
    """Type `typed` one keystroke at a time at the end of the client's text, `pause` seconds apart."""
    for char in typed:
        text(client).insert(len(str(text(client))), char)
        await asyncio.sleep(pause)


async def ready_status(server: CollabServer) -> int:
    return (await get(server, "/readyz")).status


async def test_sessions_terminated_while_two_clients_type_lose_no_keystroke(
    private_cluster: PrivateCluster, private_url: str
) -> None:
    typed_by_alice = "the quick brown fox jumps over the lazy dog and back again " * 2
    typed_by_bob = "0123456789" * 12
    terminations = 6
    ended: list[int] = []

    async def terminate_repeatedly() -> None:
        for _ in range(terminations):
            await asyncio.sleep(0.15)
            ended.append(await asyncio.to_thread(terminate_sessions, private_cluster, private_url))

    async with servers_on(private_url) as start_server:
        server = await start_server(commit_interval=0.01)
        url = room_url(server, "typed")
        async with synced(url) as alice, synced(url) as bob:
            await asyncio.gather(
                type_at_end(alice, typed_by_alice, 0.01), type_at_end(bob, typed_by_bob, 0.01), terminate_repeatedly()
            )
            total = len(typed_by_alice) + len(typed_by_bob)
            await alice.wait_until(lambda: len(str(text(alice))) == total and str(text(alice)) == str(text(bob)))
            typed = str(text(alice))
            await wait_stored(private_url, "typed", typed, timeout=RECOVERY_TIMEOUT)
            # Now and then a termination falls while the store reconnects, and finds nothing to end.
            assert sum(1 for count in ended if count) >= terminations // 2, ended
            assert (alice.close_code, bob.close_code) == (None, None), "the room served both throughout"
    # Each client appended at the end of what it saw, so its own keystrokes keep their order in the merge.
    assert "".join(char for char in typed if not char.isdigit()) == typed_by_alice
    assert "".join(char for char in typed if char.isdigit()) == typed_by_bob


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_down_keeps_rooms_serving_and_refuses_cold_joins(
    private_cluster: PrivateCluster, private_url: str, mode: StopMode
) -> None:
    async with servers_on(private_url) as start_server:
        server = await start_server(commit_interval=0.01, unload_after=UNLOAD_AFTER)
        cold_url, hot_url = room_url(server, "cold"), room_url(server, "hot")
        async with synced(cold_url) as author:
            text(author).insert(0, COLD)
        await wait_for(lambda: "cold" not in server.rooms)  # stored and unloaded: a join must load it again
        async with AsyncExitStack() as connected:
            writer = await connected.enter_async_context(synced(hot_url))
            watcher = await connected.enter_async_context(synced(hot_url))
            text(writer).insert(0, "before.")
            await wait_stored(private_url, "hot", "before.")
            assert await ready_status(server) == 200
            async with outage(private_cluster, mode):
                await type_at_end(writer, "during.")
                await watcher.wait_until(lambda: str(text(watcher)) == "before.during.")  # relayed from memory
                await wait_for(lambda: server.store.failing)
                assert server.store.pending > 0
                assert await ready_status(server) == 503
                room = server.rooms.get("hot")
                assert room is not None
                await connected.aclose()  # both leave while their writes are not durable
                # Idle past unload_after: the unload task compacts (the log is empty again) and then must wait
                # for the store instead of dropping writes that are not durable.
                await wait_for(lambda: room.log_length == 0)
                await asyncio.sleep(UNLOAD_AFTER)
                assert server.rooms.get("hot") is room, "a room whose writes are not durable stays loaded"
                cold_joiner = await refused(cold_url)
                assert cold_joiner.close_code in (1011, 1013), (cold_joiner.close_code, cold_joiner.close_reason)
                assert not cold_joiner.synced.is_set(), "never served as an empty document"
                assert "cold" not in server.rooms
                assert await ready_status(server) == 503
        await wait_for(lambda: not server.store.failing, timeout=RECOVERY_TIMEOUT)
        assert await ready_status(server) == 200
        assert stored_text(private_url, "hot") == "before.during."
        await wait_for(lambda: "hot" not in server.rooms)  # durable now, so it unloads
        async with synced(cold_url) as late:
            assert str(text(late)) == COLD
        async with synced(hot_url) as reader:
            assert str(text(reader)) == "before.during."


async def test_a_row_locked_by_another_connection_delays_commits_and_loses_nothing(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with servers_on(postgres_url) as start_server:
        server = await start_server(commit_interval=0.01, postgres_lock_timeout=0.05, unload_after=0)
        url = room_url(server, "locked")
        blocker = psycopg.connect(postgres_url)  # not autocommit: its row lock lasts until the rollback
        try:
            async with synced(url) as writer:
                text(writer).insert(0, "before.")
                await wait_stored(postgres_url, "locked", "before.")
                blocker.execute("SELECT id FROM documents WHERE name = %s FOR UPDATE", ["locked"])
                with caplog.at_level(logging.ERROR, logger="collab.store"):
                    await type_at_end(writer, "during.")
                    await wait_for(lambda: server.store.failing)
            assert "lock timeout" in caplog.text
            assert await ready_status(server) == 503
            # The writer left and the room is idle, but it must not unload before its writes are durable.
            async with synced(url) as reader:
                assert str(text(reader)) == "before.during."
            assert "locked" in server.rooms
            assert stored_text(postgres_url, "locked") == "before."
        finally:
            blocker.rollback()
            blocker.close()
        await wait_stored(postgres_url, "locked", "before.during.", timeout=RECOVERY_TIMEOUT)
        await wait_for(lambda: not server.store.failing)
        assert await ready_status(server) == 200
        await wait_for(lambda: "locked" not in server.rooms)


async def test_a_cold_join_right_after_postgres_restarted_is_served(
    private_cluster: PrivateCluster, private_url: str
) -> None:
    async with servers_on(private_url) as start_server:
        server = await start_server(commit_interval=0.01, unload_after=UNLOAD_AFTER)
        cold_url = room_url(server, "cold")
        async with synced(cold_url) as author:
            text(author).insert(0, COLD)
        await wait_for(lambda: "cold" not in server.rooms)
        # A maintenance restart while nobody types: nothing uses the store's connection until the next join.
        await asyncio.to_thread(private_cluster.restart)
        async with Client(cold_url) as late:
            await late.wait_until(late.synced.is_set)  # raises, naming the close code, if the join is refused
            assert str(text(late)) == COLD


async def test_the_database_stays_locked_to_its_server_through_an_outage(
    private_cluster: PrivateCluster, private_url: str
) -> None:
    async with servers_on(private_url) as start_server:
        first = await start_server(commit_interval=0.01)
        await asyncio.to_thread(private_cluster.restart)  # ends every session, the one holding the lock too
        # The server takes its lock again within a few seconds (LOCK_CHECK_INTERVAL), and says where it listens.
        await wait_for(lambda: running_server(private_url) is not None, timeout=10 * LOCK_CHECK_INTERVAL, interval=0.1)
        holder = running_server(private_url)
        assert holder is not None and holder["pid"] == os.getpid() and holder["url"] == f"ws://127.0.0.1:{first.port}"
        # The server still runs on the database, so a second server on it must still be refused.
        with pytest.raises(DatabaseInUseError):
            await start_server()
        assert await ready_status(first) == 200


async def test_a_server_whose_lock_another_server_took_says_so(
    private_cluster: PrivateCluster, private_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with servers_on(private_url) as start_server:
        first = await start_server(commit_interval=0.01)
        with caplog.at_level(logging.ERROR, logger="collab.server"):
            assert terminate_sessions(private_cluster, private_url) >= 1  # the lock's session too: the lock is free
            second = await start_server(commit_interval=0.01)  # before the first takes it again
            await wait_for(lambda: "lost the database lock" in caplog.text, timeout=10 * LOCK_CHECK_INTERVAL)
        assert await ready_status(first) == 503
        assert await ready_status(second) == 200
        holder = running_server(private_url)
        assert holder is not None and holder["url"] == f"ws://127.0.0.1:{second.port}"
