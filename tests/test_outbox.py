"""The webhook outbox on every engine: events in the transaction of their change, sealed, leased, delivered.

What the sender does with it end to end is tests/test_webhooks.py; here each
engine's commits, deletes and renames are checked to write the events they must
(and only with webhooks configured), and the outbox's own rules hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from collab.config import Settings
from collab.store import Engine, WriteOp
from collab.store.engines import locate
from collab.store.memory import MemoryEngine
from collab.store.outbox import Delivery, OutboxRow, OutboxTables, Recording

from .helpers import keystrokes

URLS = ("http://127.0.0.1:9/one", "http://127.0.0.1:9/two")
RECORDING = Recording(URLS, frozenset({"document.changed", "document.created", "document.deleted", "document.renamed"}))


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def recording_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An opened engine with webhooks configured, once per engine."""
    if request.param == "memory":
        engine: Engine = MemoryEngine(RECORDING)
    else:
        database = str(
            request.getfixturevalue("db_path") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
        )
        settings = Settings(db=database, sqlite_synchronous="normal", webhooks=URLS, webhook_secret="s" * 16)
        engine = locate(database).engine(settings, serving=True)
    engine.open()
    yield engine
    engine.close()


def append(name: str, at: float, text: str = "x") -> WriteOp:
    return WriteOp("append", name, keystrokes(text)[0], at)


def rows(engine: Engine) -> list[OutboxRow]:
    return engine.outbox(lambda outbox: outbox.listing()).rows


def queued(engine: Engine, target: str = URLS[0], now: float = 1e10, recovered_at: float = 0.0) -> list[Delivery]:
    return engine.outbox(lambda outbox: outbox.queued(target, now, recovered_at, 100))


def describe_all(engine: Engine) -> None:
    """Give every sealed event its details, as the sender does before sending it."""
    for event_id, _ in engine.outbox(lambda outbox: outbox.undescribed(100)):
        engine.outbox(lambda outbox: outbox.describe(event_id, {"state_vector": None}))  # noqa: B023


def deliver(engine: Engine, name: str, target: str = URLS[0]) -> Delivery:
    """Deliver the first delivery of `name` that may go now; it."""
    head = next(item for item in queued(engine, target) if name in item.keys)
    engine.outbox(lambda outbox: outbox.delivered(head.event_id, target))
    return head


def test_a_commit_records_created_then_one_gathering_change_per_document(recording_engine: Engine) -> None:
    engine = recording_engine
    engine.commit([append("a", 100.0), append("b", 101.0), append("a", 102.0)])
    engine.commit([append("a", 105.0)])
    listed = [(row.type, row.name, row.state, row.target) for row in rows(engine)]
    assert listed == [
        ("document.created", "a", "pending", URLS[0]),
        ("document.created", "a", "pending", URLS[1]),
        ("document.created", "b", "pending", URLS[0]),
        ("document.created", "b", "pending", URLS[1]),
        ("document.changed", "a", "gathering", None),
        ("document.changed", "b", "gathering", None),
    ]
    changed_a = next(row for row in rows(engine) if row.type == "document.changed" and row.name == "a")
    assert (changed_a.first_at, changed_a.last_at) == (100.0, 105.0)  # one event, stretched by the second commit


def test_sealing_is_by_quiet_or_by_age_and_a_new_change_gathers_anew(recording_engine: Engine) -> None:
    engine = recording_engine
    engine.commit([append("quiet", 100.0), append("busy", 100.0)])
    engine.commit([append("busy", 109.0)])
    # Quiet since 105: only "quiet" (last change 100); "busy" changed at 109 and began at 100, within 20 s.
    sealed = engine.outbox(lambda outbox: outbox.seal_due(105.0, 80.0, RECORDING))
    assert len(sealed) == 1
    assert engine.outbox(lambda outbox: outbox.undescribed(10)) == [(sealed[0], "quiet")]
    # Gathering since before 100: "busy" goes too, however recent its last change.
    assert len(engine.outbox(lambda outbox: outbox.seal_due(105.0, 100.0, RECORDING))) == 1
    engine.commit([append("quiet", 120.0)])
    states = [(row.name, row.state) for row in rows(engine) if row.type == "document.changed"]
    assert sorted(states) == [
        ("busy", "pending"),
        ("busy", "pending"),
        ("quiet", "gathering"),
        ("quiet", "pending"),
        ("quiet", "pending"),
    ]


