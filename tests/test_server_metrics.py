"""`ServerMetrics` on its own: handed a store and two counts, it reports them; it needs no server.

The names and labels here are what dashboards scrape: they must not change.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from pycrdt import Doc, Text

from collab.metrics import render
from collab.server.metrics import ServerMetrics
from collab.store.memory import MemoryStore

from .helpers import ROOT


def samples(metrics: ServerMetrics) -> dict[str, str]:
    """Each sample line of the rendered text, by everything before its value."""
    found = {}
    for line in render(metrics.all()).splitlines():
        if not line.startswith("#"):
            sample, value = line.rsplit(" ", 1)
            found[sample] = value
    return found


async def test_store_commits_and_the_counts_handed_in_are_reported(memory_store: MemoryStore) -> None:
    connections, rooms = [3], [2]
    metrics = ServerMetrics(memory_store, connections=lambda: connections[0], rooms=lambda: rooms[0])
    before = samples(metrics)
    assert before["collab_connections"] == "3" and before["collab_rooms_loaded"] == "2"
    assert before["collab_updates_persisted_total"] == "0" and before["collab_compactions_total"] == "0"
    assert before["collab_store_commit_seconds_count"] == "0"
    doc: Doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    doc.get("content", type=Text).insert(0, "ab")
    memory_store.append("doc", updates[0], updates=2)
    memory_store.compact("doc", doc.get_update())
    await memory_store.flush()
    connections[0] = 5
    after = samples(metrics)
    assert after["collab_updates_persisted_total"] == "2" and after["collab_compactions_total"] == "1"
    assert after["collab_store_commit_seconds_count"] == "1"
    assert after['collab_store_commit_seconds_bucket{le="+Inf"}'] == "1"
    assert after["collab_store_pending_writes"] == "0" and after["collab_store_failing"] == "0"
    assert after["collab_connections"] == "5", "read when scraped"


def test_sent_frames_are_counted_by_the_kind_their_first_bytes_say(memory_store: MemoryStore) -> None:
    """The refusal counters' reasons are checked where real connections are refused (test_access,
    test_fairness, test_connection); here, only that both families are declared before the first refusal."""
    metrics = ServerMetrics(memory_store, connections=lambda: 0, rooms=lambda: 0)
    metrics.count_sent(b"\x00\x02\x01\x00")  # a sync update
    metrics.count_sent(b"\x01\x01\x00")  # awareness
    metrics.count_sent(b"\x00\x00\x01\x00")  # sync step 1
    found = samples(metrics)
    assert found['collab_messages_sent_total{type="update"}'] == "1"
    assert found['collab_sent_bytes_total{type="update"}'] == "4"
    assert found['collab_sent_bytes_total{type="awareness"}'] == "3"
    assert found['collab_messages_sent_total{type="sync_step1"}'] == "1"
    text = render(metrics.all())
    assert "# TYPE collab_rejected_messages_total counter" in text
    assert "# TYPE collab_auth_failures_total counter" in text


def test_the_store_builds_no_metrics() -> None:
    check = (
        "import sys, collab.store.engines, collab.store.memory;"
        "assert 'collab.metrics' not in sys.modules, 'the store imported collab.metrics'"
    )
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, timeout=60)


def test_metrics_import_nothing_of_the_server() -> None:
    """Not even for type checking: what it reports is handed in (collab.server's own __init__ aside)."""
    tree = ast.parse((ROOT / "collab" / "server" / "metrics.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert {(node.level, node.module) for node in imports} >= {(2, "metrics"), (2, "store")}, "the walk sees them"
    siblings = [node.module for node in imports if node.level == 1 or (node.module or "").startswith("collab.server")]
    assert siblings == [], "metrics imports collab.server's app, transport or another of its modules"
