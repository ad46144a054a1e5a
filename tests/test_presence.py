"""The presence rules without sockets: owners are strings, time is a number (collab/presence.py)."""

from __future__ import annotations

from collab.store.memory import MemoryStore
from collab.sync.presence import (
    CLOCK_TOO_HIGH,
    MAX_CLIENT_IDS,
    MAX_CLOCK,
    MAX_REMOVED,
    NOT_OWNER,
    REMOVED_KEPT_FOR,
    TOO_MANY_IDS,
    Presence,
)
from collab.sync.protocol import MAX_AWARENESS_ENTRIES, MAX_VAR_UINT, Awareness, AwarenessEntry, QueryAwareness
from collab.sync.room import Room

from .helpers import FramePeer


def state(client_id: int, clock: int, text: str = '{"cursor":1}') -> AwarenessEntry:
    return AwarenessEntry(client_id, clock, text)


def removal(client_id: int, clock: int) -> AwarenessEntry:
    return AwarenessEntry(client_id, clock, "null")


def test_only_the_connection_that_introduced_an_id_may_change_or_remove_it() -> None:
    presence = Presence()
    assert presence.apply("alice", [state(1, 1)], 0).accepted == [state(1, 1)]
    hijack = presence.apply("mallory", [state(1, 9, '{"name":"mallory"}'), removal(1, 10)], 0)
    assert hijack.accepted == [] and hijack.dropped == {NOT_OWNER: 2}
    assert presence.current() == [state(1, 1)]
    assert presence.apply("alice", [state(1, 2, '{"cursor":2}')], 0).accepted == [state(1, 2, '{"cursor":2}')]


def test_stale_entries_are_ignored_without_counting() -> None:
    """The stock client echoes every state it receives, with the same clock: that is no offence."""
    presence = Presence()
    presence.apply("alice", [state(1, 3)], 0)
    echo = presence.apply("bob", [state(1, 3), state(1, 2, '{"old":1}')], 0)
    assert echo.accepted == [] and echo.dropped == {}


def test_the_same_subject_takes_its_id_over_at_once() -> None:
    presence = Presence()
    presence.apply("old", [state(1, 1)], 0, subject="ada")
    assert presence.apply("new", [state(1, 2, '{"cursor":2}')], 0, subject="ada").accepted == [
        state(1, 2, '{"cursor":2}')
    ]
    # The old connection no longer owns it: when it leaves, nothing is removed.
    assert presence.remove_owner("old", 0) == []
    assert presence.remove_owner("new", 0) == [removal(1, 3)]


def test_another_subject_can_neither_take_over_nor_claim() -> None:
    presence = Presence()
    presence.apply("ada", [state(1, 1)], 0, subject="ada")
    assert presence.apply("eve", [state(1, 5)], 0, subject="eve").dropped == {NOT_OWNER: 1}
    assert presence.apply("anonymous", [state(1, 6)], 0).dropped == {NOT_OWNER: 1}
    assert presence.remove_owner("ada", 0) == [removal(1, 2)]
    # Remembered as ada's for a while: nobody else brings it back.
    assert presence.apply("eve", [state(1, 7)], 1, subject="eve").dropped == {NOT_OWNER: 1}
    assert presence.apply("ada2", [state(1, 7)], 1, subject="ada").accepted == [state(1, 7)]


def test_without_a_subject_a_claim_takes_over_when_the_owner_leaves() -> None:
    """A quick reconnect: the old connection still owns the id; its cursor stays, then the new one shows."""
    presence = Presence()
    presence.apply("old", [state(1, 4, '{"cursor":"old"}')], 0)
    claim = presence.apply("new", [state(1, 5, '{"cursor":"new"}')], 0)
    assert claim.accepted == [] and claim.dropped == {NOT_OWNER: 1}
    assert presence.current() == [state(1, 4, '{"cursor":"old"}')]
    assert presence.remove_owner("old", 0) == [state(1, 5, '{"cursor":"new"}')]
    assert presence.current() == [state(1, 5, '{"cursor":"new"}')]
    assert presence.remove_owner("new", 0) == [removal(1, 6)]


def test_a_handover_is_newer_than_what_everyone_has() -> None:
    presence = Presence()
    presence.apply("old", [state(1, 1)], 0)
    presence.apply("new", [state(1, 2, '{"cursor":"new"}')], 0)
    presence.apply("old", [state(1, 7, '{"cursor":"moved"}')], 0)
    assert presence.remove_owner("old", 0) == [state(1, 8, '{"cursor":"new"}')]


def test_an_explicit_removal_hands_over_too_and_a_claim_can_be_withdrawn() -> None:
    presence = Presence()
    presence.apply("old", [state(1, 1)], 0)
    presence.apply("new", [state(1, 2)], 0)
    assert presence.apply("old", [removal(1, 2)], 0).accepted == [state(1, 2)]
    presence.apply("other", [state(2, 1)], 0)
    presence.apply("new", [state(2, 2)], 0)
    presence.apply("new", [removal(2, 3)], 0)  # the claimant changed its mind
    assert presence.remove_owner("other", 0) == [removal(2, 2)]


