"""Awareness that no connection can abuse, against real servers (the rules: collab/presence.py).

Each attack is sent exactly as described in issue 9 while a healthy client in the same room and one
in another room keep working.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc
from websockets.asyncio.server import ServerConnection, serve

from collab.auth import Permission
from collab.client import Client
from collab.errors import ProtocolError
from collab.server.app import CollabServer
from collab.sync.presence import CLOCK_TOO_HIGH, MAX_CLIENT_IDS, NOT_OWNER, TOO_MANY_IDS
from collab.sync.protocol import (
    MAX_AWARENESS_ENTRIES,
    MAX_AWARENESS_STATE_BYTES,
    MAX_AWARENESS_STATE_DEPTH,
    MAX_VAR_UINT,
    Awareness,
    AwarenessEntry,
    SyncStep2,
    Update,
    awareness_message,
    encode_var_bytes,
    encode_var_uint,
    parse_frame,
)

from .helpers import (
    INTEROP,
    SECRET,
    NodeClient,
    StartServer,
    no_token,
    presence_still_works,
    room_url,
    synced,
    token,
)


class Watcher(Client):
    """A client that also keeps every awareness entry it received, in order."""

    def __init__(self, url: str, doc: Doc | None = None) -> None:
        super().__init__(url, doc)
        self.entries: list[AwarenessEntry] = []

    def _handle(self, message: object) -> None:
        if isinstance(message, Awareness):
            self.entries.extend(message.entries)
        super()._handle(message)

    def saw(self, client_id: int) -> list[AwarenessEntry]:
        return [entry for entry in self.entries if entry.client_id == client_id]


@asynccontextmanager
async def bystanders(
    server: CollabServer, room: str, query: Callable[[str], str] = no_token
) -> AsyncIterator[tuple[Watcher, Client]]:
    """A healthy client in `room` showing its presence, and one in another room; `query(room)`: a token."""
    async with (
        Watcher(room_url(server, room) + query(room)) as watcher,
        synced(room_url(server, "elsewhere") + query("elsewhere")) as other,
    ):
        await watcher.synced.wait()
        watcher.set_awareness({"user": "watcher"})
        await watcher.wait_until(lambda: watcher.client_id in watcher.awareness)
        yield watcher, other


def entries_frame(entries: list[tuple[int, int, str]]) -> bytes:
    return awareness_message([AwarenessEntry(client_id, clock, state) for client_id, clock, state in entries])


async def sync_point(client: Client, watcher: Watcher, marker: Any) -> None:
    """Once the watcher sees `client`'s marker state, it has received everything the server sent it before."""
    client.set_awareness(marker)
    await watcher.wait_until(lambda: watcher.awareness.get(client.client_id) == marker)


# Ownership.


async def test_a_connection_cannot_change_or_remove_another_users_presence(server: CollabServer) -> None:
    async with bystanders(server, "team") as (watcher, other), synced(room_url(server, "team")) as alice:
        alice.set_awareness({"user": "alice"})
        await watcher.wait_until(lambda: watcher.awareness.get(alice.client_id) == {"user": "alice"})
        async with synced(room_url(server, "team")) as mallory:
            hijack = [(alice.client_id, 100, '{"user":"mallory"}'), (alice.client_id, 101, "null")]
            mallory.send_raw(entries_frame(hijack))
            mallory.send_raw(entries_frame([(watcher.client_id, 100, "null")]))
            await sync_point(mallory, watcher, {"user": "mallory"})
            assert watcher.awareness[alice.client_id] == {"user": "alice"}
            assert watcher.awareness[watcher.client_id] == {"user": "watcher"}
            assert all(entry.clock < 100 for entry in watcher.entries)
            assert server.metrics.rejected.get(NOT_OWNER) == 3
            alice.set_awareness({"user": "alice", "cursor": 3})
            await watcher.wait_until(lambda: watcher.awareness.get(alice.client_id) == {"user": "alice", "cursor": 3})
        await presence_still_works(server, "team", watcher, other)


