"""The per-connection rules without a socket: clients and a room wired through an in-memory pipe.

In the spirit of h11's `ConnectionPair`: every byte a client sends goes through `Connection.receive`,
every byte the server sends comes out of the connection's output, and the test moves them by hand.
"""

from __future__ import annotations

import pytest
from pycrdt import Doc, Text

from collab.auth import Access, Permission, mint_token
from collab.errors import (
    ForbiddenError,
    InvalidRoomNameError,
    ProtocolError,
    RateLimitError,
    UnauthenticatedError,
    UnsupportedDataError,
)
from collab.metrics import Counter
from collab.store.memory import MemoryStore
from collab.sync.connection import READ_ONLY_NOTICE, Connection, ConnectionRules
from collab.sync.protocol import (
    Auth,
    Awareness,
    AwarenessEntry,
    Message,
    SyncStep1,
    SyncStep2,
    Update,
    awareness_message,
    parse_frame,
)
from collab.sync.room import Room

from .helpers import text_of

SECRET = b"a secret of at least sixteen bytes"


class Counts:
    """What a connection counts, in collab's own counters."""

    def __init__(self) -> None:
        self.rejected = Counter("rejected", "refused", ("reason",))
        self.auth_failures = Counter("auth_failures", "refused tokens", ("reason",))
        self.received: list[Message] = []

    def count_received(self, messages: list[Message]) -> None:
        self.received.extend(messages)


class Client:
    """A y-websocket client as bytes: its Doc, what it has sent, what the server sent it."""

    def __init__(self) -> None:
        self.doc: Doc = Doc()
        self.text = self.doc.get("content", type=Text)
        self.inbox: list[bytes] = []
        """Messages from the server not yet read."""
        self.received: list[Message] = []
        """Every message read from the server, in order."""
        self.outbox: list[bytes] = [SyncStep1(self.doc.get_state()).encode()]
        """Messages for the server not yet delivered: a client opens with its step 1."""
        self.auth: list[str] = []

    def type(self, index: int, text: str) -> None:
        before = self.doc.get_state()
        self.text.insert(index, text)
        self.outbox.append(Update(self.doc.get_update(before)).encode())

    def read(self) -> None:
        """Handle what the server sent, as the stock client does."""
        inbox = list(self.inbox)
        self.inbox.clear()  # in place: the connection holds its append
        for frame in inbox:
            for message in parse_frame(frame):
                self.received.append(message)
                if isinstance(message, SyncStep1):
                    self.outbox.append(SyncStep2(self.doc.get_update(message.state_vector)).encode())
                elif isinstance(message, SyncStep2 | Update):
                    self.doc.apply_update(message.update)
                elif isinstance(message, Auth):
                    self.auth.append(message.reason)


class ConnectionPair:
    """A room and any number of clients, each connected through a `Connection`; `pump` moves the bytes."""

    def __init__(self, store: MemoryStore, *, access: Access | None = None, rules: ConnectionRules | None = None):
        self.access = access or Access(None)
        self.rules = rules or ConnectionRules()
        self.counts = Counts()
        self.room = Room("notes", store)
        self.now = 100.0
        self.waits: list[float] = []

    def connect(self, path: str = "/notes", subprotocols: tuple[str, ...] = ()) -> tuple[Client, Connection]:
        client = Client()
        connection = Connection(str(len(self.room.peers) + 1), client.inbox.append, self.rules, self.counts)
        name = connection.admit(path, subprotocols, self.access)
        assert name == self.room.name
        self.room.join(connection)
        connection.joined(self.room, self.now)
        return client, connection

    def pump(self, *pairs: tuple[Client, Connection], rounds: int = 10) -> None:
        """Deliver every client's messages and let each read its replies, until nothing moves."""
        for _ in range(rounds):
            moved = False
            for client, connection in pairs:
                client.read()
                outbox, client.outbox = client.outbox, []
                for message in outbox:
                    moved = True
                    self.waits.append(connection.receive(message, self.now))
            if not moved and not any(client.inbox for client, _ in pairs):
                return
        raise AssertionError(f"still busy after {rounds} rounds")


async def test_two_clients_converge_through_a_room(memory_store: MemoryStore) -> None:
    pair = ConnectionPair(memory_store)
    ada, ada_connection = pair.connect()
    bob, bob_connection = pair.connect()
    pair.pump((ada, ada_connection), (bob, bob_connection))
    ada.type(0, "hello")
    bob.type(0, "world ")
    pair.pump((ada, ada_connection), (bob, bob_connection))
    assert str(ada.text) == str(bob.text) == str(pair.room.doc.get("content", type=Text))
    assert "hello" in str(ada.text) and "world " in str(ada.text) and len(str(ada.text)) == 11
    assert pair.waits and not any(pair.waits)  # nothing here is fast enough to be held back


async def test_a_late_joiner_gets_only_what_it_is_missing(memory_store: MemoryStore) -> None:
    pair = ConnectionPair(memory_store)
    ada, ada_connection = pair.connect()
    ada.type(0, "x" * 1000)
    presence = AwarenessEntry(ada.doc.client_id, 1, '{"user":"ada"}')
    ada.outbox.append(awareness_message([presence]))
    pair.pump((ada, ada_connection))
    late, late_connection = pair.connect()
    pair.pump((late, late_connection))
    assert str(late.text) == "x" * 1000
    # The greeting (the room's step 1 and everyone's presence), then one step 2 answering its own step 1
    # that brings the whole text by itself; none of ada's edits relayed on top.
    match late.received:
        case [SyncStep1(), Awareness(entries=[greeted]), SyncStep2(update=update)]:
            assert greeted == presence
            assert text_of([update]) == "x" * 1000
        case received:
            raise AssertionError(f"the late joiner received {received}")


