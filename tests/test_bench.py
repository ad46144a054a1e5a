"""The benchmark harness (scripts/bench) runs, at tiny sizes, and reports well-formed results.

A benchmark is not a test: nothing here asserts a speed. This only keeps the harness from rotting: every
scenario runs against collab and the reference (which scripts/test installs into .cache/bench/), latejoin
and persist also against collab on PostgreSQL (the tests' server, tests/postgres.py), the cluster scenarios
against collab alone, through the tests' Redis (tests/redis.py), every client converges, and every result has
the fields the table and docs/benchmarks.md rely on. Without PostgreSQL or Redis the run still succeeds and
says why those rows are skipped.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from collab.server.outbox import server_frame
from tests.helpers import ROOT
from tests.postgres import admin_url, free_port
from tests.redis import redis_admin_url

sys.path.insert(0, str(ROOT / "scripts"))

from benchlib.sizes import TINY, apply_overrides
from benchlib.wsclient import WsClient

REFERENCE = ROOT / ".cache" / "bench" / "reference" / "node_modules" / "@y" / "websocket-server"
SCENARIOS = ["fanout", "saturate", "latejoin", "conns", "persist", "flood"]
CLUSTER_SCENARIOS = ["spread", "crossproc", "relayoverhead", "coldjoin"]
POSTGRES_SCENARIOS = {"latejoin", "persist"}
EXPECTED_METRICS = {
    "fanout": {"p50_ms", "p99_ms", "max_ms"},
    "saturate": {"updates_per_s", "deliveries_per_s"},
    "latejoin": {"warm_500_ms", "warm_2k_ms"},
    "conns": {"connects_per_s", "rss_per_conn_kb"},
    "persist": {"updates_per_s", "storage_ratio", "stored_kb_per_doc"},
    "flood": {"typist_p50_ms", "typist_p99_ms", "flood_accepted_per_s"},
    "spread": {
        *("one_updates_per_s", "workers_updates_per_s", "speedup", "one_us_per_update", "workers_us_per_update"),
        *("workers_redis_us_per_update", "one_loadgen_share", "workers_loadgen_share"),
    },
    "crossproc": {"one_p50_ms", "one_p99_ms", "cross_p50_ms", "cross_p99_ms", "cross_us_per_update"},
    "relayoverhead": {"plain_us_per_update", "relay_us_per_update", "relay_cpu_ratio", "relay_updates_per_s"},
    "coldjoin": {"warm_500_ms", "cold_500_ms", "cold_burst_500_ms", "warm_2k_ms", "cold_2k_ms", "cold_burst_2k_ms"},
}


def run_bench(
    out: Path, *args: str, postgres: str, timeout: float, redis_url: str | None = None
) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    """`scripts/bench ARGS` with COLLAB_BENCH_PG=`postgres` and COLLAB_BENCH_REDIS=`redis_url` (default: the
    tests' Redis): what it printed, and its results from --json-out."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "scripts"),
        "COLLAB_BENCH_PG": postgres,
        "COLLAB_BENCH_REDIS": redis_url or redis_admin_url(),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "benchlib", *args, "--json-out", str(out)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed, json.loads(out.read_text())


def bench_databases(admin: str) -> set[str]:
    with psycopg.connect(admin, autocommit=True) as connection:
        rows = connection.execute("SELECT datname FROM pg_database WHERE datname LIKE 'collab_bench_%'")
        return {name for (name,) in rows}


def bench_keys(url: str) -> set[bytes]:
    """The keys of every benchmark run on the Redis at `url` (`bench_<run>:<scenario>:...`)."""
    with redis.Redis.from_url(url) as client:
        return set(client.scan_iter(match="bench_*", count=1000))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    if not REFERENCE.exists():
        pytest.fail("the reference server is not installed: run scripts/test, which installs it")
    admin = admin_url()
    before, keys_before = bench_databases(admin), bench_keys(redis_admin_url())
    run = run_bench(tmp_path_factory.mktemp("bench") / "results.json", "--tiny", postgres=admin, timeout=240)
    assert bench_databases(admin) <= before, "every scenario's PostgreSQL database is dropped after it"
    assert bench_keys(redis_admin_url()) <= keys_before, "every cluster scenario's Redis keys are deleted after it"
    return run


def test_every_scenario_ran_against_every_server(
    tiny_run: tuple[subprocess.CompletedProcess[str], list[dict]],
) -> None:
    completed, results = tiny_run
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert lines == results
    assert [(r["scenario"], r["server"]) for r in results] == [
        (scenario, server)
        for scenario in SCENARIOS
        for server in ("collab", "collab-pg", "reference")
        if server != "collab-pg" or scenario in POSTGRES_SCENARIOS
    ] + [(scenario, "collab") for scenario in CLUSTER_SCENARIOS], "the reference has no cluster mode"


def test_results_are_well_formed(tiny_run: tuple[subprocess.CompletedProcess[str], list[dict]]) -> None:
    _, results = tiny_run
    for result in results:
        where = f"{result['scenario']}/{result['server']}"
        if result["scenario"] == "persist" and result["server"] == "reference":
            assert result["skipped"], "the reference keeps no database: persist is skipped, not faked"
            continue
        assert result["ok"] and result["error"] is None, (where, result)
        assert result["checks"] and all(result["checks"].values()), (where, result["checks"])
        missing = EXPECTED_METRICS[result["scenario"]] - result["metrics"].keys()
        assert not missing, (where, missing)
        for name, value in result["metrics"].items():
            assert isinstance(value, int | float) and math.isfinite(value) and value >= 0, (where, name, value)
        assert result["loadgen_cpu_s"] >= 0 and result["wall_s"] > 0, where
    for server in ("collab", "collab-pg"):
        latejoin = next(r for r in results if r["scenario"] == "latejoin" and r["server"] == server)
        assert {"cold_500_ms", "cold_2k_ms"} <= latejoin["metrics"].keys(), server
    for scenario in CLUSTER_SCENARIOS:
        cluster = next(r for r in results if r["scenario"] == scenario)
        assert any("collab against collab" in note for note in cluster["notes"]), cluster["notes"]
    spread = next(r for r in results if r["scenario"] == "spread")
    assert {"one_drained", "one_converged", "workers_drained", "workers_converged"} <= spread["checks"].keys()
    crossproc = next(r for r in results if r["scenario"] == "crossproc")
    assert {"cross_drained", "cross_converged"} <= crossproc["checks"].keys()
    persist_pg = next(r for r in results if r["scenario"] == "persist" and r["server"] == "collab-pg")
    assert "compressed_kb_per_doc" in persist_pg["metrics"]
    if urlsplit(admin_url()).hostname in ("127.0.0.1", "localhost"):  # its backends' CPU is read from /proc
        assert "db_server_cpu_s" in persist_pg["metrics"]


def test_the_run_ends_with_the_table(tiny_run: tuple[subprocess.CompletedProcess[str], list[dict]]) -> None:
    completed, _ = tiny_run
    header = re.search(r"^scenario +metric ", completed.stdout, re.MULTILINE)
    assert header is not None, completed.stdout
    table = completed.stdout[header.start() :]
    assert "collab/ref" in table and "pg/sqlite" in table and re.search(r"^saturate +updates_per_s ", table, re.M)
    assert "targets (issues 5 and 11):" in table and "load generator CPU" in table
    postgres_targets = [line for line in table.splitlines() if "PostgreSQL:" in line]
    assert len(postgres_targets) == 3 and not any("n/a" in line for line in postgres_targets), postgres_targets
    cluster_targets = [line for line in table.splitlines() if "(issue 12)" in line]
    assert len(cluster_targets) == 2 and not any("n/a" in line for line in cluster_targets), cluster_targets
    assert "relay: Redis " in completed.stdout
    assert "server collab-pg: " in completed.stdout and "synchronous_commit=" in completed.stdout


def test_without_postgresql_its_rows_are_skipped(tmp_path: Path) -> None:
    """No server at COLLAB_BENCH_PG: the run succeeds, and the PostgreSQL rows say where none was found."""
    port = free_port()
    completed, results = run_bench(
        tmp_path / "r.json",
        *("--tiny", "--no-reference", "persist"),
        postgres=f"postgresql://postgres@127.0.0.1:{port}/postgres",
        timeout=90,
    )
    by_server = {r["server"]: r for r in results}
    assert by_server.keys() == {"collab", "collab-pg"}
    assert by_server["collab"]["ok"]
    assert by_server["collab-pg"]["skipped"].startswith(f"no PostgreSQL at 127.0.0.1:{port} ")
    assert f"[no PostgreSQL at 127.0.0.1:{port} " in completed.stdout


def test_without_redis_the_cluster_rows_are_skipped(tmp_path: Path) -> None:
    """No Redis at COLLAB_BENCH_REDIS: the run succeeds, and the cluster rows say where none was found."""
    port = free_port()
    completed, results = run_bench(
        tmp_path / "r.json",
        *("--tiny", "--no-reference", "--no-postgres", *CLUSTER_SCENARIOS),
        postgres=admin_url(),
        redis_url=f"redis://127.0.0.1:{port}/0",
        timeout=60,
    )
    assert [(r["scenario"], r["server"]) for r in results] == [(scenario, "collab") for scenario in CLUSTER_SCENARIOS]
    for result in results:
        assert result["skipped"].startswith(f"no Redis at 127.0.0.1:{port} "), result
    assert f"[no Redis at 127.0.0.1:{port} " in completed.stdout


def test_no_postgres_runs_sqlite_only(tmp_path: Path) -> None:
    _, results = run_bench(
        tmp_path / "r.json", "--tiny", "--no-reference", "--no-postgres", "persist", postgres=admin_url(), timeout=90
    )
    assert [(r["server"], r["ok"]) for r in results] == [("collab", True)]


def test_sizes_can_be_overridden() -> None:
    sizes = apply_overrides(TINY, ["saturate.seconds=3", "latejoin.ops=100,200"])
    assert sizes.saturate.seconds == 3.0 and sizes.latejoin.ops == (100, 200)
    with pytest.raises(ValueError, match="has no 'speed'"):
        apply_overrides(TINY, ["saturate.speed=3"])


async def test_client_parses_frames_split_anywhere() -> None:
    """Server frames (unmasked) of every length class, cut at every byte, come out whole and in order."""
    messages = [b"\x00\x02" + bytes([i]) * size for i, size in enumerate((0, 1, 125, 126, 300, 65535, 65536, 70000))]
    stream = b"".join(server_frame(message) for message in messages)
    for cut in [*range(1, 12), 127, 1000, 65537, len(stream) - 1]:
        client = WsClient("127.0.0.1", "/")
        client.opened.set_result(None)
        received: list[bytes] = []
        client.set_handler(received.append)
        for start in range(0, len(stream), cut):
            client.data_received(stream[start : start + cut])
        assert received == messages, cut
    await asyncio.sleep(0)