async def test_a_quick_reconnect_keeps_showing_the_users_cursor(server: CollabServer) -> None:
    """Without access control: the new connection's state is held until the old one is gone, then shown."""
    url = room_url(server, "reconnect")
    async with bystanders(server, "reconnect") as (watcher, other):
        old = await Client(url, Doc(client_id=4242)).connect()
        old.set_awareness({"user": "ada", "cursor": 1})
        await watcher.wait_until(lambda: watcher.awareness.get(4242) == {"user": "ada", "cursor": 1})
        # The stock client reconnects with the same id and a fresh state with a higher clock, while the
        # server still holds the old connection (its network dropped: no close frame, no FIN yet).
        async with synced(url, Doc(client_id=4242)) as new, synced(url) as stranger:
            new.send_raw(entries_frame([(4242, 2, '{"user":"ada","cursor":2}')]))
            stranger.send_raw(entries_frame([(4242, 2, '{"user":"not ada"}')]))
            await sync_point(stranger, watcher, {"user": "stranger"})
            assert watcher.awareness[4242] == {"user": "ada", "cursor": 1}
            old.ws.transport.abort()
            await watcher.wait_until(lambda: watcher.awareness.get(4242) == {"user": "ada", "cursor": 2})
            assert all(not entry.is_removal for entry in watcher.saw(4242)), "the cursor never disappeared"
            await old.close()
        await watcher.wait_until(lambda: 4242 not in watcher.awareness)
        await presence_still_works(server, "reconnect", watcher, other)


async def test_with_tokens_the_same_subject_takes_its_id_over_at_once(start_server: StartServer) -> None:
    server = await start_server(auth_secret=SECRET)

    def query(subject: str, permission: Permission = Permission.WRITE, room: str = "secure") -> str:
        return "?token=" + token(room, permission, subject=subject)

    def watcher_token(room: str) -> str:
        return query("watcher", room=room)

    url = room_url(server, "secure")
    async with bystanders(server, "secure", watcher_token) as (watcher, other):
        old = await Client(url + query("ada"), Doc(client_id=77)).connect()
        old.set_awareness({"user": "ada", "cursor": 1})
        await watcher.wait_until(lambda: watcher.awareness.get(77) == {"user": "ada", "cursor": 1})
        async with synced(url + query("eve", Permission.READ)) as eve:
            eve.send_raw(entries_frame([(77, 50, '{"user":"eve"}')]))
            await sync_point(eve, watcher, {"user": "eve"})
            assert watcher.awareness[77] == {"user": "ada", "cursor": 1}
            async with synced(url + query("ada"), Doc(client_id=77)) as new:
                new.send_raw(entries_frame([(77, 2, '{"user":"ada","cursor":2}')]))
                await watcher.wait_until(lambda: watcher.awareness.get(77) == {"user": "ada", "cursor": 2})
                await old.close()  # the old connection no longer owns the id: nothing is removed
                new.send_raw(entries_frame([(77, 3, '{"user":"ada","cursor":3}')]))
                await watcher.wait_until(lambda: watcher.awareness.get(77) == {"user": "ada", "cursor": 3})
                assert all(not entry.is_removal for entry in watcher.saw(77))
            await watcher.wait_until(lambda: 77 not in watcher.awareness)
            # Remembered as ada's: eve cannot bring it back in her name.
            eve.send_raw(entries_frame([(77, 60, '{"user":"eve"}')]))
            await sync_point(eve, watcher, {"user": "eve", "again": True})
            assert 77 not in watcher.awareness
        await presence_still_works(server, "secure", watcher, other, watcher_token)


# Lock-out.


@pytest.mark.skipif(
    shutil.which("node") is None or not (INTEROP / "node_modules" / "y-websocket").is_dir(),
    reason="needs node and the npm packages scripts/test installs",
)
async def test_a_huge_clock_for_a_stock_clients_id_does_not_lock_it_out(start_server: StartServer) -> None:
    """Issue 9: a read-only connection sent the victim's id with clock 2**53 - 1; the victim adopted it,
    then sent 2**53, was closed with 1002, reconnected, and was closed again, 35 times in 8 s."""
    server = await start_server(auth_secret=SECRET)

    def query(permission: Permission, room: str = "locked") -> str:
        return "?token=" + token(room, permission)

    def writer(room: str) -> str:
        return query(Permission.WRITE, room)

    async with bystanders(server, "locked", writer) as (watcher, other):
        async with NodeClient(f"ws://127.0.0.1:{server.port}", "locked" + query(Permission.WRITE)) as victim:
            await victim.synced()
            victim.send("awareness", state={"user": "victim"})
            victim_id = (await victim.snapshot())["clientID"]
            await watcher.wait_until(lambda: watcher.awareness.get(victim_id) == {"user": "victim"})
            async with synced(room_url(server, "locked") + query(Permission.READ)) as attacker:
                attacker.send_raw(entries_frame([(victim_id, MAX_VAR_UINT, '{"user":"mallory"}')]))
                await sync_point(attacker, watcher, {"user": "attacker"})
                victim.send("awareness", state={"user": "victim", "cursor": 2})
                await watcher.wait_until(lambda: watcher.awareness.get(victim_id) == {"user": "victim", "cursor": 2})
                snapshot = await victim.snapshot()
                assert snapshot["awareness"][str(victim_id)] == {"user": "victim", "cursor": 2}
            assert not [event for event in victim.events if event["event"] in ("closed", "connection-close")]
        await presence_still_works(server, "locked", watcher, other, writer)


