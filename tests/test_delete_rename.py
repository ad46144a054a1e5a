"""Deleting and renaming documents through the HTTP API: connected clients closed with 4410/4411, the store and
its history changed, refusals; on one server, through the stock client, and across the processes of a cluster.
The store's side (every engine) is tests/test_store_delete.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from collab.auth import Permission
from collab.client import Client
from collab.errors import DOCUMENT_DELETED, DOCUMENT_RENAMED, TRY_AGAIN_LATER
from collab.server.app import CollabServer

from .helpers import (
    NodeClient,
    StartServer,
    call,
    get,
    needs_node,
    room_url,
    servers_on,
    stored_text,
    synced,
    text,
    token,
    wait_for,
    with_token,
)


async def test_deleting_closes_the_room_s_clients_and_removes_the_document(server: CollabServer, db_path: Path) -> None:
    async with synced(room_url(server, "notes/plan")) as ada:
        text(ada).insert(0, "soon gone")
        await wait_for(lambda: stored_text(db_path, "notes/plan") == "soon gone")
        reply = await call(server, "DELETE", "/api/docs/notes%2Fplan")
        assert (reply.status, reply.json()) == (200, {"deleted": "notes/plan"})
        assert await ada.wait_closed() == (DOCUMENT_DELETED, "document deleted")
    assert stored_text(db_path, "notes/plan") is None
    assert (await get(server, "/api/docs/notes%2Fplan")).status == 404
    async with synced(room_url(server, "notes/plan")) as later:  # a new document by that name starts empty
        assert str(text(later)) == ""
    assert (await call(server, "DELETE", "/api/docs/never")).status == 404


async def test_renaming_keeps_the_history_and_closes_the_old_room_s_clients(
    server: CollabServer, db_path: Path
) -> None:
    async with synced(room_url(server, "draft")) as ada:
        text(ada).insert(0, "v1")
        await wait_for(lambda: stored_text(db_path, "draft") == "v1")
        reply = await call(server, "POST", "/api/docs/draft/rename?to=final%2Fv1")
        assert (reply.status, reply.json()) == (200, {"renamed": "draft", "to": "final/v1"})
        assert await ada.wait_closed() == (DOCUMENT_RENAMED, "renamed to final/v1")
    assert stored_text(db_path, "draft") is None and stored_text(db_path, "final/v1") == "v1"
    async with synced(room_url(server, "final/v1")) as bob:
        assert str(text(bob)) == "v1"
    async with synced(room_url(server, "other")) as cid:
        text(cid).insert(0, "x")
        await wait_for(lambda: stored_text(db_path, "other") == "x")
    assert (await call(server, "POST", "/api/docs/other/rename?to=final%2Fv1")).status == 409
    assert (await call(server, "POST", "/api/docs/nothing/rename?to=y")).status == 404
    assert (await call(server, "POST", "/api/docs/other/rename")).status == 400
    assert stored_text(db_path, "other") == "x"


async def test_deleting_and_renaming_need_write_access_to_every_name(secured: CollabServer, db_path: Path) -> None:
    writer = token("team/", Permission.WRITE)
    async with synced(with_token(room_url(secured, "team/a"), writer)) as ada:
        text(ada).insert(0, "kept")
        await wait_for(lambda: stored_text(db_path, "team/a") == "kept")
    reader = token("team/", Permission.READ)
    assert (await call(secured, "DELETE", "/api/docs/team%2Fa")).status == 401
    assert (await call(secured, "DELETE", "/api/docs/team%2Fa", bearer=reader)).status == 403
    assert (await call(secured, "POST", "/api/docs/team%2Fa/rename?to=team%2Fb", bearer=reader)).status == 403
    only_a = token("team/a", Permission.WRITE)
    assert (await call(secured, "POST", "/api/docs/team%2Fa/rename?to=elsewhere", bearer=only_a)).status == 403
    read_elsewhere = token("elsewhere", Permission.READ)
    path = f"/api/docs/team%2Fa/rename?to=elsewhere&to_token={read_elsewhere}"
    assert (await call(secured, "POST", path, bearer=only_a)).status == 403  # a second token, but read only
    assert stored_text(db_path, "team/a") == "kept"
    path = f"/api/docs/team%2Fa/rename?to=elsewhere&to_token={token('elsewhere', Permission.WRITE)}"
    assert (await call(secured, "POST", path, bearer=only_a)).status == 200  # one token for each name
    assert (await call(secured, "DELETE", "/api/docs/elsewhere", bearer=token("elsewhere"))).status == 200


@needs_node
async def test_the_stock_client_stops_on_a_deleted_document_and_its_offline_copy_comes_back_as_a_new_one(
    server: CollabServer, db_path: Path
) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    async with NodeClient(url, "memo") as open_tab:
        await open_tab.synced()
        open_tab.send("insert", value="typed in a tab")
        await wait_for(lambda: stored_text(db_path, "memo") == "typed in a tab")
        assert (await call(server, "DELETE", "/api/docs/memo")).status == 200
        await open_tab.wait_event(lambda event: event.get("code") == DOCUMENT_DELETED)
        await asyncio.sleep(1.5)  # the stock client treats 4400-4499 as final: it does not reconnect
        assert not server.peers and "memo" not in server.rooms
        assert stored_text(db_path, "memo") is None
        # Its copy is still in the tab: told to connect again (a reload, say), it sends it all, as a new document.
        open_tab.send("connect")
        await wait_for(lambda: stored_text(db_path, "memo") == "typed in a tab")


async def test_deleting_on_one_process_closes_the_clients_of_the_others(
    db_path: Path, redis_url: str, relay_prefix: str
) -> None:
    async with servers_on(db_path) as start:
        start_server: StartServer = start
        one = await start_server(relay=redis_url, relay_prefix=relay_prefix)
        two = await start_server(relay=redis_url, relay_prefix=relay_prefix)
        async with synced(room_url(one, "shared")) as ada, synced(room_url(two, "shared")) as bob:
            text(ada).insert(0, "both see it")
            await wait_for(lambda: str(text(bob)) == "both see it")
            deleting = asyncio.create_task(call(one, "DELETE", "/api/docs/shared"))
            assert (await bob.wait_closed())[0] == DOCUMENT_DELETED
            assert (await ada.wait_closed())[0] == DOCUMENT_DELETED
            # While the others are told (it waits for them about a second), a join of that name is refused.
            refused = await Client(room_url(one, "shared")).connect()
            assert (await refused.wait_closed())[0] == TRY_AGAIN_LATER
            assert (await deleting).status == 200
        assert stored_text(db_path, "shared") is None
        async with synced(room_url(two, "shared")) as fresh:  # nothing of the old one, from Redis either
            assert str(text(fresh)) == ""


async def test_renaming_onto_a_name_another_process_holds_unstored_sends_its_clients_to_the_renamed_document(
    db_path: Path, redis_url: str, relay_prefix: str
) -> None:
    async with servers_on(db_path) as start:
        one = await start(relay=redis_url, relay_prefix=relay_prefix)
        two = await start(relay=redis_url, relay_prefix=relay_prefix)
        async with synced(room_url(one, "src")) as ada:
            text(ada).insert(0, "the content")
            await wait_for(lambda: stored_text(db_path, "src") == "the content")
        async with synced(room_url(two, "dst")) as waiting:  # an empty room: nothing stored by that name
            assert (await call(one, "POST", "/api/docs/src/rename?to=dst")).status == 200
            assert (await waiting.wait_closed())[0] == TRY_AGAIN_LATER
        async with synced(room_url(two, "dst")) as back:
            assert str(text(back)) == "the content"
        assert stored_text(db_path, "dst") == "the content" and stored_text(db_path, "src") is None
