"""Webhooks: signed events, debounced per document, delivered at least once and in order, surviving kill -9.

Every test has a real HTTP receiver (tests/webhook_receiver.py) and a real
server; the outbox is the real database's (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from collab.config import Settings
from collab.errors import ConfigError
from collab.server.app import CollabServer
from collab.store import WriteOp
from collab.store.engines import locate
from collab.store.outbox import OutboxRow
from collab.webhooks import InvalidSignatureError, verify

from .helpers import (
    ServerProcess,
    call,
    collab_cli,
    keystrokes,
    room_url,
    run_in_process,
    servers_on,
    synced,
    text,
    wait_for,
    wait_stored,
)
from .webhook_receiver import Receiver

SECRET = "webhook-secret-for-the-tests"

FAST: dict[str, Any] = {"webhook_secret": SECRET, "webhook_quiet": 0.3, "webhook_max_wait": 2.0}
"""Settings of a server whose document.changed events come 0.3 s after typing stops."""


def state_vector_of(event: dict[str, Any]) -> bytes:
    return base64.b64decode(event["state_vector"])


def told(receiver: Receiver, name: str, state_vector: bytes) -> bool:
    """Whether a document.changed of `name` said the document was at `state_vector`."""
    return any(state_vector_of(event) == state_vector for event in receiver.events("document.changed", name))


async def outbox_rows(server: CollabServer) -> list[OutboxRow]:
    return (await server.store.outbox(lambda outbox: outbox.listing())).rows


def kinds(events: list[dict[str, Any]]) -> list[str]:
    """The event types in order, runs of document.changed folded into one (how many come is the debounce's)."""
    folded: list[str] = []
    for event in events:
        if not (folded and folded[-1] == event["type"] == "document.changed"):
            folded.append(event["type"])
    return folded


async def test_events_arrive_signed_and_verifiable(database: str) -> None:
    async with Receiver() as receiver, servers_on(database) as start:
        server = await start(webhooks=(receiver.url,), **FAST)
        async with synced(room_url(server, "notes")) as client:
            text(client).insert(0, "hello")
            await receiver.wait_until(lambda: len(receiver.events("document.changed", "notes")) >= 1)
            [created] = receiver.events("document.created", "notes")
            [changed] = receiver.events("document.changed", "notes")
            assert state_vector_of(changed) == client.doc.get_state()
        receiver.verify_all(SECRET)
        request = receiver.received[-1]
        # The README's snippet, with the standard library only.
        stamp = request.headers["x-collab-timestamp"]
        expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + request.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers["x-collab-signature"], f"sha256={expected}")
        assert request.headers["x-collab-delivery"] == changed["id"]
        assert request.headers["x-collab-event"] == "document.changed"
        assert request.headers["content-type"] == "application/json"
        assert created["id"] != changed["id"]
        with pytest.raises(InvalidSignatureError, match="does not match"):
            verify("another-secret-of-some-length", request.body, request.headers, now=request.at)
        with pytest.raises(InvalidSignatureError, match="does not match"):
            verify(SECRET, request.body + b" ", request.headers, now=request.at)
        with pytest.raises(InvalidSignatureError, match="away"):
            verify(SECRET, request.body, request.headers, now=request.at + 3600)


async def test_debounce_holds_per_document_under_continuous_typing_in_two(db_path: Path) -> None:
    quiet, max_wait, typing_for = 0.5, 1.5, 4.0
    async with Receiver() as receiver, servers_on(db_path) as start:
        server = await start(
            webhooks=(receiver.url,), webhook_secret=SECRET, webhook_quiet=quiet, webhook_max_wait=max_wait
        )
        async with synced(room_url(server, "a")) as a, synced(room_url(server, "b")) as b:
            keystrokes = 0
            started = time.monotonic()
            while time.monotonic() - started < typing_for:  # a keystroke in each every 50 ms: never quiet
                text(a).insert(keystrokes, "a")
                text(b).insert(keystrokes, "b")
                keystrokes += 1
                await asyncio.sleep(0.05)
            during = {name: len(receiver.events("document.changed", name)) for name in ("a", "b")}
            for client, name in ((a, "a"), (b, "b")):
                await receiver.wait_until(lambda: told(receiver, name, client.doc.get_state()))  # noqa: B023
        for name in ("a", "b"):
            events = receiver.events("document.changed", name)
            # While typing went on, the events still came, every max_wait or so, for both documents at once.
            assert during[name] >= 1, (name, during)
            assert 2 <= len(events) <= typing_for / max_wait + 3, (name, len(events), keystrokes)
            # Each covers the changes after the one before: in order, none overlapping.
            for earlier, later in itertools.pairwise(events):
                assert earlier["at_unix"] < later.get("from_unix", later["at_unix"])
            assert len({event["id"] for event in events}) == len(events)


