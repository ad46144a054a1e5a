"""Garbage on one connection closes that connection alone; everyone else carries on."""

from __future__ import annotations

import logging

import pytest
from pycrdt import Doc, Text

from collab.client import Client
from collab.server.app import CollabServer
from collab.sync.protocol import AwarenessEntry, SyncStep1, Update, awareness_message, encode_var_uint

from .helpers import StartServer, room_url, still_syncs, synced, text, wait_for


def valid_update_frame() -> bytes:
    doc: Doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    doc.get("content", type=Text).insert(0, "attack")
    return Update(updates[0]).encode()


BAD_FRAMES = {
    "garbage": bytes(range(200, 256)),
    "unknown message type": b"\x09\x00",
    "truncated update": valid_update_frame()[:-3],
    "invalid update bytes": b"\x00\x02" + encode_var_uint(5) + b"\xff\xfe\xfd\xfc\xfb",
    "valid then invalid update": valid_update_frame() + b"\x00\x02\x03\x01\x02\x03",
    "awareness that is not JSON": awareness_message([AwarenessEntry(1, 1, "{nope")]),
    "bad state vector": SyncStep1(b"\x00").encode()[:2] + b"\x02\x05\x05",
}


@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
async def test_malformed_frames_close_only_the_sender(
    server: CollabServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = room_url(server, "target")
    async with synced(url) as healthy:
        text(healthy).insert(0, "safe.")
        attacker = await Client(url).connect()
        await attacker.synced.wait()
        with caplog.at_level(logging.WARNING, logger="collab.server"):
            attacker.send_raw(BAD_FRAMES[kind])
            code, reason = await attacker.wait_closed()
            assert code == 1002, (code, reason)
            assert reason
            await wait_for(lambda: any(getattr(record, "fields", {}).get("code") == 1002 for record in caplog.records))
        [logged] = [record for record in caplog.records if getattr(record, "fields", {}).get("code") == 1002]
        assert logged.fields["room"] == "target" and logged.fields["reason"]  # type: ignore[attr-defined]
        assert "attack" not in await still_syncs(url, healthy, "still here")


async def test_bad_utf8_closes_with_1007(server: CollabServer) -> None:
    url = room_url(server, "utf8")
    async with synced(url) as healthy:
        attacker = await Client(url).connect()
        payload = b"\x01" + encode_var_uint(1) + encode_var_uint(1) + b"\x02\xc3\x28"
        attacker.send_raw(b"\x01" + encode_var_uint(len(payload)) + payload)
        assert (await attacker.wait_closed())[0] == 1007
        assert "attack" not in await still_syncs(url, healthy, "fine")


async def test_text_frames_close_with_1003(server: CollabServer) -> None:
    url = room_url(server, "text-frame")
    async with synced(url) as healthy:
        attacker = await Client(url).connect()
        attacker.send_raw("hello")
        assert (await attacker.wait_closed())[0] == 1003
        assert "attack" not in await still_syncs(url, healthy, "fine")


async def test_oversized_messages_close_with_1009(start_server: StartServer) -> None:
    server = await start_server(max_message_size=4096)
    url = room_url(server, "big")
    async with synced(url) as healthy:
        attacker = await Client(url).connect()
        await attacker.synced.wait()
        attacker.send_raw(b"\x00\x02" + encode_var_uint(8000) + b"\x00" * 8000)
        assert (await attacker.wait_closed())[0] == 1009
        assert "attack" not in await still_syncs(url, healthy, "fine")


async def test_big_offline_documents_are_accepted_by_default(server: CollabServer) -> None:
    """A client returning with megabytes of offline edits must not be refused."""
    big: Doc = Doc()
    big.get("content", type=Text).insert(0, "x" * 3_000_000)
    async with synced(room_url(server, "big-offline"), big), synced(room_url(server, "big-offline")) as reader:
        await reader.wait_until(lambda: len(str(text(reader))) == 3_000_000)


@pytest.mark.parametrize(
    ("path", "complaint"),
    [
        ("/", "no room name"),
        ("/bad%0Aname", "control character"),
        ("/" + "n" * 300, "limit is 255"),
        ("/%20padded", "whitespace"),
        ("/%ff%fe", "not valid UTF-8"),
    ],
)
async def test_invalid_room_names_are_refused_permanently(server: CollabServer, path: str, complaint: str) -> None:
    client = await Client(f"ws://127.0.0.1:{server.port}{path}").connect()
    code, reason = await client.wait_closed()
    assert code == 4400
    assert reason is not None and complaint in reason
    assert len(server.rooms) == 0
