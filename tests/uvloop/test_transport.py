"""collab's own transport, on uvloop as `collab serve` runs it: framing, fragments, pings, closes, shutdown.

The rest of the suite runs servers on asyncio's own loop; this module runs them on uvloop (see this
folder's conftest.py), whose transports are not asyncio's classes, so both loops are covered. It also
checks that the installed websockets has the sans-I/O API the transport relies on.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from importlib.metadata import version

import pytest
import uvloop
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from collab.client import Client
from collab.http.router import HttpRequest, respond
from collab.server.app import CollabServer
from collab.server.transport import CLOSE_TIMEOUT
from collab.store import StoredRecord
from collab.sync.protocol import QueryAwareness, Update

from ..helpers import SECRET, StartServer, get, keystrokes, room_url, synced, text, token, wait_for, with_token


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


class RawClient:
    """A WebSocket client as bytes (websockets' sans-I/O `ClientProtocol`): it writes exactly what a test says,
    when it says, and never answers a ping on its own."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol) -> None:
        self.reader, self.writer, self.protocol = reader, writer, protocol

    @classmethod
    async def connect(cls, server: CollabServer, path: str) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{server.port}{path}"))
        protocol.send_request(protocol.connect())
        client = cls(reader, writer, protocol)
        client.write()
        async with asyncio.timeout(5):
            while protocol.state is State.CONNECTING:
                protocol.receive_data(await reader.read(65536))
        client.write()  # an answer to what came with the 101 (a close frame, when the server refused at once)
        return client

    def write(self) -> None:
        """Everything queued, in one write."""
        self.writer.write(b"".join(self.protocol.data_to_send()))

    async def read_to_end(self, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while data := await self.reader.read(65536):
                self.protocol.receive_data(data)
                self.write()  # the answer to a close frame (and to a ping: the tests that need none never read)
        self.protocol.receive_eof()  # settles its close code
        self.writer.close()


async def test_updates_held_back_then_a_close_all_count(start_server: StartServer) -> None:
    """Past its burst, a client's updates wait while reading is held back; its close must not drop them."""
    server = await start_server(max_messages_per_second=10)
    client = await RawClient.connect(server, "/held-close")
    for update in keystrokes("x" * 100):
        client.protocol.send_binary(Update(update).encode())
    client.protocol.send_close(1000, "bye")
    started = asyncio.get_running_loop().time()
    client.write()  # the burst and the close in one write: one read on the server
    await client.read_to_end()
    assert asyncio.get_running_loop().time() - started < CLOSE_TIMEOUT, "a clean close, not the close timer's cut"
    room = server.rooms.get("held-close")
    assert room is not None and str(room.doc.get("content", type=Text)) == "x" * 100


async def test_a_shutdown_keeps_what_the_rate_limit_held_back(start_server: StartServer) -> None:
    server = await start_server(max_messages_per_second=10)
    client = await RawClient.connect(server, "/held-shutdown")
    for update in keystrokes("y" * 60):
        client.protocol.send_binary(Update(update).encode())
    client.write()

    def applied() -> int:
        room = server.rooms.get("held-shutdown")
        return len(str(room.doc.get("content", type=Text))) if room is not None else 0

    await wait_for(lambda: applied() >= 20)  # the burst is in; the rest is held back
    assert applied() < 60, "held back: what the shutdown must still handle"
    reading = asyncio.create_task(client.read_to_end())  # answers the server's close
    await server.stop()
    await reading
    room = server.rooms.get("held-shutdown")
    assert room is not None and str(room.doc.get("content", type=Text)) == "y" * 60


async def test_a_slow_load_does_not_trip_the_keepalive(start_server: StartServer) -> None:
    server = await start_server(keepalive=0.3)
    real_load = server.store.load

    async def slow_load(name: str, at: float | None = None) -> list[StoredRecord]:  # a busy database
        await asyncio.sleep(1.5)
        return await real_load(name, at)

    server.store.load = slow_load  # type: ignore[method-assign]
    async with synced(room_url(server, "slow")) as client:
        text(client).insert(0, "loaded late, still connected")
        await client.resync()
    assert client.close_code == 1000


async def test_a_client_that_never_answers_pings_is_dropped_even_after_talking(start_server: StartServer) -> None:
    server = await start_server(keepalive=0.2)
    client = await RawClient.connect(server, "/no-pongs")
    await wait_for(lambda: all(peer.pinged_at for peer in server.peers) and bool(server.peers))  # silent: pinged
    client.protocol.send_binary(QueryAwareness().encode())
    client.write()  # heard from after the ping, though without a pong; then silent for good
    async with asyncio.timeout(3):
        while await client.reader.read(65536):
            pass  # the server cuts it: the stream ends
    await wait_for(lambda: not server.peers)


async def test_a_long_upload_is_not_mistaken_for_silence(start_server: StartServer) -> None:
    """A message arriving over longer than the keepalive interval: its bytes show the client is alive."""
    server = await start_server(keepalive=0.2)
    async with synced(room_url(server, "upload")) as reader:
        client = await RawClient.connect(server, "/upload")
        writer_doc: Doc = Doc()
        writer_doc.get("content", type=Text).insert(0, "z" * 200_000)
        client.protocol.send_binary(Update(writer_doc.get_update()).encode())
        [frame] = client.protocol.data_to_send()
        for start in range(0, len(frame), 8192):  # about 1.2 s for the one message
            client.writer.write(frame[start : start + 8192])
            await asyncio.sleep(0.05)
        await reader.wait_until(lambda: len(str(text(reader))) == 200_000)


async def test_a_malformed_path_closes_with_4400(server: CollabServer, caplog: pytest.LogCaptureFixture) -> None:
    client = await RawClient.connect(server, "//[x/room")
    await client.read_to_end()
    assert client.protocol.close_code == 4400
    assert "Fatal error" not in caplog.text and "Traceback" not in caplog.text


async def test_a_shutdown_lets_an_http_answer_under_way_finish(start_server: StartServer) -> None:
    server = await start_server()

    started = asyncio.Event()

    async def slow(request: HttpRequest) -> Response:
        started.set()
        await asyncio.sleep(0.5)
        return respond(200, "finished\n")

    server.http.route("/slow", slow)
    answer = asyncio.create_task(get(server, "/slow"))
    await asyncio.wait_for(started.wait(), 10)  # the answer is under way
    await server.stop()
    status, _, body = await answer
    assert (status, body) == (200, b"finished\n")


async def test_a_client_that_half_closes_after_its_request_gets_the_answer(server: CollabServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    writer.write_eof()  # as `nc -N` does
    async with asyncio.timeout(5):
        response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"ok\n")


async def test_a_closed_connection_does_not_keep_its_room_in_memory(start_server: StartServer) -> None:
    """Sessions keeps a connection until its token expires (a heap entry); the room must not be kept with it."""
    server = await start_server(auth_secret=SECRET, unload_after=0.05)
    async with synced(with_token(room_url(server, "big"), token("big", ttl=86400))) as client:
        text(client).insert(0, "x" * 1_000_000)
        await client.resync()
        loaded = server.rooms.get("big")
        assert loaded is not None
        room = weakref.ref(loaded)
        del loaded
    await wait_for(lambda: "big" not in server.rooms)
    gc.collect()
    assert room() is None