async def test_a_malformed_message_closes_only_its_connection(memory_store: MemoryStore) -> None:
    pair = ConnectionPair(memory_store)
    ada, ada_connection = pair.connect()
    eve, eve_connection = pair.connect()
    pair.pump((ada, ada_connection), (eve, eve_connection))
    with pytest.raises(ProtocolError) as raised:
        eve_connection.receive(b"\x00\x02\xff", pair.now)  # an update whose length runs past the frame
    close = eve_connection.close_for(raised.value)
    assert close.code == 1002
    assert pair.counts.rejected.get("ProtocolError") == 1
    eve_connection.send(b"anything")
    assert not eve.inbox  # closing: nothing more goes out
    pair.room.leave(eve_connection)
    ada.type(0, "still here")
    pair.pump((ada, ada_connection))
    assert str(pair.room.doc.get("content", type=Text)) == "still here"


async def test_text_is_refused_with_1003(memory_store: MemoryStore) -> None:
    pair = ConnectionPair(memory_store)
    _, connection = pair.connect()
    with pytest.raises(UnsupportedDataError) as raised:
        connection.receive_text()
    assert connection.close_for(raised.value).code == 1003


async def test_a_read_only_connection_is_told_once_and_its_edits_go_nowhere(memory_store: MemoryStore) -> None:
    access = Access(SECRET)
    pair = ConnectionPair(memory_store, access=access)
    viewer_token = mint_token(SECRET, "notes", Permission.READ, 3600)
    writer_token = mint_token(SECRET, "notes", Permission.WRITE, 3600)
    viewer, viewer_connection = pair.connect(f"/notes?token={viewer_token}")
    writer, writer_connection = pair.connect(f"/notes?token={writer_token}")
    assert viewer_connection.read_only and not writer_connection.read_only
    pair.pump((viewer, viewer_connection), (writer, writer_connection))
    viewer.type(0, "vandalism")
    viewer.type(0, "more")
    writer.type(0, "kept")
    pair.pump((viewer, viewer_connection), (writer, writer_connection))
    assert str(writer.text) == "kept"
    assert str(pair.room.doc.get("content", type=Text)) == "kept"
    assert viewer.auth == [READ_ONLY_NOTICE]
    assert pair.counts.rejected.get("read_only") == 2


@pytest.mark.parametrize(
    ("path", "subprotocols", "error", "code"),
    [
        ("/", (), InvalidRoomNameError, 4400),
        ("/notes", (), UnauthenticatedError, 4401),
        ("/notes?token=forged", (), UnauthenticatedError, 4401),
        ("/other", ("token.TOKEN",), ForbiddenError, 4403),
    ],
)
def test_admission_refusals(path: str, subprotocols: tuple[str, ...], error: type[Exception], code: int) -> None:
    access = Access(SECRET)
    token = mint_token(SECRET, "notes", Permission.WRITE, 3600)
    output: list[bytes] = []
    connection = Connection("1", output.append, ConnectionRules(), Counts())
    offered = tuple(p.replace("TOKEN", token) for p in subprotocols)
    with pytest.raises(error) as raised:
        connection.admit(path, offered, access)
    assert connection.close_for(raised.value).code == code
    if code in (4401, 4403):  # explained in an auth message before the close, as the stock client expects
        [message] = [m for frame in output for m in parse_frame(frame)]
        assert isinstance(message, Auth) and message.reason.startswith("permission denied")
    else:
        assert not output


def test_a_token_in_a_subprotocol_admits() -> None:
    access = Access(SECRET)
    token = mint_token(SECRET, "notes", Permission.READ, 3600)
    output: list[bytes] = []
    connection = Connection("1", output.append, ConnectionRules(), Counts())
    assert connection.admit("/notes", ("collab", f"token.{token}"), access) == "notes"
    assert connection.read_only


async def test_a_fast_sender_is_held_back_not_closed(memory_store: MemoryStore) -> None:
    pair = ConnectionPair(memory_store, rules=ConnectionRules(max_messages_per_second=10, throttle_close_after=60))
    typist, connection = pair.connect()
    pair.pump((typist, connection))
    waits: list[float] = []
    for index in range(40):  # at one instant: far past the burst of 20
        typist.type(index, "k")
        waits.extend(connection.receive(message, pair.now) for message in typist.outbox)
        typist.outbox.clear()
    assert waits[0] == 0.0 and waits[-1] > 1.0  # the transport stops reading for that long
    assert str(pair.room.doc.get("content", type=Text)) == "k" * 40  # nothing was dropped
    # Kept at three times its rate, without a pause, for longer than throttle_close_after: closed with 1008.
    typist.type(0, "!")
    [message] = typist.outbox
    with pytest.raises(RateLimitError) as raised:
        for step in range(30 * 120):
            clock = pair.now + step / 30
            connection.receive(message, clock)
    assert 60 < clock - pair.now < 70
    assert connection.close_for(raised.value).code == 1008
