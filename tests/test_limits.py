"""Each limit trips with its documented close code while a well-behaved client carries on."""

from __future__ import annotations

import asyncio

from collab.client import Client
from collab.sync.protocol import AwarenessEntry, awareness_message

from .helpers import StartServer, room_url, still_works, synced, text, wait_for


async def test_too_many_connections_are_closed_with_1013(start_server: StartServer) -> None:
    server = await start_server(max_connections=2)
    async with synced(room_url(server, "a")) as first, synced(room_url(server, "b")):
        extra = await Client(room_url(server, "c")).connect()
        assert (await extra.wait_closed())[0] == 1013
        await still_works(server, first, "a", "ok")
    assert server.metrics.rejected.get("ServerBusyError") == 1


async def test_a_full_room_and_too_many_rooms_are_closed_with_1013(start_server: StartServer) -> None:
    server = await start_server(max_room_connections=1, max_rooms=1)
    async with synced(room_url(server, "only")) as first:
        same_room = await Client(room_url(server, "only")).connect()
        code, reason = await same_room.wait_closed()
        assert code == 1013 and "limit of 1 connections" in (reason or "")
        other_room = await Client(room_url(server, "another")).connect()
        code, reason = await other_room.wait_closed()
        assert code == 1013 and "limit of 1 documents" in (reason or "")
        await still_works(server, first, "only", "fine")


async def test_a_flooding_client_is_slowed_not_closed(start_server: StartServer) -> None:
    """Faster than --max-messages-per-second: read more slowly, every message handled (see test_fairness)."""
    server = await start_server(max_messages_per_second=50)
    async with synced(room_url(server, "flood")) as polite, synced(room_url(server, "other")) as other:
        flooder = await Client(room_url(server, "flood")).connect()
        await flooder.synced.wait()
        for clock in range(1, 200):
            flooder.send_raw(awareness_message([AwarenessEntry(flooder.client_id, clock, f'{{"spam":{clock}}}')]))
        await polite.wait_until(lambda: polite.awareness.get(flooder.client_id) == {"spam": 199})
        assert flooder.close_code is None
        await still_works(server, polite, "flood", "calm")
        await still_works(server, other, "other", "calm")
        # Typing at a human pace stays well under the limit.
        for char in "typing":
            text(polite).insert(0, char)
            await polite.resync()
        assert polite.close_code is None


async def test_a_client_that_never_completes_the_handshake_is_dropped(start_server: StartServer) -> None:
    server = await start_server(handshake_timeout=0.2)
    async with synced(room_url(server, "handshake")) as healthy:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /handshake HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never finishes the request
        async with asyncio.timeout(5):  # well before websockets' own 10 s default would act
            assert await reader.read() == b"", "the server closed the connection"
        writer.close()
        await still_works(server, healthy, "handshake", "alive")


async def test_a_client_that_reads_too_slowly_is_closed_with_1013(start_server: StartServer) -> None:
    server = await start_server(max_buffered=256 * 1024, slow_client_grace=0.5)
    async with synced(room_url(server, "slow")) as writer, synced(room_url(server, "slow")) as healthy:
        slow = await Client(room_url(server, "slow")).connect()
        await slow.synced.wait()
        slow.ws.transport.pause_reading()  # stops reading: the kernel buffers, then the server's, fill up
        chunk = "x" * 50_000
        for _ in range(400):  # 20 MB in all, far beyond what the sockets and the cap hold
            text(writer).insert(len(str(text(writer))), chunk)
            await asyncio.sleep(0)
            if server.metrics.rejected.get("slow_client"):
                break
        await wait_for(lambda: server.metrics.rejected.get("slow_client") == 1)
        await writer.resync()
        await healthy.wait_until(lambda: len(str(text(healthy))) == len(str(text(writer))))
        slow.ws.transport.resume_reading()
        code, reason = await slow.wait_closed(timeout=30)
        assert code == 1013 and "too slow" in (reason or "")
        # The slow client's reconnection resyncs everything.
        async with synced(room_url(server, "slow")) as back:
            assert len(str(text(back))) == len(str(text(writer)))


async def test_a_silent_dead_peer_is_dropped_and_its_cursor_cleared(start_server: StartServer) -> None:
    server = await start_server(keepalive=0.2)
    async with synced(room_url(server, "keepalive")) as watcher:
        # An idle but live client answers the pings and stays.
        idle = await Client(room_url(server, "keepalive")).connect()
        await idle.synced.wait()
        ghost = await Client(room_url(server, "keepalive")).connect()
        await ghost.synced.wait()
        ghost.set_awareness({"user": "ghost"})
        await watcher.wait_until(lambda: ghost.client_id in watcher.awareness)
        ghost.ws.transport.pause_reading()  # like a peer whose machine went to sleep: no pong ever comes
        await watcher.wait_until(lambda: ghost.client_id not in watcher.awareness)
        assert len(server.peers) == 2
        assert idle.close_code is None
        await idle.close()
