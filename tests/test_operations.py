"""Running collab for real: TLS, /metrics, /readyz, structured logs, stats from the command line."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidMessage

from collab.client import Client
from collab.logs import configure_logging, fields
from collab.server.app import CollabServer

from .helpers import ROOT, ServerProcess, StartServer, get, room_url, synced, text


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_wss_with_a_self_signed_certificate(start_server: StartServer, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = await start_server(certfile=cert, keyfile=key)
    trust = ssl.create_default_context(cafile=str(cert))
    url = f"wss://127.0.0.1:{server.port}/secure"
    async with Client(url, ssl=trust) as first, Client(url, ssl=trust) as second:
        await first.synced.wait()
        await second.synced.wait()
        text(first).insert(0, "over TLS")
        await second.wait_until(lambda: str(text(second)) == "over TLS")

    def get() -> bytes:
        with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/healthz", context=trust, timeout=5) as response:
            return bytes(response.read())

    assert await asyncio.to_thread(get) == b"ok\n"
    with pytest.raises(InvalidMessage):  # a TLS port does not answer plain HTTP
        async with Client(f"ws://127.0.0.1:{server.port}/plain", open_timeout=3):
            pass


def scrape(server: CollabServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_metrics_parse_and_move_with_traffic(start_server: StartServer) -> None:
    server = await start_server(commit_interval=0.01, compact_after=5)
    before = await asyncio.to_thread(scrape, server)
    assert before["collab_connections"][()] == 0
    async with synced(room_url(server, "measured")) as writer, synced(room_url(server, "measured")) as reader:
        for char in "metrics!":
            text(writer).insert(0, char)
        await reader.wait_until(lambda: len(str(text(reader))) == 8)
        writer.set_awareness({"user": "w"})
        await reader.wait_until(lambda: writer.client_id in reader.awareness)
        await server.store.flush()
        during = await asyncio.to_thread(scrape, server)
        bad = await Client(room_url(server, "measured")).connect()
        bad.send_raw(b"\xff\xff")
        await bad.wait_closed()
    after = await asyncio.to_thread(scrape, server)
    assert during["collab_connections"][()] == 2
    assert during["collab_rooms_loaded"][()] == 1
    assert during["collab_messages_received_total"][(("type", "update"),)] == 8
    assert during["collab_messages_received_total"][(("type", "awareness"),)] == 1
    assert during["collab_messages_sent_total"][(("type", "update"),)] == 8  # relayed to the reader
    assert during["collab_received_bytes_total"][(("type", "update"),)] > 8
    assert during["collab_updates_persisted_total"][()] == 8
    assert during["collab_compactions_total"][()] >= 1
    assert during["collab_store_commit_seconds_count"][()] >= 1
    assert after["collab_rejected_messages_total"][(("reason", "ProtocolError"),)] == 1
    assert after["collab_connections"][()] == 0


async def test_readyz_says_whether_the_store_is_writable(server: CollabServer, db_path: Path) -> None:
    assert (await get(server, "/readyz"))[:3:2] == (200, b"ready\n")
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        status, _, body = await get(server, "/readyz")
        assert status == 503
        reason = body.decode().removeprefix("store not writable: ").strip()
        assert body.startswith(b"store not writable: ") and reason, "the reason is never empty"
        assert (await get(server, "/healthz"))[0] == 200, "alive, just not ready"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert (await get(server, "/readyz"))[0] == 200


async def test_json_logs_carry_the_connection_and_room(db_path: Path) -> None:
    process = ServerProcess(db_path, "--log-format", "json", "--log-level", "debug").start()
    try:
        async with Client(process.url("logged/room")) as client:
            await client.synced.wait()
            client.send_raw(b"\x07")
            await client.wait_closed()
        match = process.wait_for_line(r'"code": 1002')
        event = json.loads(match.string)
        assert event["level"] == "warning" and event["room"] == "logged/room" and event["conn"]
        assert "unknown message type" in event["reason"]
        assert_iso_8601_with_zone(event["time"])
    finally:
        process.stop()
    assert all(json.loads(line) for line in process.output if line.strip())


def assert_iso_8601_with_zone(text: str) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)", text), text
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None and abs(moment.timestamp() - time.time()) < 600


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_start_with_an_iso_8601_time_and_zone(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", log_format)
    try:
        logging.getLogger("collab.test").info("hello", extra=fields(room="a b"))
    finally:
        logging.getLogger().handlers.clear()
    line = capsys.readouterr().err.strip()
    if log_format == "json":
        event = json.loads(line)
        assert (event["event"], event["room"]) == ("hello", "a b")
        assert_iso_8601_with_zone(event["time"])
    else:
        stamp, _, rest = line.partition(" ")
        assert rest == "INFO collab.test hello room='a b'"
        assert_iso_8601_with_zone(stamp)


async def test_stats_and_rooms_commands(server: CollabServer, db_path: Path) -> None:
    async with synced(room_url(server, "counted")) as writer:
        text(writer).insert(0, "x" * 100)
        await writer.resync()
    await server.store.flush()

    def run(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "collab", *args, "--db", str(db_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd=ROOT,
        ).stdout

    stats = await asyncio.to_thread(run, "stats")
    assert "documents:      1" in stats and "running, pid" in stats
    rooms = json.loads(await asyncio.to_thread(run, "rooms", "--json"))
    [document] = rooms["documents"]
    assert document["name"] == "counted" and document["size"] > 100 and document["log_length"] >= 1
    table = await asyncio.to_thread(run, "rooms")
    assert table.splitlines()[0].split() == ["name", "size", "log_length", "history_size", "updated_at"]
