"""`collab webhooks`: the webhook events a database still holds, pending or given up on.

It reads the outbox (`collab.store.outbox`) through a read-only `Reader`, so it
runs beside a server: what it lists is what the sender has not delivered yet
(or has given up on), one line per event and URL.
"""

from __future__ import annotations

import json

from ..store.outbox import OutboxRow
from ..units import format_time
from ..webhooks.sender import shown

__all__ = ["listing_json", "print_listing"]


def listing_json(rows: list[OutboxRow]) -> list[dict[str, object]]:
    return [
        {
            "id": row.uid,
            "type": row.type,
            "document": row.name,
            "from": format_time(row.first_at),
            "at": format_time(row.last_at),
            "state": row.state,
            "url": None if row.target is None else shown(row.target),
            "attempts": row.attempts,
            "next_attempt": None if row.next_at is None or row.state != "pending" else format_time(row.next_at),
            "last_error": row.last_error,
        }
        for row in rows
    ]


def print_listing(rows: list[OutboxRow], *, as_json: bool) -> None:
    """A table (or JSON) of `rows`, and a last line of totals."""
    events = listing_json(rows)
    if as_json:
        print(json.dumps({"events": events}, ensure_ascii=False, indent=2))
        return
    columns = ("state", "type", "document", "at", "attempts", "url", "last_error")
    table = [{column: "" if event[column] is None else str(event[column]) for column in columns} for event in events]
    widths = {column: max([len(column), *(len(row[column]) for row in table)]) for column in columns}
    for row in [dict(zip(columns, columns, strict=True)), *table]:
        print("  ".join(row[column].ljust(widths[column]) for column in columns).rstrip())
    states = [event["state"] for event in events]
    print(
        f"{states.count('pending')} pending, {states.count('failed')} failed, {states.count('gathering')} gathering",
    )