async def test_the_server_never_sends_a_clock_javascript_cannot_read(server: CollabServer) -> None:
    async with bystanders(server, "clocks") as (watcher, other):
        async with synced(room_url(server, "clocks")) as pusher:
            me = pusher.client_id
            # Above 2**53 - 2 is dropped, not closed: a stock client pushed there must not be locked out.
            pusher.send_raw(entries_frame([(me, MAX_VAR_UINT, '{"n":1}')]))
            entry = encode_var_uint(me) + encode_var_uint(2**60) + encode_var_bytes(b"{}")
            pusher.send_raw(b"\x01" + encode_var_bytes(encode_var_uint(1) + entry))
            pusher.send_raw(entries_frame([(me, MAX_VAR_UINT - 1, '{"n":2}')]))
            await watcher.wait_until(lambda: watcher.awareness.get(me) == {"n": 2})
            assert server.metrics.rejected.get(CLOCK_TOO_HIGH) == 2
        # Its removal goes out with clock + 1 = 2**53 - 1, the largest a JavaScript client reads exactly.
        await watcher.wait_until(lambda: me not in watcher.awareness)
        assert max(entry.clock for entry in watcher.entries) == MAX_VAR_UINT
        await presence_still_works(server, "clocks", watcher, other)


async def test_the_client_survives_any_frame(caplog: pytest.LogCaptureFixture) -> None:
    """collab.client's reader (which `collab import` uses) logs what it cannot use and carries on."""
    nan_entry = encode_var_uint(5) + encode_var_uint(1) + encode_var_bytes(b"NaN")
    nan = b"\x01" + encode_var_bytes(encode_var_uint(1) + nan_entry)

    async def hostile(ws: ServerConnection) -> None:
        await ws.send("a text frame")
        await ws.send(b"\xff\xfe\xfd")
        await ws.send(nan)
        await ws.send(Update(b"\x05\x04\x03").encode())  # well framed, not a Yjs update
        await ws.send(entries_frame([(9, 2**53, '{"user":"far"}')]))
        await ws.send(SyncStep2(b"\x00\x00").encode())
        await ws.wait_closed()

    with caplog.at_level(logging.WARNING, logger="collab.client"):
        async with serve(hostile, "127.0.0.1", 0) as hostile_server:
            port = hostile_server.sockets[0].getsockname()[1]
            async with Client(f"ws://127.0.0.1:{port}/any") as client:
                async with asyncio.timeout(10):
                    await client.synced.wait()
                assert client.awareness == {9: {"user": "far"}}
                assert client.close_code is None
    assert len([record for record in caplog.records if record.name == "collab.client"]) == 4


# State validity and size.

DEEP = "[" * 1000 + "]" * 1000
INVALID_STATES = {
    "NaN": ("NaN", 1002, "NaN is not JSON"),
    "Infinity": ('{"x":Infinity}', 1002, "Infinity is not JSON"),
    "-Infinity": ("[-Infinity]", 1002, "-Infinity is not JSON"),
    "nested 1,000 deep": (DEEP, 1002, "nested deeper than 32"),
    "nested 33 deep": ("[" * 33 + "]" * 33, 1002, "nested deeper than 32"),
    "60,000 open brackets": ("[" * 60_000, 1002, "nested deeper than 32"),
    "over 64 KiB": (json.dumps("x" * MAX_AWARENESS_STATE_BYTES), 1009, "more than 65536"),
    "not JSON": ("{nope", 1002, "not JSON"),
}


@pytest.mark.parametrize("kind", sorted(INVALID_STATES))
async def test_invalid_states_close_the_sender_and_never_reach_others(server: CollabServer, kind: str) -> None:
    state, code, reason = INVALID_STATES[kind]
    async with bystanders(server, "states") as (watcher, other):
        attacker = await Client(room_url(server, "states")).connect()
        await attacker.synced.wait()
        attacker.send_raw(entries_frame([(attacker.client_id, 1, state)]))
        closed_with = await attacker.wait_closed()
        assert closed_with[0] == code and reason in (closed_with[1] or ""), closed_with
        async with synced(room_url(server, "states")) as marker:
            await sync_point(marker, watcher, {"user": "marker"})  # all the server sent before has arrived
        assert watcher.saw(attacker.client_id) == []
        await presence_still_works(server, "states", watcher, other)