async def test_a_receiver_down_then_up_gets_every_event_in_order_once(database: str) -> None:
    receiver = Receiver()  # not started: connections to it are refused
    async with servers_on(database) as start:
        server = await start(webhooks=(receiver.url,), **FAST)
        for name in ("one", "two"):
            async with synced(room_url(server, name)) as client:
                for sealed, word in enumerate(("first ", "second "), start=1):
                    text(client).insert(0, word)
                    await wait_for_rows(server, lambda rows: sealed_changes(rows, name) == sealed)  # noqa: B023
        assert (await call(server, "DELETE", "/api/docs/two")).status == 200
        assert (await call(server, "POST", "/api/docs/one/rename?to=uno")).status == 200
        assert server.webhooks is not None
        await wait_for(lambda: server.webhooks is not None and server.webhooks.deliveries.get("failed") >= 2)
        await wait_for_rows(server, lambda rows: all(row.state == "pending" for row in rows) and len(rows) >= 8)
        metrics = (await call(server, "GET", "/metrics")).body.decode()
        assert 'collab_webhook_deliveries_total{result="failed"}' in metrics
        assert "collab_webhook_pending " in metrics
        pending = await outbox_rows(server)
        async with receiver:
            await wait_for_rows(server, lambda rows: not rows, timeout=30)
        ids = [event["id"] for event in receiver.events()]
        assert len(ids) == len(set(ids)) == len({row.uid for row in pending})
        assert kinds(receiver.events(document="one")) == ["document.created", "document.changed", "document.renamed"]
        assert kinds(receiver.events(document="two")) == ["document.created", "document.changed", "document.deleted"]
        assert receiver.events("document.renamed")[0]["to"] == "uno"
        # In order of the changes: each document.changed's range after the one before.
        for name in ("one", "two"):
            changed = receiver.events("document.changed", name)
            assert len(changed) >= 2
            assert [event["at_unix"] for event in changed] == sorted(event["at_unix"] for event in changed)
        receiver.verify_all(SECRET)


def sealed_changes(rows: list[OutboxRow], name: str) -> int:
    """How many document.changed of `name` are sealed (waiting for delivery), counted once per event."""
    return len({row.event_id for row in rows if row.name == name and row.type == "document.changed" and row.target})


