"""What a webhook request says, and when a failed one is tried again: pure functions of an outbox row.

A body is the same bytes on every attempt (its `id` is the idempotency id):

    {"id": "…", "type": "document.changed", "document": "notes",
     "at": "2026-12-01T10:00:03Z", "from": "2026-12-01T10:00:00Z",   # the first and last change sent
     "state_vector": "<base64>", "text": "…"}                          # text/json with --webhook-include

`state_vector` is the document's after those changes (null if it was deleted
or renamed before they were sent: its document.deleted or .renamed follows).
created/deleted carry the name and `at`; renamed also `to`; connection events
`connection` (its id, and the token's subject when it has one).
"""

from __future__ import annotations

import json
import random

from ..store.outbox import Delivery
from ..units import format_time

__all__ = ["FIRST_DELAY", "MAX_DELAY", "body_of", "retry_delay"]

FIRST_DELAY = 1.0
MAX_DELAY = 60.0
"""Seconds before the first retry of a delivery, and most between two: a receiver back after an hour of
downtime gets its backlog within a minute (and at once, for every document, once one delivery succeeds)."""


def body_of(delivery: Delivery) -> bytes:
    """The JSON body of `delivery`'s event (described: `details` is not None)."""
    assert delivery.details is not None, "a document.changed is described before it is sent"
    event: dict[str, object] = {
        "id": delivery.uid,
        "type": delivery.type,
        "document": delivery.name,
        "at": format_time(delivery.last_at),
        "at_unix": delivery.last_at,
    }
    if delivery.first_at != delivery.last_at:
        event["from"] = format_time(delivery.first_at)
        event["from_unix"] = delivery.first_at
    event.update(delivery.details)
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def retry_delay(attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: doubling from `FIRST_DELAY` to `MAX_DELAY`, give or take a fifth
    (so that the deliveries that failed together do not all come back at once)."""
    delay: float = min(MAX_DELAY, FIRST_DELAY * 2.0 ** min(attempts - 1, 16))
    return delay * random.uniform(0.8, 1.2)
