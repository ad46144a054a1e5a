"""The webhook outbox on every engine: events in the transaction of their change, sealed, leased, delivered.

What the sender does with it end to end is tests/test_webhooks.py; here each
engine's commits, deletes and renames are checked to write the events they must
(and only with webhooks configured), and the outbox's own rules hold.
"""

from __future__ import annotations

from collections.abc import Iterator

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
        engine = locate(database).engine(settings)
    engine.open()
    yield engine
    engine.close()


def append(name: str, at: float, text: str = "x") -> WriteOp:
    return WriteOp("append", name, keystrokes(text)[0], at)


def rows(engine: Engine) -> list[OutboxRow]:
    return engine.outbox(lambda outbox: outbox.listing())


def queued(engine: Engine, target: str = URLS[0]) -> list[Delivery]:
    return engine.outbox(lambda outbox: outbox.queued(target, 100))


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
    for _ in range(2):  # its created and its changed delivered: the rename is next
        head = next(item for item in queued(engine) if item.name == "old")
        engine.outbox(lambda outbox: outbox.delivered(head.event_id, URLS[0]))  # noqa: B023
    renamed = next(item for item in queued(engine) if item.name == "old")
    assert (renamed.type, renamed.details) == ("document.renamed", {"to": "new"})


def test_delivered_deliveries_go_and_the_event_with_the_last(recording_engine: Engine) -> None:
    engine = recording_engine
    engine.commit([append("doc", 100.0)])
    created = queued(engine)[0]
    engine.outbox(lambda outbox: outbox.delivered(created.event_id, URLS[0]))
    assert [row.target for row in rows(engine) if row.type == "document.created"] == [URLS[1]]
    engine.outbox(lambda outbox: outbox.delivered(created.event_id, URLS[1]))
    assert [row.type for row in rows(engine)] == ["document.changed"]
    engine.outbox(lambda outbox: outbox.retry(0, URLS[0], 1, 0.0, "no such delivery", give_up=False))  # no-op


def test_retries_and_giving_up(recording_engine: Engine) -> None:
    engine = recording_engine
    engine.commit([append("doc", 100.0)])
    created = queued(engine)[0]
    engine.outbox(lambda outbox: outbox.retry(created.event_id, URLS[0], 3, 500.0, "answered 503", give_up=False))
    [again] = [item for item in queued(engine) if item.event_id == created.event_id]
    assert (again.attempts, again.next_at) == (3, 500.0)
    engine.outbox(lambda outbox: outbox.due_now(URLS[0]))
    assert [item.next_at for item in queued(engine)] == [0.0]
    engine.outbox(lambda outbox: outbox.retry(created.event_id, URLS[0], 4, 600.0, "answered 503", give_up=True))
    assert queued(engine) == []  # given up: not sent again, listed as failed
    failed = engine.outbox(lambda outbox: outbox.listing(failed_only=True))
    assert [(row.state, row.last_error, row.attempts) for row in failed] == [("failed", "answered 503", 4)]
    pending, failed_count, oldest, unknown = engine.outbox(lambda outbox: outbox.counts(URLS[:1]))
    assert (pending, failed_count, oldest, unknown) == (0, 1, None, 1)  # URLS[1] is not among those asked about


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
        assert engine.outbox(OutboxTables.listing) == []
    finally:
        engine.close()
