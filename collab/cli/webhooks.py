"""`collab webhooks`: the webhook events a database still holds, pending or given up on; retrying, forgetting.

The listing reads the outbox (`collab.store.outbox`) through a read-only
`Reader`, so it runs beside a server: what it lists is what the sender has not
delivered yet (or has given up on), one line per event and URL. `--retry` and
`--forget` change the outbox through an engine of their own, as any command
writing the database does; a running server's sender picks the change up at its
next look.
"""

from __future__ import annotations

import json
import time

from ..config import Settings
from ..store.engines import locate, open_reader
from ..store.outbox import Listing, Recording
from ..units import format_time
from ..webhooks.http import shown

__all__ = ["change_outbox", "listing_json", "print_listing", "read_listing"]


def read_listing(db: str, *, failed_only: bool) -> Listing:
    with open_reader(db) as reader:
        return reader.webhooks(failed_only=failed_only)


def listing_json(listing: Listing) -> dict[str, object]:
    events = [
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
        for row in listing.rows
    ]
    return {"events": events, "totals": listing.totals}


def print_listing(listing: Listing, *, as_json: bool) -> None:
    """A table (or JSON) of `listing`, and a last line of totals (of everything, if the rows are not all)."""
    document = listing_json(listing)
    if as_json:
        print(json.dumps(document, ensure_ascii=False, indent=2))
        return
    events: list[dict[str, object]] = document["events"]  # type: ignore[assignment]
    columns = ("state", "type", "document", "at", "attempts", "url", "last_error")
    table = [{column: "" if event[column] is None else str(event[column]) for column in columns} for event in events]
    widths = {column: max([len(column), *(len(row[column]) for row in table)]) for column in columns}
    for row in [dict(zip(columns, columns, strict=True)), *table]:
        print("  ".join(row[column].ljust(widths[column]) for column in columns).rstrip())
    totals = listing.totals
    line = (
        f"{totals.get('pending', 0)} pending, {totals.get('failed', 0)} failed, {totals.get('gathering', 0)} gathering"
    )
    if len(events) < sum(totals.values()):
        line += f" (the first {len(events)} shown)"
    print(line)


def _targets(configured: Recording | None) -> tuple[str, ...] | None:
    """The URLs deliveries may still wait for; None (keep them all) when the last server started without any: a
    server run once without `--webhook` must not make `--forget` drop the backlog."""
    return None if configured is None else configured.targets


def change_outbox(db: str, *, retry: bool) -> str:
    """`--retry` (every delivery given up on, pending again) or `--forget` (those, and any to a URL the server
    last started without, dropped); what was done, in one line."""
    engine = locate(db).engine(Settings.load({"db": db}))
    engine.open()
    try:
        if retry:
            now = time.time()
            count = engine.outbox(lambda outbox: outbox.retry_failed(now))
            return f"{count} delivery(ies) given up on will be tried again"
        count = engine.outbox(lambda outbox: outbox.forget(_targets(outbox.configured())))
        return f"forgot {count} delivery(ies): given up on, or to URLs no longer configured"
    finally:
        engine.close()
