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
from collab.metrics import Gauge
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
            return float(item.read() if isinstance(item, Gauge) else item.get(*labels))  # type: ignore[union-attr]
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
    one = await start(relay=redis_url, relay_prefix=relay_prefix, commit_interval=3600, relay_retention=40000)
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


async def test_a_redis_that_may_evict_collabs_keys_is_named_in_the_log(
    start: StartServer, private_redis: PrivateRedis, relay_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    try:
        client.config_set("maxmemory-policy", "volatile-lru")
        await start(relay=private_redis.url, relay_prefix=relay_prefix)
        assert "maxmemory-policy volatile-lru): set maxmemory-policy noeviction" in caplog.text
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()


async def test_a_server_stopping_leaves_the_others_beating_for_each_other(
    start: StartServer, redis_url: str, relay_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = await pair(start, redis_url, relay_prefix)
    three = await start(relay=redis_url, relay_prefix=relay_prefix)
    await wait_for(lambda: all(metric_value(server, "collab_relay_processes") == 3 for server in (one, two, three)))
    await three.stop()  # says goodbye: the others drop it at once, and only it
    await wait_for(lambda: all(metric_value(server, "collab_relay_processes") == 2 for server in (one, two)))
    await asyncio.sleep(2.5)  # two more heartbeats
    assert [metric_value(server, "collab_relay_processes") for server in (one, two)] == [2, 2]
    assert caplog.text.count("stopped beating") == 2  # three, seen gone by one and by two; nobody else


async def test_a_restarted_redis_does_not_make_the_servers_drop_each_other(
    start: StartServer, private_redis: PrivateRedis, relay_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = await pair(start, private_redis.url, relay_prefix)
    async with synced(room_url(one, "doc")) as ada, synced(room_url(two, "doc")) as bob:
        ada.set_awareness({"user": "ada"})
        await bob.wait_until(lambda: bob.awareness.get(ada.client_id) == {"user": "ada"})
        private_redis.stop()
        await asyncio.sleep(0.5)
        private_redis.start()
        await wait_for(lambda: all(server.relay is not None and server.relay.problem is None for server in (one, two)))
        await asyncio.sleep(4.0)  # past the 3 s a process may go without beating
        assert bob.awareness.get(ada.client_id) == {"user": "ada"}
        assert "stopped beating" not in caplog.text


async def test_a_room_key_that_is_not_a_stream_stops_only_that_room(
    start: StartServer, redis_url: str, relay_prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(room_key(relay_prefix, "spoiled"), b"another program's string")
    finally:
        client.close()
    one, two = await pair(start, redis_url, relay_prefix)
    async with synced(room_url(one, "spoiled")) as ada, synced(room_url(two, "spoiled")) as bob:
        async with synced(room_url(one, "fine")) as cid, synced(room_url(two, "fine")) as dan:
            text(ada).insert(0, "stays on one")  # still stored: only the relay of this room is lost
            text(cid).insert(0, "crosses")
            await wait_for(lambda: str(text(dan)) == "crosses")
            await asyncio.sleep(0.3)
            assert str(text(bob)) == ""
    for server in (one, two):
        assert metric_value(server, "collab_relay_skipped_total", "not_a_stream") == 1
        assert (await get(server, "/readyz")).status == 200  # one room's key, logged and counted: not the server


async def test_a_slow_redis_that_cannot_take_a_frame_gets_a_gap_marker_instead(
    start: StartServer, redis_url: str, relay_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collab.cluster import redis_relay

    monkeypatch.setattr(redis_relay, "MAX_QUEUE_BYTES", 1)  # every frame is too many: as if Redis were far behind
    one, two = await pair(start, redis_url, relay_prefix)
    async with synced(room_url(one, "doc")) as ada, synced(room_url(two, "doc")) as bob:
        text(ada).insert(0, "never published")
        await wait_for(lambda: str(text(bob)) == "never published", timeout=15)  # reloaded from the store
    assert metric_value(one, "collab_relay_skipped_total", "queue_full") >= 1
    assert metric_value(two, "collab_relay_gap_reloads_total") == 1


async def test_frames_kept_for_a_room_that_unloads_during_an_outage_are_owed_as_a_gap(
    start: StartServer, private_redis: PrivateRedis, relay_prefix: str
) -> None:
    one = await start(relay=private_redis.url, relay_prefix=relay_prefix, unload_after=0.2)
    two = await start(relay=private_redis.url, relay_prefix=relay_prefix)
    async with synced(room_url(two, "doc")) as bob:
        async with synced(room_url(one, "doc")) as ada:
            private_redis.stop()
            await wait_for(lambda: one.relay is not None and one.relay.problem is not None)
            text(ada).insert(0, "typed, then gone")
        await wait_for(lambda: "doc" not in one.rooms)  # unloaded: what it kept cannot be sent any more
        private_redis.start()
        await wait_for(lambda: str(text(bob)) == "typed, then gone", timeout=15)


async def test_an_acl_user_without_info_or_config_can_relay(
    start: StartServer, private_redis: PrivateRedis, relay_prefix: str
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    try:
        client.acl_setuser("collab", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all", "-@dangerous"])
    finally:
        client.close()
    url = private_redis.url.replace("redis://", "redis://collab:s3cret@")
    one, two = await pair(start, url, relay_prefix)
    async with synced(room_url(one, "doc")) as ada, synced(room_url(two, "doc")) as bob:
        text(ada).insert(0, "with a narrow user")
        await wait_for(lambda: str(text(bob)) == "with a narrow user")
    assert (await get(one, "/readyz")).status == 200
