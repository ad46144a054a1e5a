"""What a compaction writes (`collab.store.compaction`, no I/O): merged only what another engine wrote, deleted
exactly what it read, and nothing at all when writing a new snapshot would hide a stored one it cannot read."""

from __future__ import annotations

from pycrdt import Doc, merge_updates

from collab.store.compaction import CompactionPlan, LogRow, OwnRows, plan_compaction
from collab.store.history import Retention

from .helpers import keystrokes, text_of

NO_HISTORY = Retention(0, 0, 0)
DOC = 7
NOT_AN_UPDATE = b"\xde\xad\xbe\xef"
EMPTY = Doc().get_update()


def plan(room: bytes, snapshot: LogRow | None, log: list[LogRow], own: OwnRows | None = None) -> CompactionPlan | None:
    return plan_compaction(
        "doc", room, snapshot, log, [], lambda ids: {}, own=own or OwnRows(), doc_id=DOC, now=0.0, retention=NO_HISTORY
    )


def test_rows_another_engine_wrote_are_merged_and_exactly_the_rows_read_are_deleted() -> None:
    mine, theirs = keystrokes("ab", client_id=1), keystrokes("xy", client_id=2)
    own = OwnRows()
    own.wrote("updates", [(DOC, 1, mine[0]), (DOC, 2, mine[1])])
    own.committed()
    log = [LogRow(1, 0.0, mine[0], True), LogRow(2, 0.0, mine[1], True), LogRow(3, 0.0, theirs[0], True)]
    compacted = plan(merge_updates(*mine), None, log, own)
    assert compacted is not None
    assert compacted.delete_updates == [1, 2, 3]
    assert text_of([compacted.snapshot]) in ("abx", "xab") and not compacted.room_state_only
    # Only its own rows: the room's state as it is, not merged.
    only_mine = plan(merge_updates(*mine), None, log[:2], own)
    assert only_mine is not None and only_mine.room_state_only and only_mine.snapshot == merge_updates(*mine)


def test_an_own_row_of_another_document_with_the_same_id_and_bytes_is_foreign() -> None:
    [template] = keystrokes("T", client_id=9)
    own = OwnRows()
    own.wrote("updates", [(DOC + 1, 5, template)])
    own.committed()
    compacted = plan(EMPTY, None, [LogRow(5, 0.0, template, True)], own)
    assert compacted is not None and text_of([compacted.snapshot]) == "T"


def test_a_stored_snapshot_that_does_not_decode_stops_the_compaction_instead_of_being_hidden() -> None:
    room = merge_updates(*keystrokes("ok", client_id=1))
    assert plan(room, LogRow(4, 0.0, NOT_AN_UPDATE, False), []) is None


def test_a_log_row_that_does_not_decode_is_kept_and_the_rest_compacted() -> None:
    good = keystrokes("g", client_id=2)
    compacted = plan(EMPTY, None, [LogRow(1, 0.0, NOT_AN_UPDATE, False), LogRow(2, 0.0, good[0], False)])
    assert compacted is not None and compacted.delete_updates == [2]
    assert text_of([compacted.snapshot]) == "g"


def test_changes_of_a_transaction_rolled_back_are_forgotten() -> None:
    [update] = keystrokes("z", client_id=3)
    own = OwnRows()
    own.wrote("updates", [(DOC, 1, update)])
    assert own.holds("updates", DOC, LogRow(1, 0.0, update, True)), "counts at once inside its transaction"
    own.rolled_back()
    assert not own.holds("updates", DOC, LogRow(1, 0.0, update, True))