async def wait_for_rows(server: CollabServer, predicate: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate(await outbox_rows(server)):
            await asyncio.sleep(0.05)


async def test_kill_9_between_a_change_and_its_delivery_still_delivers_after_restart(database: str) -> None:
    async with Receiver() as receiver:
        receiver.status = 503
        server = ServerProcess(
            database, "--webhook", receiver.url, "--webhook-secret", SECRET, "--webhook-quiet", "3s"
        ).start()
        try:
            async with synced(server.url("sent")) as client:
                text(client).insert(0, "tried, refused")
                await receiver.wait_until(lambda: bool(receiver.received))  # its document.created, refused
                await wait_for_listing(database, lambda states: states.get(("sent", "document.changed")) == "pending")
            async with synced(server.url("gathering")) as client:
                text(client).insert(0, "committed, not yet sealed")
                await wait_stored(database, "gathering", "committed, not yet sealed")
            server.kill()  # within the quiet 3 s: its document.changed is not sealed yet
        except BaseException:
            server.kill()
            raise
        states = listing(database)
        assert states[("sent", "document.created")] == states[("sent", "document.changed")] == "pending"
        assert states[("gathering", "document.changed")] == "gathering"
        refused_id = receiver.received[0].event["id"]
        receiver.status = 200
        server.start()
        try:
            await receiver.wait_until(
                lambda: (
                    len(receiver.events("document.changed", "sent")) == 1
                    and len(receiver.events("document.changed", "gathering")) == 1
                )
            )
            await wait_for_listing(database, lambda states: not states)  # each recorded as delivered
        finally:
            server.stop()
        # The same event, by its idempotency id, as the one refused before the crash.
        assert receiver.events("document.created", "sent")[0]["id"] == refused_id
        assert [event["type"] for event in receiver.events(document="sent")] == ["document.created", "document.changed"]
        assert "0 pending, 0 failed, 0 gathering" in collab_cli("webhooks", "--db", database).stdout


def listing(database: str) -> dict[tuple[str, str], str]:
    """`collab webhooks --json`, as (document, event type) -> state."""
    events = json.loads(collab_cli("webhooks", "--db", database, "--json").stdout)["events"]
    return {(event["document"], event["type"]): event["state"] for event in events}


async def wait_for_listing(database: str, predicate: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate(await asyncio.to_thread(listing, database)):
            await asyncio.sleep(0.2)


async def test_a_slow_receiver_never_slows_editing(db_path: Path) -> None:
    async with Receiver() as receiver, servers_on(db_path) as start:
        receiver.delay = 8.0
        server = await start(webhooks=(receiver.url,), webhook_timeout=10.0, **FAST)
        async with synced(room_url(server, "busy")) as writer, synced(room_url(server, "busy")) as reader:
            text(writer).insert(0, "first")
            await wait_for(lambda: receiver.open_requests > 0)
            for index in range(10):  # each keystroke reaches the other client while the webhook hangs
                text(writer).insert(0, str(index))
                await reader.wait_until(lambda: str(text(reader))[0] == str(index), timeout=0.5)  # noqa: B023
            assert receiver.open_requests > 0 and not receiver.received


async def test_exports_are_included_up_to_the_limit(db_path: Path) -> None:
    async with Receiver() as receiver, servers_on(db_path) as start:
        server = await start(webhooks=(receiver.url,), webhook_include="text", webhook_include_limit=100, **FAST)
        for name, typed in (("short", "a short text"), ("long", "x" * 101)):
            async with synced(room_url(server, name)) as client:
                text(client).insert(0, typed)
                await receiver.wait_until(lambda: bool(receiver.events("document.changed", name)))  # noqa: B023
        assert receiver.events("document.changed", "short")[0]["text"] == "a short text"
        long = receiver.events("document.changed", "long")[0]
        assert "text" not in long and "larger than 100 bytes (101)" in long["text_omitted"]


async def test_connection_events_when_asked_for(db_path: Path) -> None:
    async with Receiver() as receiver, servers_on(db_path) as start:
        server = await start(
            webhooks=(receiver.url,), webhook_events=("connection.opened", "connection.closed"), **FAST
        )
        async with synced(room_url(server, "room")) as client:
            text(client).insert(0, "typed: no document event is asked for")
            await receiver.wait_until(lambda: bool(receiver.events("connection.opened", "room")))
        await receiver.wait_until(lambda: bool(receiver.events("connection.closed", "room")))
        listed = json.loads(collab_cli("webhooks", "--db", str(db_path), "--json").stdout)["events"]
        assert not [event for event in listed if event["type"].startswith("document.")]  # nor recorded
        opened, closed = receiver.events("connection.opened")[0], receiver.events("connection.closed")[0]
        assert opened["connection"]["id"] == closed["connection"]["id"]
        assert opened["connection"]["subject"] is None
        assert not receiver.events("document.changed") and not receiver.events("document.created")


async def test_a_delivery_given_up_on_is_listed_and_the_next_ones_go(db_path: Path) -> None:
    async with Receiver() as receiver, servers_on(db_path) as start:
        receiver.status = 500
        server = await start(webhooks=(receiver.url,), webhook_retry_for=1.0, **FAST)
        assert server.webhooks is not None
        async with synced(room_url(server, "doc")) as client:
            text(client).insert(0, "given up")
            await wait_for(lambda: server.webhooks is not None and server.webhooks.deliveries.get("gave_up") >= 1)
            receiver.status = 200
            text(client).insert(0, "then ")
            await receiver.wait_until(lambda: told(receiver, "doc", client.doc.get_state()))  # the event after them
        failed = json.loads(collab_cli("webhooks", "--db", str(db_path), "--failed", "--json").stdout)["events"]
        assert failed[0]["type"] == "document.created"  # given up first; what came after it went on
        assert all(event["state"] == "failed" and event["last_error"] == "answered 500 Whatever" for event in failed)
        assert (
            'collab_webhook_deliveries_total{result="gave_up"}' in (await call(server, "GET", "/metrics")).body.decode()
        )


def test_a_webhook_needs_a_secret_and_a_url() -> None:
    with pytest.raises(ConfigError, match="--webhook needs --webhook-secret"):
        CollabServer(Settings(db="memory:", webhooks=("http://127.0.0.1:9/x",)))
    result = collab_cli("serve", "--db", "memory:", "--webhook", "ftp://127.0.0.1/x", check=False)
    assert result.returncode == 2 and "not an http:// or https:// URL" in result.stderr
    result = collab_cli("serve", "--db", "memory:", "--webhook-events", "document.changed,document.read", check=False)
    assert result.returncode == 2 and "document.read" in result.stderr
    settings = Settings.load({}, {"COLLAB_WEBHOOKS": "http://127.0.0.1:9/a, https://example.org/b"})
    assert settings.webhooks == ("http://127.0.0.1:9/a", "https://example.org/b")
    assert Settings.load({"webhooks": ["http://127.0.0.1:9/c"]}, {}).webhooks == ("http://127.0.0.1:9/c",)
    with pytest.raises(ConfigError, match="COLLAB_WEBHOOK_SECRET is empty"):
        Settings.load({}, {"COLLAB_WEBHOOK_SECRET": ""})
    for url, error in (
        ("http://127.0.0.1:99999/x", "not a port number"),
        ("http://127.0.0.1:abc/x", "not a port number"),
        ("http://127.0.0.1/a b", "no spaces or control characters"),
        ("http://127.0.0.1/a\r\nX-Injected: 1", "no spaces or control characters"),
    ):
        result = collab_cli("serve", "--db", "memory:", "--webhook", url, check=False)
        assert result.returncode == 2 and error in result.stderr, (url, result.stderr)
    twice = Settings.load({}, {"COLLAB_WEBHOOKS": "http://127.0.0.1:9/a http://127.0.0.1:9/a"})
    assert twice.webhooks == ("http://127.0.0.1:9/a",)


async def test_in_a_cluster_one_process_sends_and_another_takes_over(
    db_path: Path, redis_url: str, relay_prefix: str
) -> None:
    async with Receiver() as receiver, servers_on(db_path) as start:
        options: dict[str, Any] = {"relay": redis_url, "relay_prefix": relay_prefix, "webhooks": (receiver.url,)}
        first, second = await start(**options, **FAST), await start(**options, **FAST)
        assert first.webhooks is not None and second.webhooks is not None
        await wait_for(lambda: first.webhooks.holding != second.webhooks.holding)  # type: ignore[union-attr]
        sender, other = (first, second) if first.webhooks.holding else (second, first)
        async with synced(room_url(sender, "shared")) as a, synced(room_url(other, "shared")) as b:
            text(a).insert(0, "from the sender's process. ")
            text(b).insert(0, "from the other's. ")
            await wait_for(lambda: str(text(a)) == str(text(b)) and len(str(text(a))) > 30)
            await receiver.wait_until(lambda: told(receiver, "shared", a.doc.get_state()))
        assert len(receiver.events("document.created", "shared")) == 1
        await sender.stop()  # gives the lease up: the other takes it at its next renewal
        async with synced(room_url(other, "after")) as client:
            text(client).insert(0, "after the sender stopped")
            await receiver.wait_until(lambda: bool(receiver.events("document.changed", "after")), timeout=30)
        assert other.webhooks is not None and other.webhooks.holding
        ids = [event["id"] for event in receiver.events()]
        assert len(ids) == len(set(ids))


async def test_a_document_the_receiver_refuses_backs_off_alone(db_path: Path) -> None:
    async with Receiver() as receiver, servers_on(db_path) as start:
        receiver.status_for = lambda event: 404 if event["document"] == "refused" else 200
        server = await start(webhooks=(receiver.url,), **FAST)
        async with synced(room_url(server, "refused")) as refused, synced(room_url(server, "fine")) as fine:
            text(refused).insert(0, "never taken")
            started = time.monotonic()
            for index in range(6):  # the other document's events keep going meanwhile, each one delivered
                text(fine).insert(0, f"{index} ")
                await receiver.wait_until(lambda: told(receiver, "fine", fine.doc.get_state()))
            elapsed = time.monotonic() - started
        attempts = [item for item in receiver.received if item.event["document"] == "refused"]
        # Only its document.created was tried (its changed waits behind it), backing off: 1 s, 2 s, 4 s...
        assert {item.event["type"] for item in attempts} == {"document.created"}
        assert 1 <= len(attempts) <= 2 + int(elapsed).bit_length(), (len(attempts), elapsed)
        assert len(receiver.events(document="fine")) >= 7  # its created and a changed per keystroke, all taken


async def test_a_change_made_while_no_server_runs_has_its_event(db_path: Path) -> None:
    async with Receiver() as receiver, servers_on(db_path) as start:
        server = await start(webhooks=(receiver.url,), **FAST)
        async with synced(room_url(server, "offline")) as client:
            text(client).insert(0, "typed")
            await receiver.wait_until(lambda: bool(receiver.events("document.changed", "offline")))
        await server.stop()
        await run_in_process("delete", "--db", str(db_path), "--yes", "offline")  # the database directly
        await start(webhooks=(receiver.url,), **FAST)
        await receiver.wait_until(lambda: bool(receiver.events("document.deleted", "offline")))


def test_webhooks_lists_the_first_rows_counts_them_all_retries_and_forgets(db_path: Path) -> None:
    server = locate(str(db_path)).engine(
        Settings(db=str(db_path), webhooks=("http://127.0.0.1:9/x",), webhook_secret=SECRET), serving=True
    )
    server.open()
    try:
        server.commit([WriteOp("append", f"doc-{index}", keystrokes("x")[0], 100.0) for index in range(1100)])
        [first, *_] = server.outbox(lambda outbox: outbox.queued("http://127.0.0.1:9/x", 1e10, 0.0, 1))
        server.outbox(
            lambda outbox: outbox.retry(first.event_id, "http://127.0.0.1:9/x", 9, None, 2.0, "no", give_up=True)
        )
    finally:
        server.close()
    shown = collab_cli("webhooks", "--db", str(db_path)).stdout.splitlines()
    assert shown[-1] == "1099 pending, 1 failed, 1100 gathering (the first 1000 shown)"
    assert (
        "1 delivery(ies) given up on will be tried again"
        in collab_cli("webhooks", "--db", str(db_path), "--retry").stderr
    )
    assert json.loads(collab_cli("webhooks", "--db", str(db_path), "--json").stdout)["totals"]["failed"] == 0
    # The server last started with that URL: nothing to forget; nor once one started without any webhook (the
    # backlog is not dropped for a server run once without --webhook). Started with another URL: they go.
    assert "forgot 0" in collab_cli("webhooks", "--db", str(db_path), "--forget").stderr
    for webhooks in ((), ("http://127.0.0.1:9/another",)):
        restarted = locate(str(db_path)).engine(
            Settings(db=str(db_path), webhooks=webhooks, webhook_secret=SECRET), serving=True
        )
        restarted.open()
        restarted.close()
        forgot = "forgot 1100" if webhooks else "forgot 0"
        assert forgot in collab_cli("webhooks", "--db", str(db_path), "--forget").stderr
    last = collab_cli("webhooks", "--db", str(db_path)).stdout.splitlines()[-1]
    assert last.startswith("0 pending, 0 failed, 1100 gathering")
