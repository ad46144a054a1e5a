"""collab's own transport, on uvloop as `collab serve` runs it: framing, fragments, pings, closes, shutdown.

The rest of the suite runs servers on asyncio's own loop; this module runs them on uvloop (see this
folder's conftest.py), whose transports are not asyncio's classes, so both loops are covered. It also
checks that the installed websockets has the sans-I/O API the transport relies on.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

import pytest
import uvloop
from pycrdt import Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode

from collab.client import Client
from collab.server.app import CollabServer
from collab.sync.protocol import Update

from ..conftest import StartServer
from ..helpers import room_url, synced, text


def test_the_installed_websockets_is_a_supported_one() -> None:
    """pyproject.toml asks for websockets>=17: the sans-I/O API used here is in every release since."""
    major = int(version("websockets").split(".")[0])
    assert major >= 17
    from websockets.server import ServerProtocol

    for name in ("receive_data", "receive_eof", "events_received", "data_to_send", "accept", "send_response"):
        assert callable(getattr(ServerProtocol, name))
    for name in ("send_close", "send_ping", "select_subprotocol"):
        assert callable(getattr(ServerProtocol, name))


async def test_runs_on_uvloop(server: CollabServer) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\nok\n")
    async with synced(room_url(server, "loop")) as ada, synced(room_url(server, "loop")) as bob:
        text(ada).insert(0, "over uvloop")
        await bob.wait_until(lambda: str(text(bob)) == "over uvloop")


async def test_a_fragmented_message_is_joined(server: CollabServer) -> None:
    async with synced(room_url(server, "fragments")) as reader:
        writer = Client(room_url(server, "fragments"))
        text(writer).insert(0, "sent in pieces " * 100)
        update = Update(writer.doc.get_update()).encode()
        async with connect(room_url(server, "fragments"), compression=None) as raw:
            await raw.send([update[i : i + 100] for i in range(0, len(update), 100)])  # an iterable: fragments
            await reader.wait_until(lambda: str(text(reader)) == "sent in pieces " * 100)


async def test_a_fragmented_text_message_closes_with_1003(server: CollabServer) -> None:
    async with connect(room_url(server, "text"), compression=None) as raw:
        await raw.send(["not ", "binary"])
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await raw.recv()
        assert raw.close_code == 1003


async def test_a_message_over_the_limit_closes_with_1009_in_fragments_too(start_server: StartServer) -> None:
    server = await start_server(max_message_size=1000)
    async with synced(room_url(server, "big")) as bystander:
        async with connect(room_url(server, "big"), compression=None, max_size=None) as raw:
            await raw.send([b"\x00\x02" + b"x" * 600, b"y" * 600])  # each fragment fits, the message does not
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    while True:
                        await raw.recv()
            assert raw.close_code == 1009
        text(bystander).insert(0, "unharmed")
        await bystander.resync()
        room = server.rooms.get("big")
        assert room is not None and str(room.doc.get("content", type=Text)) == "unharmed"


async def test_a_client_ping_is_answered(server: CollabServer) -> None:
    async with connect(room_url(server, "ping"), compression=None) as raw:
        pong = await raw.ping(b"are you there")
        async with asyncio.timeout(5):
            latency = await pong
        assert latency >= 0


async def test_a_shutdown_closes_every_connection_with_1001(start_server: StartServer) -> None:
    server = await start_server()
    clients = [await Client(room_url(server, f"room-{i % 2}")).connect() for i in range(4)]
    await server.stop()
    for client in clients:
        code, _ = await client.wait_closed()
        assert code == 1001
    assert not server.peers


async def test_a_held_back_sender_loses_nothing(start_server: StartServer) -> None:
    """Past its burst, a sender is read more slowly (reading paused, then resumed), and all of it arrives."""
    server = await start_server(max_messages_per_second=20)
    async with synced(room_url(server, "held")) as reader, synced(room_url(server, "held")) as typist:
        started = asyncio.get_running_loop().time()
        for index in range(80):  # twice the burst of 40
            text(typist).insert(index, "k")
        await reader.wait_until(lambda: str(text(reader)) == "k" * 80, timeout=20)
        took = asyncio.get_running_loop().time() - started
    assert took > 1.0  # the 40 past the burst came at about 20 a second


async def test_an_update_sent_just_before_the_close_counts(server: CollabServer) -> None:
    """A client's last update and its close frame arrive in one read: the update is still accepted."""
    writer_doc = Client(room_url(server, "last")).doc
    writer_doc.get("content", type=Text).insert(0, "last words")
    update = Update(writer_doc.get_update()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"GET /last HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    frames = Frame(Opcode.BINARY, update).serialize(mask=True, extensions=[])
    frames += Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(mask=True, extensions=[])
    writer.write(frames)  # one write: the server reads both at once
    await reader.read()  # its step 1, then its close answer, then the end of the stream
    writer.close()
    room = server.rooms.get("last")
    assert room is not None and str(room.doc.get("content", type=Text)) == "last words"
