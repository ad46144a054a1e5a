"""The stock Yjs client (npm yjs + y-websocket provider + ws) against collab, under Node.

Every test runs with the server on both persistent engines (`on_database`, and `server` here: a SQLite file,
then a fresh PostgreSQL database); the whole file takes a few seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pycrdt import Text

from collab.server.app import CollabServer

from .helpers import NodeClient, StartServer, needs_node, room_url, servers_on, synced, text

pytestmark = needs_node


def base_url(server: CollabServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


@pytest.fixture
async def on_database(database: str) -> AsyncIterator[StartServer]:
    """`start_server` on each persistent engine in turn."""
    async with servers_on(database) as start:
        yield start


@pytest.fixture
async def server(on_database: StartServer) -> CollabServer:
    """Conftest's `server`, on each engine."""
    return await on_database()


async def test_stock_clients_and_pycrdt_converge(server: CollabServer) -> None:
    async with NodeClient(base_url(server), "shared/notes") as js1, NodeClient(base_url(server), "shared/notes") as js2:
        await js1.synced()
        await js2.synced()
        async with synced(room_url(server, "shared/notes")) as py:
            js1.send("insert", index=0, value="from node one. ")
            js2.send("insert", index=0, value="from node two. ")
            text(py).insert(0, "from python. ")
            js1.send("setMap", key="title", value="Interop")
            js2.send("pushArray", values=[1, 2, 3])

            def complete(snapshot: dict) -> bool:
                return (
                    len(snapshot["text"]) == len("from node one. from node two. from python. ")
                    and snapshot["map"] == {"title": "Interop"}
                    and snapshot["array"] == [1, 2, 3]
                )

            first = await js1.wait_snapshot(complete)
            second = await js2.wait_snapshot(complete)
            assert first["text"] == second["text"]
            await py.wait_until(lambda: str(text(py)) == first["text"])
            room = server.rooms.get("shared/notes")
            assert room is not None
            assert str(room.doc.get("content", type=Text)) == first["text"]


async def test_stock_client_late_joiner_and_unicode(server: CollabServer) -> None:
    content = "Grüße, 世界! 👋 " * 50
    async with synced(room_url(server, "late")) as py:
        text(py).insert(0, content)
        async with NodeClient(base_url(server), "late") as js:
            await js.synced()
            snapshot = await js.wait_snapshot(lambda snap: len(snap["text"]) > 0)
            assert snapshot["text"] == content


async def test_stock_client_awareness_both_ways_and_cleanup(server: CollabServer) -> None:
    async with synced(room_url(server, "presence")) as py:
        py.set_awareness({"user": {"name": "Py"}})
        async with NodeClient(base_url(server), "presence") as js:
            await js.synced()
            js.send("awareness", state={"user": {"name": "Node", "color": "#0a0"}})
            snapshot = await js.wait_snapshot(lambda snap: str(py.client_id) in snap["awareness"])
            assert snapshot["awareness"][str(py.client_id)] == {"user": {"name": "Py"}}
            js_id = snapshot["clientID"]
            await py.wait_until(lambda: py.awareness.get(js_id) == {"user": {"name": "Node", "color": "#0a0"}})
        # The Node process is gone; its cursor must not linger.
        await py.wait_until(lambda: js_id not in py.awareness)


async def test_stock_client_sees_persisted_text_after_restart(on_database: StartServer) -> None:
    first = await on_database()
    async with NodeClient(base_url(first), "durable") as js:
        await js.synced()
        js.send("insert", index=0, value="survives restarts")
        async with synced(room_url(first, "durable")) as py:
            await py.wait_until(lambda: str(text(py)) == "survives restarts")
    await first.stop()
    second = await on_database()
    async with NodeClient(base_url(second), "durable") as js:
        await js.synced()
        snapshot = await js.wait_snapshot(lambda snap: snap["text"] != "")
        assert snapshot["text"] == "survives restarts"


async def test_stock_client_stops_reconnecting_after_a_permanent_refusal(server: CollabServer) -> None:
    async with NodeClient(base_url(server), "bad\u0007name") as js:
        closed = await js.wait_event(lambda event: event["event"] == "closed")
        assert closed["code"] == 4400
        assert "control character" in closed["reason"]
        snapshot = await js.snapshot()
        assert snapshot["synced"] is False