def test_the_newest_claim_wins_and_a_claimant_that_leaves_loses_its_claim() -> None:
    presence = Presence()
    presence.apply("owner", [state(1, 1)], 0)
    presence.apply("first", [state(1, 3, '{"by":"first"}')], 0)
    assert presence.apply("second", [state(1, 2, '{"by":"second"}')], 0).dropped == {NOT_OWNER: 1}
    presence.apply("second", [state(1, 4, '{"by":"second"}')], 0)
    assert presence.remove_owner("second", 0) == []
    assert presence.remove_owner("owner", 0) == [removal(1, 2)]


def test_a_connection_holds_a_few_ids_at_most() -> None:
    presence = Presence()
    too_many = [state(client_id, 1) for client_id in range(MAX_CLIENT_IDS + 3)]
    applied = presence.apply("greedy", too_many, 0)
    assert applied.accepted == too_many[:MAX_CLIENT_IDS] and applied.dropped == {TOO_MANY_IDS: 3}
    # Claims count too, and a removal frees a place.
    presence.apply("other", [state(100, 1)], 0)
    assert presence.apply("greedy", [state(100, 2)], 0).dropped == {TOO_MANY_IDS: 1}
    presence.apply("greedy", [removal(0, 2)], 0)
    assert presence.apply("greedy", [state(50, 1)], 0).accepted == [state(50, 1)]


def test_clocks_stay_within_what_javascript_can_read() -> None:
    presence = Presence()
    applied = presence.apply("a", [state(1, MAX_CLOCK + 1), state(2, 2**60)], 0)
    assert applied.accepted == [] and applied.dropped == {CLOCK_TOO_HIGH: 2}
    presence.apply("a", [state(1, MAX_CLOCK)], 0)
    assert presence.remove_owner("a", 0) == [removal(1, MAX_VAR_UINT)]
    # A claim cannot be handed over above the limit either: the removal goes out instead.
    presence.apply("b", [state(3, 1)], 0)
    presence.apply("c", [state(3, 2)], 0)
    presence.apply("b", [state(3, MAX_CLOCK)], 0)
    assert presence.remove_owner("b", 0) == [removal(3, MAX_VAR_UINT)]


def test_removals_are_remembered_only_briefly_and_unknown_ones_not_at_all() -> None:
    presence = Presence()
    presence.apply("x", [removal(client_id, 1) for client_id in range(1000)], 0)
    assert presence._removed == {}  # nothing to remove, nothing stored
    presence.apply("a", [state(1, 1)], 0)
    presence.remove_owner("a", 0)
    # A late echo of the old state is stale while the removal is remembered...
    assert presence.apply("b", [state(1, 1)], REMOVED_KEPT_FOR / 2).accepted == []
    # ...and the id is anyone's again once it is forgotten.
    assert presence.apply("b", [state(1, 1)], REMOVED_KEPT_FOR + 1).accepted == [state(1, 1)]


def test_remembered_removals_are_bounded() -> None:
    presence = Presence()
    for client_id in range(MAX_REMOVED + 50):
        presence.apply(client_id, [state(client_id, 1)], 0)
        presence.remove_owner(client_id, 0)
    assert len(presence._removed) == MAX_REMOVED
    assert len(presence) == 0 and presence._holders == {} and presence._claims == {}


async def test_no_message_the_room_sends_has_more_entries_than_it_accepts(memory_store: MemoryStore) -> None:
    """The stock client echoes whole messages: a greeting over the limit would get the newcomer closed."""
    room = Room("big", memory_store)
    for number in range(MAX_AWARENESS_ENTRIES // MAX_CLIENT_IDS + 10):
        peer = FramePeer(str(number))  # not joined, so that nobody is sent every state along the way
        ids = range(number * MAX_CLIENT_IDS, (number + 1) * MAX_CLIENT_IDS)
        room.receive(peer, [Awareness(tuple(state(client_id, 1) for client_id in ids))])
    newcomer = FramePeer("new")
    room.join(newcomer)
    greeting = [message for message in newcomer.take() if isinstance(message, Awareness)]
    assert [len(message.entries) for message in greeting] == [MAX_AWARENESS_ENTRIES, 10 * MAX_CLIENT_IDS]
    room.receive(newcomer, [QueryAwareness()])
    answer = newcomer.take()
    assert all(isinstance(message, Awareness) for message in answer)
    assert [len(message.entries) for message in answer if isinstance(message, Awareness)] == [
        MAX_AWARENESS_ENTRIES,
        10 * MAX_CLIENT_IDS,
    ]
