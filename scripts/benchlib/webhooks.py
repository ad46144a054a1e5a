"""`scripts/bench-webhooks`: the webhook sender draining a backlog, and what the commits pay for it meanwhile.

A receiver that was down comes back to DOCUMENTS x EVENTS_PER_DOCUMENT described, pending events (written into
a fresh database's outbox before the sender starts, as an outage would have left them). For SECONDS the
sender delivers to a real HTTP receiver on 127.0.0.1 while an editor commits one keystroke every 50 ms
through the same store: the deliveries per second, and how long each of those commits waited (append to
durable), p50, p99 and max. Then the same keystrokes with an empty outbox, for the commits' baseline. No
reference server has webhooks: the ratios are to collab's own idle figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

from collab.config import Settings
from collab.store.engines import open_store
from collab.store.group_commit import GroupCommitStore
from collab.store.outbox import OutboxTables
from collab.webhooks.sender import WebhookOptions, Webhooks

from .postgres import find_server

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.helpers import keystrokes  # noqa: E402
from tests.webhook_receiver import Receiver  # noqa: E402


def fill(outbox: OutboxTables, url: str, documents: int, per_document: int) -> None:
    start = time.time() - 3600
    rows = [
        [str(uuid.uuid4()), "document.changed", f"doc{d}", start + k, start + k, json.dumps({"state_vector": "AA=="})]
        for k in range(per_document)
        for d in range(documents)
    ]
    outbox.write(
        """INSERT INTO webhook_events (uid, type, name, first_at, last_at, gathering, details, created_at)
           VALUES (?, ?, ?, ?, ?, FALSE, ?, 0)""",
        rows,
    )
    outbox.write(
        """INSERT INTO webhook_deliveries (event_id, target, attempts, next_at, failed)
           SELECT id, ?, 0, 0, FALSE FROM webhook_events WHERE created_at = 0""",
        [[url]],
    )


async def commits_while(store: GroupCommitStore, seconds: float) -> list[float]:
    waits = []
    started = time.monotonic()
    stroke = keystrokes("x")[0]
    while time.monotonic() - started < seconds:
        began = time.perf_counter()
        store.append("editing", stroke)
        await store.flush()
        waits.append(time.perf_counter() - began)
        await asyncio.sleep(0.05)
    return sorted(waits)


def summary(waits: list[float]) -> str:
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
    return f"p50 {statistics.median(waits) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {waits[-1] * 1000:.1f} ms"


async def measure(db: str, documents: int, per_document: int, seconds: float) -> str:
    async with Receiver() as receiver:
        settings = Settings(db=db, webhooks=(receiver.url,), webhook_secret="bench-webhook-secret")
        store = open_store(settings, serving=True)
        await store.start()
        try:
            idle = await commits_while(store, min(seconds, 5.0))
            await store.outbox(lambda outbox: fill(outbox, receiver.url, documents, per_document))
            options = WebhookOptions.from_settings(settings)
            assert options is not None

            async def describe(name: str) -> dict[str, object]:  # every event is described already
                return {"state_vector": None}

            sender = Webhooks(store, options, describe)
            await sender.start()
            try:
                draining = await commits_while(store, seconds)
            finally:
                await sender.stop()
            delivered = len(receiver.received)
        finally:
            await store.close()
    return (
        f"{documents * per_document} events over {documents} documents: {delivered / seconds:.0f} delivered/s;"
        f" a commit waited {summary(draining)} (idle outbox: {summary(idle)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench-webhooks", description=__doc__.splitlines()[0])
    parser.add_argument("documents", nargs="?", type=int, default=1000)
    parser.add_argument("per_document", nargs="?", type=int, default=50)
    parser.add_argument("seconds", nargs="?", type=float, default=20.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with TemporaryDirectory() as folder:
        line = await measure(str(Path(folder) / "collab.db"), args.documents, args.per_document, args.seconds)
        print(f"SQLite:     {line}")
    server = find_server()
    if isinstance(server, str):
        print(f"PostgreSQL: skipped: {server}")
        return
    url = server.create_database()
    try:
        print(f"PostgreSQL: {await measure(url, args.documents, args.per_document, args.seconds)}")
    finally:
        server.drop_database(url)


if __name__ == "__main__":
    asyncio.run(main())