def test_delete_and_rename_seal_what_gathered_first(recording_engine: Engine) -> None:
    engine = recording_engine
    engine.commit([append("gone", 100.0), append("old", 100.0)])
    assert engine.delete("gone")
    engine.rename("old", "new")
    by_name: dict[str, list[tuple[str, str]]] = {}
    for row in rows(engine):
        if row.target == URLS[0]:
            by_name.setdefault(row.name, []).append((row.type, row.state))
    assert by_name == {
        "gone": [("document.created", "pending"), ("document.changed", "pending"), ("document.deleted", "pending")],
        "old": [("document.created", "pending"), ("document.changed", "pending"), ("document.renamed", "pending")],
    }
    # Each document's first delivery only: what may go without breaking its order.
    assert [(item.name, item.type) for item in queued(engine)] == [
        ("gone", "document.created"),
        ("old", "document.created"),
    ]
    deliver(engine, "old")  # its created: its changed is next, once described
    assert [item.name for item in queued(engine)] == ["gone"]
    describe_all(engine)
    assert deliver(engine, "old").type == "document.changed"
    renamed = next(item for item in queued(engine) if item.name == "old")
    assert (renamed.type, renamed.details, renamed.keys) == ("document.renamed", {"to": "new"}, ("old", "new"))


def test_a_rename_waits_for_the_events_of_its_new_name_before_it(recording_engine: Engine) -> None:
    engine = recording_engine
    engine.commit([append("taken", 100.0), append("moving", 100.0)])
    assert engine.delete("taken")
    engine.rename("moving", "taken")  # the deleted name, taken again
    describe_all(engine)
    deliver(engine, "moving")
    deliver(engine, "moving")  # its created and changed: the rename waits for "taken"'s delete, committed before
    assert [item.type for item in queued(engine) if "moving" in item.keys] == []
    for _ in range(3):
        deliver(engine, "taken")
    assert [(item.type, item.keys) for item in queued(engine)] == [("document.renamed", ("moving", "taken"))]
    engine.commit([append("taken", 200.0)])  # the new name's own events come after the rename
    engine.outbox(lambda outbox: outbox.seal_due(1e10, 0.0, RECORDING))
    describe_all(engine)
    assert [item.type for item in queued(engine)] == ["document.renamed"]


def test_delivered_deliveries_go_and_the_event_with_the_last(recording_engine: Engine) -> None:
    engine = recording_engine
    engine.commit([append("doc", 100.0)])
    created = queued(engine)[0]
    engine.outbox(lambda outbox: outbox.delivered(created.event_id, URLS[0]))
    assert [row.target for row in rows(engine) if row.type == "document.created"] == [URLS[1]]
    engine.outbox(lambda outbox: outbox.delivered(created.event_id, URLS[1]))
    assert [row.type for row in rows(engine)] == ["document.changed"]
    before = rows(engine)
    engine.outbox(lambda outbox: outbox.retry(0, URLS[0], 1, 0.0, 0.0, "no such delivery", give_up=False))
    assert rows(engine) == before  # a retry of no delivery changes nothing


def test_retries_and_giving_up(recording_engine: Engine) -> None:
    engine = recording_engine
    engine.commit([append("doc", 100.0)])
    created = queued(engine)[0]
    engine.outbox(
        lambda outbox: outbox.retry(created.event_id, URLS[0], 3, 200.0, 500.0, "answered 503", give_up=False)
    )
    assert queued(engine, now=499.0) == []  # backing off
    [again] = queued(engine, now=500.0)
    assert (again.event_id, again.attempts) == (created.event_id, 3)
    assert [item.event_id for item in queued(engine, now=0.0, recovered_at=300.0)] == [
        created.event_id
    ]  # answers again
    engine.outbox(lambda outbox: outbox.retry(created.event_id, URLS[0], 4, 300.0, 600.0, "answered 503", give_up=True))
    assert queued(engine) == []  # given up: not sent again, listed as failed
    listing = engine.outbox(lambda outbox: outbox.listing(failed_only=True))
    assert [(row.state, row.last_error, row.attempts) for row in listing.rows] == [("failed", "answered 503", 4)]
    assert listing.totals == {"gathering": 1, "pending": 1, "failed": 1}  # the changed, the other URL's created
    pending, failed_count, oldest, unknown = engine.outbox(lambda outbox: outbox.counts(URLS[:1]))
    assert (pending, failed_count, oldest, unknown) == (0, 1, None, 1)  # URLS[1] is not among those asked about
    assert engine.outbox(lambda outbox: outbox.retry_failed(1000.0)) == 1
    assert [(item.attempts, item.since) for item in queued(engine, now=0.0)] == [(0, 1000.0)]  # retried anew
    assert engine.outbox(lambda outbox: outbox.forget(URLS[:1])) == 1  # the other URL's delivery: no longer configured
    assert {(row.type, row.target) for row in rows(engine)} == {
        ("document.created", URLS[0]),
        ("document.changed", None),
    }