async def test_states_within_the_limits_are_relayed_as_sent(server: CollabServer) -> None:
    deepest = "[" * MAX_AWARENESS_STATE_DEPTH + "]" * MAX_AWARENESS_STATE_DEPTH
    brackets_in_text = json.dumps({"note": "[" * 5000 + "{" * 5000})
    largest = json.dumps("y" * (MAX_AWARENESS_STATE_BYTES - 2))
    async with bystanders(server, "fine") as (watcher, other), synced(room_url(server, "fine")) as sender:
        for clock, state in enumerate((deepest, brackets_in_text, largest), start=1):
            sent = AwarenessEntry(sender.client_id, clock, state)
            sender.send_raw(awareness_message([sent]))
            await watcher.wait_until(lambda: watcher.saw(sent.client_id)[-1:] == [sent])  # noqa: B023
        await presence_still_works(server, "fine", watcher, other)


# Counts.


async def test_a_million_fake_ids_are_refused_before_they_are_decoded(server: CollabServer) -> None:
    count = 1_000_000
    payload = encode_var_uint(count) + b"".join(encode_var_uint(2**21 + i) + b"\x01\x02{}" for i in range(count))
    frame = b"\x01" + encode_var_bytes(payload)
    assert len(frame) > 7_600_000
    async with bystanders(server, "million") as (watcher, other):
        attacker = await Client(room_url(server, "million")).connect()
        await attacker.synced.wait()
        attacker.send_raw(frame)
        code, reason = await attacker.wait_closed()
        assert code == 1009 and f"more than {MAX_AWARENESS_ENTRIES}" in (reason or "")
        assert len(server.rooms.get("million").presence) == 1  # type: ignore[union-attr]
        await presence_still_works(server, "million", watcher, other)


async def test_a_connection_introduces_a_few_ids_and_cannot_store_unknown_removals(server: CollabServer) -> None:
    async with bystanders(server, "ids") as (watcher, other), synced(room_url(server, "ids")) as greedy:
        greedy.send_raw(entries_frame([(1000 + i, 1, '{"fake":true}') for i in range(MAX_AWARENESS_ENTRIES)]))
        greedy.send_raw(entries_frame([(500_000 + i, 1, "null") for i in range(MAX_AWARENESS_ENTRIES)]))
        await watcher.wait_until(lambda: all(1000 + i in watcher.awareness for i in range(MAX_CLIENT_IDS)))
        await sync_point(watcher, watcher, {"user": "watcher", "sync": True})
        assert sorted(entry.client_id for entry in watcher.entries if 1000 <= entry.client_id < 600_000) == [
            1000 + i for i in range(MAX_CLIENT_IDS)
        ]
        assert server.metrics.rejected.get(TOO_MANY_IDS) == MAX_AWARENESS_ENTRIES - MAX_CLIENT_IDS
        room = server.rooms.get("ids")
        assert room is not None and len(room.presence) == 1 + MAX_CLIENT_IDS and not room.presence._removed
        await presence_still_works(server, "ids", watcher, other)


def nesting(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet='[]{}"\\ ab', max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TRICKY_TEXT, children, max_size=3),
    max_leaves=12,
)


@given(JSON_VALUES, st.lists(st.booleans(), max_size=2 * MAX_AWARENESS_STATE_DEPTH))
def test_the_depth_limit_is_exact(inner: object, wrappers: list[bool]) -> None:
    value = inner
    for as_list in wrappers:
        value = [value] if as_list else {"[{": value}
    frame = entries_frame([(1, 1, json.dumps(value))])
    if nesting(value) <= MAX_AWARENESS_STATE_DEPTH:
        assert parse_frame(frame) == [Awareness((AwarenessEntry(1, 1, json.dumps(value)),))]
    else:
        with pytest.raises(ProtocolError, match="nested deeper"):
            parse_frame(frame)


@given(st.text(alphabet='[]{}"\\ ,:1aNIn', max_size=3000))
def test_any_state_text_is_accepted_or_refused_cleanly(state: str) -> None:
    try:
        parse_frame(entries_frame([(1, 1, state)]))
    except ProtocolError:
        assert not strict_json_within_depth(state), state
    else:
        assert strict_json_within_depth(state), state


def strict_json_within_depth(state: str) -> bool:
    """What the parser should accept, decided another way: json.loads reads it, it uses no NaN or
    Infinity, and it nests at most MAX_AWARENESS_STATE_DEPTH deep."""
    constants: list[str] = []
    try:
        value = json.loads(state, parse_constant=lambda name: constants.append(name))
    except (ValueError, RecursionError):
        return False
    try:
        depth = nesting(value)
    except RecursionError:
        return False  # deeper than the recursion limit: far past the depth limit
    return not constants and depth <= MAX_AWARENESS_STATE_DEPTH
