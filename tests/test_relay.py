"""The relay's own framing (WebSocketPeer writes frames itself, bypassing websockets' send path)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from collab.server.app import CollabServer
from collab.server.outbox import server_frame
from collab.sync.protocol import SyncStep1
from tests.helpers import room_url, synced, text


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_server_frame_is_what_websockets_would_send(size: int) -> None:
    message = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert server_frame(message) == Frame(Opcode.BINARY, message).serialize(mask=False, extensions=[])


def test_server_frame_is_made_once_per_message() -> None:
    message = b"\x00\x02\x02\x00\x00"
    assert server_frame(message) is server_frame(message)
    assert server_frame(bytes(message)) == server_frame(message)


async def test_updates_of_every_frame_length_reach_the_other_clients(server: CollabServer) -> None:
    url = room_url(server, "frame-lengths")
    async with synced(url) as writer, synced(url) as reader:
        expected = ""
        for length in (1, 120, 70_000, 10):  # 7-bit, 16-bit and 64-bit WebSocket lengths
            text(writer).insert(len(expected), "x" * length)
            expected += "x" * length
        await reader.wait_until(lambda: str(text(reader)) == expected)


async def test_a_reply_queued_before_a_protocol_error_is_sent_before_the_close(server: CollabServer) -> None:
    """The server answers a sync step 1 and then meets garbage in the same read: answer first, then 1002."""
    async with synced(room_url(server, "reply-then-error")) as client:
        before = client.received_frames
        step1 = Frame(Opcode.BINARY, SyncStep1(b"\x00").encode()).serialize(mask=True, extensions=[])
        garbage = Frame(Opcode.BINARY, b"\x09").serialize(mask=True, extensions=[])
        client.ws.transport.write(step1 + garbage)  # one write: the server reads both in one turn
        code, _ = await client.wait_closed()
        assert code == 1002
        assert client.received_frames == before + 1  # the sync step 2 answer