def test_a_document_backing_off_hides_no_other(recording_engine: Engine) -> None:
    engine = recording_engine
    engine.commit([append(f"refused-{index}", 100.0) for index in range(5)])
    for item in queued(engine):
        engine.outbox(
            lambda outbox: outbox.retry(item.event_id, URLS[0], 1, None, 1e9, "answered 404", give_up=False)  # noqa: B023
        )
    engine.commit([append("fine", 101.0)])
    assert [item.name for item in engine.outbox(lambda outbox: outbox.queued(URLS[0], 1000.0, 0.0, 2))] == ["fine"]
    # Answered (refused), not unreachable: the URL answering another event does not cut their backoff short.
    assert [item.name for item in engine.outbox(lambda outbox: outbox.queued(URLS[0], 1000.0, 1e9, 10))] == ["fine"]


def test_a_url_given_twice_is_delivered_once(db_path: object) -> None:
    twice = Recording((URLS[0], URLS[0]), RECORDING.types)
    engine = MemoryEngine(twice)
    engine.commit([append("doc", 100.0)])
    assert [row.target for row in rows(engine) if row.type == "document.created"] == [URLS[0]]


def test_commands_without_a_server_record_what_the_last_server_stored(db_path: object) -> None:
    database = str(db_path)
    server = locate(database).engine(
        Settings(db=database, sqlite_synchronous="normal", webhooks=URLS, webhook_secret="s" * 16), serving=True
    )
    server.open()
    server.commit([append("doc", 100.0)])
    server.close()
    command = locate(database).engine(Settings(db=database, sqlite_synchronous="normal"))  # collab delete, say
    command.open()
    try:
        assert command.delete("doc")
        assert [row.type for row in rows(command) if row.target == URLS[0]][-1] == "document.deleted"
    finally:
        command.close()
    quiet = locate(database).engine(Settings(db=database, sqlite_synchronous="normal"), serving=True)
    quiet.open()  # a server started without --webhook: nothing recorded from now on, by it or by commands
    quiet.close()
    command.open()
    try:
        command.commit([append("later", 200.0)])
        assert not [row for row in rows(command) if row.name == "later"]
    finally:
        command.close()


def test_one_lease_holder_at_a_time(recording_engine: Engine) -> None:
    engine = recording_engine

    def take(holder: str, now: float) -> bool:
        return engine.outbox(lambda outbox: outbox.take_lease(holder, now, now + 15))

    assert take("first", 100.0)
    assert not take("second", 110.0)
    assert take("first", 110.0)  # renewed, to 125
    assert not take("second", 120.0)
    assert take("second", 126.0)  # run out
    engine.outbox(lambda outbox: outbox.give_up_lease("second"))
    assert take("first", 127.0)


def test_nothing_is_recorded_without_webhooks(db_path: object) -> None:
    engine = locate(str(db_path)).engine(Settings(db=str(db_path), sqlite_synchronous="normal"))
    engine.open()
    try:
        engine.commit([append("doc", 100.0)])
        assert engine.delete("doc")
        assert engine.outbox(OutboxTables.listing).rows == []
    finally:
        engine.close()


def test_the_servers_of_a_cluster_store_their_webhooks_at_once(postgres_url: str) -> None:
    settings = Settings(db=postgres_url, webhooks=URLS, webhook_secret="s" * 16)
    engines = [locate(postgres_url).engine(settings, serving=True) for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:  # the workers of `--workers 8`, starting together
        list(pool.map(lambda engine: engine.open(), engines))
    try:
        assert all(engine.outbox(OutboxTables.configured) == RECORDING for engine in engines)
    finally:
        for engine in engines:
            engine.close()
