"""The Redis relay between in-process servers on one database: delivery, hostile entries, outages, metrics.

Two `CollabServer`s in this process with `--relay` on a real Redis (the shared one under a prefix of the
test's own, or a private one for the outages); clients are collab's own. The multi-process tests with the
stock client are tests/test_cluster.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis

from collab.cluster.entries import frame_fields, room_key
from collab.config import Settings
from collab.errors import ConfigError
from collab.server.app import CollabServer
from collab.sync.protocol import Update

from .helpers import ROOT, StartServer, get, room_url, servers_on, synced, text, wait_for
from .redis import PrivateRedis


@pytest.fixture
async def start(db_path: Path) -> AsyncIterator[StartServer]:
    async with servers_on(db_path) as starting:
        yield starting


async def pair(start: StartServer, url: str, prefix: str) -> tuple[CollabServer, CollabServer]:
    first = await start(relay=url, relay_prefix=prefix)
    second = await start(relay=url, relay_prefix=prefix)
    return first, second


def metric_value(server: CollabServer, name: str, *labels: str) -> float:
    for item in server.metrics.all():
        if item.name == name:
            return float(item.get(*labels))  # type: ignore[union-attr]
    raise KeyError(name)


async def test_edits_cross_between_two_servers_both_ways(start: StartServer, redis_url: str, relay_prefix: str) -> None:
    one, two = await pair(start, redis_url, relay_prefix)
    async with synced(room_url(one, "doc")) as ada, synced(room_url(two, "doc")) as bob:
        text(ada).insert(0, "ada ")
        await wait_for(lambda: str(text(bob)) == "ada ")
        text(bob).insert(4, "bob")
        await wait_for(lambda: str(text(ada)) == "ada bob")
    assert metric_value(one, "collab_relay_published_total") >= 1
    assert metric_value(two, "collab_relay_received_total") >= 1


async def test_foreign_and_malformed_entries_are_skipped_and_delivery_goes_on(
    start: StartServer, redis_url: str, relay_prefix: str
) -> None:
    one, two = await pair(start, redis_url, relay_prefix)
    async with synced(room_url(one, "doc")) as ada, synced(room_url(two, "doc")) as bob:
        text(ada).insert(0, "before ")
        await wait_for(lambda: str(text(bob)) == "before ")
        client = redis.Redis.from_url(redis_url)
        try:
            key = room_key(relay_prefix, "doc")
            client.xadd(key, {b"data": b"another program's entry"})
            for frame in (b"\x07\x07\x07", Update(b"\x01\x05\xff").encode()):  # not a y-websocket frame, no update
                entry: dict[Any, Any] = frame_fields("intruder:1:ffff", frame)
                client.xadd(key, entry)
        finally:
            client.close()
        text(ada).insert(7, "after")
        await wait_for(lambda: str(text(bob)) == "before after")
        assert str(text(ada)) == "before after"
    for server in (one, two):
        assert metric_value(server, "collab_relay_skipped_total", "malformed") == 1
        assert metric_value(server, "collab_relay_skipped_total", "refused") == 2


async def test_a_joiner_on_the_other_server_gets_what_is_not_committed_yet(
    start: StartServer, redis_url: str, relay_prefix: str
) -> None:
    # A commit window of an hour: what the first server accepted is only in its memory and in Redis.
    one = await start(relay=redis_url, relay_prefix=relay_prefix, commit_interval=3600)
    two = await start(relay=redis_url, relay_prefix=relay_prefix)
    async with synced(room_url(one, "doc")) as ada:
        text(ada).insert(0, "not stored yet")
        await wait_for(lambda: metric_value(one, "collab_relay_published_total") >= 1)
        assert one.store.pending
        async with synced(room_url(two, "doc")) as late:
            assert str(text(late)) == "not stored yet"


async def test_redis_unreachable_keeps_each_server_serving_and_readyz_says_so(
    start: StartServer, private_redis: PrivateRedis, relay_prefix: str
) -> None:
    one, two = await pair(start, private_redis.url, relay_prefix)
    async with synced(room_url(one, "doc")) as ada, synced(room_url(two, "doc")) as bob:
        text(ada).insert(0, "a")
        await wait_for(lambda: str(text(bob)) == "a")
        private_redis.stop()
        text(ada).insert(1, "b")  # kept by the first server until Redis is back
        await wait_for(lambda: one.relay is not None and one.relay.problem is not None)
        reply = await get(one, "/readyz")
        assert reply.status == 503 and b"relay: Redis unreachable" in reply.body
        async with synced(room_url(one, "doc")) as also:  # joins still work, from memory and the store
            assert str(text(also)) == "ab"
        private_redis.start()
        await wait_for(lambda: str(text(bob)) == "ab", timeout=15)
        await wait_for(lambda: all(server.relay is not None and server.relay.problem is None for server in (one, two)))
        assert (await get(two, "/readyz")).status == 200


async def test_a_room_opened_while_redis_is_down_is_reloaded_once_it_is_back(
    start: StartServer, private_redis: PrivateRedis, relay_prefix: str
) -> None:
    one, two = await pair(start, private_redis.url, relay_prefix)
    private_redis.stop()
    await wait_for(lambda: all(server.relay is not None and server.relay.problem is not None for server in (one, two)))
    async with synced(room_url(one, "doc")) as ada, synced(room_url(two, "doc")) as bob:
        text(ada).insert(0, "typed during the outage")
        await asyncio.sleep(0.3)
        assert str(text(bob)) == ""
        private_redis.start()
        await wait_for(lambda: str(text(bob)) == "typed during the outage", timeout=15)
        # Sent again when Redis came back; and each server reloads the room once, to be sure.
        for server in (one, two):
            await wait_for(lambda: metric_value(server, "collab_relay_gap_reloads_total") == 1)  # noqa: B023
        await asyncio.sleep(1.5)
        assert [metric_value(server, "collab_relay_gap_reloads_total") for server in (one, two)] == [1, 1]


def test_without_relay_no_redis_client_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys; from collab.config import Settings; from collab.server.app import CollabServer;"
        f"CollabServer(Settings(db={str(tmp_path / 'x.db')!r})); print('redis' in sys.modules)"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert shown.stdout.strip() == "False"


def test_a_relay_url_that_is_not_redis_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a Redis URL"):
        Settings.load({}, {"COLLAB_RELAY": "http://example.com"})
