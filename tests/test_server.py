"""A real server on 127.0.0.1 with real pycrdt clients over WebSocket."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pycrdt import Array, Doc, Map, Text

from collab.client import Client
from collab.server.app import CollabServer
from collab.store import StoredRecord

from .helpers import StartServer, get, room_url, synced, text, wait_for


async def test_two_clients_converge(server: CollabServer) -> None:
    url = room_url(server, "notes")
    async with synced(url) as alice, synced(url) as bob:
        text(alice).insert(0, "hello ")
        text(bob).insert(0, "world")
        await alice.wait_until(lambda: len(str(text(alice))) == 11)
        await bob.wait_until(lambda: str(text(bob)) == str(text(alice)))
        assert str(text(alice)) in ("hello world", "worldhello ")
        room = server.rooms.get("notes")
        assert room is not None and str(room.doc.get("content", type=Text)) == str(text(alice))


async def test_rooms_are_isolated(server: CollabServer) -> None:
    async with synced(room_url(server, "a")) as in_a, synced(room_url(server, "b")) as in_b:
        async with synced(room_url(server, "a")) as also_in_a:
            text(in_b).insert(0, "only b")
            text(in_a).insert(0, "only a")
            await also_in_a.wait_until(lambda: str(text(also_in_a)) == "only a")
            assert str(text(in_b)) == "only b"
            assert str(text(in_a)) == "only a"


async def test_percent_encoded_names_with_slashes_are_one_room(server: CollabServer) -> None:
    async with synced(f"ws://127.0.0.1:{server.port}/notes/doc%201?token=x") as first:
        text(first).insert(0, "same room")
        async with synced(room_url(server, "notes/doc 1")) as second:
            assert str(text(second)) == "same room"
    assert "notes/doc 1" in server.rooms


async def test_late_joiner_gets_everything(server: CollabServer) -> None:
    url = room_url(server, "late")
    async with synced(url) as writer:
        for n in range(200):
            text(writer).insert(len(str(text(writer))), f"{n},")
        expected = str(text(writer))
        async with synced(url) as late:
            await late.wait_until(lambda: str(text(late)) == expected)


async def test_offline_edits_merge_on_return(server: CollabServer) -> None:
    url = room_url(server, "offline")
    traveller_doc: Doc = Doc()
    async with synced(url) as stay_home:
        async with synced(url, traveller_doc) as traveller:
            text(stay_home).insert(0, "base.")
            await traveller.wait_until(lambda: str(text(traveller)) == "base.")
        # Disconnected: both edit.
        traveller_doc.get("content", type=Text).insert(5, " from the train")
        text(stay_home).insert(0, "home: ")
        async with synced(url, traveller_doc) as back:
            await back.wait_until(lambda: str(text(back)) == "home: base. from the train")
            await stay_home.wait_until(lambda: str(text(stay_home)) == "home: base. from the train")


async def test_awareness_is_shared_echoed_and_cleared_on_disconnect(server: CollabServer) -> None:
    url = room_url(server, "presence")
    async with synced(url) as watcher:
        leaver = await Client(url).connect()
        await leaver.synced.wait()
        leaver.set_awareness({"user": {"name": "Ada", "color": "#f00"}})
        await watcher.wait_until(lambda: leaver.client_id in watcher.awareness)
        assert watcher.awareness[leaver.client_id] == {"user": {"name": "Ada", "color": "#f00"}}
        # The sender hears its own state back (what keeps a lone stock client's connection alive).
        await leaver.wait_until(lambda: leaver.client_id in leaver.awareness)
        # A newcomer is told who is already there.
        async with synced(url) as newcomer:
            await newcomer.wait_until(lambda: leaver.client_id in newcomer.awareness)
            # Leaving abruptly (no awareness removal sent by the client) still clears the cursor.
            leaver.ws.transport.abort()
            await watcher.wait_until(lambda: leaver.client_id not in watcher.awareness)
            await newcomer.wait_until(lambda: leaver.client_id not in newcomer.awareness)


async def test_map_array_and_text_sync(server: CollabServer) -> None:
    url = room_url(server, "types")
    async with synced(url) as writer, synced(url) as reader:
        with writer.doc.transaction():
            writer.doc.get("meta", type=Map)["title"] = "Plan"
            writer.doc.get("items", type=Array).extend([1, "two", {"three": 3}])
            text(writer).insert(0, "body")
        await reader.wait_until(lambda: len(reader.doc.get("items", type=Array)) == 3)
        assert reader.doc.get("meta", type=Map).to_py() == {"title": "Plan"}
        assert reader.doc.get("items", type=Array).to_py() == [1.0, "two", {"three": 3.0}]
        assert str(text(reader)) == "body"


async def test_twenty_clients_in_one_room_converge(server: CollabServer) -> None:
    url = room_url(server, "crowd")
    clients = [await Client(url).connect() for _ in range(20)]
    try:
        await asyncio.gather(*(client.synced.wait() for client in clients))
        for n, client in enumerate(clients):
            text(client).insert(0, f"<{n}>")
        for client in clients:
            await client.wait_until(lambda: str(text(client)).count("<") == 20)  # noqa: B023 (awaited at once)
        final = {str(text(client)) for client in clients}
        assert len(final) == 1
        [merged] = final
        assert all(f"<{n}>" in merged for n in range(20))
        room = server.rooms.get("crowd")
        assert room is not None and str(room.doc.get("content", type=Text)) == str(text(clients[0]))
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_healthz_answers_over_plain_http(server: CollabServer) -> None:
    healthz = await get(server, "/healthz")
    assert (healthz.status, healthz.body) == (200, b"ok\n")
    assert (await get(server, "/nothing-here")).status == 404


async def test_concurrent_joiners_share_one_load(start_server: StartServer) -> None:
    first = await start_server(unload_after=0)
    async with synced(room_url(first, "shared")) as writer:
        text(writer).insert(0, "stored")
    await first.stop()
    second = await start_server()
    loads = 0
    original = second.store.load

    async def counting_load(name: str, at: float | None = None) -> list[StoredRecord]:  # counts real loads
        nonlocal loads
        loads += 1
        return await original(name, at)

    second.store.load = counting_load  # type: ignore[method-assign]
    clients = [Client(room_url(second, "shared")) for _ in range(5)]
    await asyncio.gather(*(client.connect() for client in clients))
    try:
        for client in clients:
            await client.wait_until(lambda: str(text(client)) == "stored")  # noqa: B023 (awaited at once)
        assert loads == 1
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_api_lists_stored_documents(server: CollabServer) -> None:
    async with synced(room_url(server, "listed/doc 1")) as writer:
        text(writer).insert(0, "some text")
        room = server.rooms.get("listed/doc 1")
        assert room is not None
        await wait_for(lambda: room.log_length > 0)
    await server.store.flush()

    listing = await get(server, "/api/docs")
    assert listing.status == 200 and listing.headers["content-type"] == "application/json"
    [document] = listing.json()["documents"]
    assert document["name"] == "listed/doc 1"
    assert document["size"] > 0
    assert document["updated_at"].endswith("Z")


async def test_a_server_runs_on_the_memory_engine(start_server: StartServer, tmp_path: Path) -> None:
    """`--db memory:`: the same server with no file at all (what unit tests of rooms and the server can use)."""
    server = await start_server(db="memory:")
    async with synced(room_url(server, "in memory")) as ada, synced(room_url(server, "in memory")) as bob:
        text(ada).insert(0, "nothing on disk")
        await bob.wait_until(lambda: str(text(bob)) == "nothing on disk")
    await server.store.flush()
    [info] = await server.store.documents("in memory")
    assert info.size > 0
    status, _, body = await get(server, "/readyz")
    assert (status, body) == (200, b"ready\n")
    assert not list(tmp_path.iterdir()), "nothing was written to the test's directory"
