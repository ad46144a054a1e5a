"""Fairness (issue 9): a fast client is slowed, not closed; big documents stay openable; documents have a size cap.

Each hostile or heavy client runs against a real server while a healthy client in the same room and one in
another room keep working. The throttle's arithmetic is tested without a server, on an explicit clock.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets.exceptions

from collab.client import Client
from collab.config import Settings
from collab.errors import RateLimitError
from collab.server.transport import CLOSE_TIMEOUT as SLOW_CLOSE_TIMEOUT
from collab.sync.limits import AUDIENCE_PER_TOKEN, MAX_FRAME_COST_BURSTS, Throttle, bytes_cost, frame_cost
from collab.sync.protocol import (
    AwarenessEntry,
    QueryAwareness,
    SyncStep1,
    Update,
    awareness_message,
    encode_var_uint,
    parse_frame,
)

from .helpers import StartServer, keystrokes, room_url, server_text, still_works, synced, text, wait_for

# The throttle, on an explicit clock.


def test_a_frame_within_the_budget_waits_for_nothing() -> None:
    throttle = Throttle(rate=100, capacity=200, now=0.0)
    assert all(throttle.charge(1, 0.0) == 0.0 for _ in range(200))


def test_a_frame_beyond_the_budget_waits_until_it_is_paid_for() -> None:
    throttle = Throttle(rate=100, capacity=200, now=0.0)
    throttle.charge(200, 0.0)
    assert throttle.charge(5, 0.0) == 0.0  # within the slack of HOLD_QUANTUM (0.05 s = 5 tokens)
    assert throttle.charge(10, 0.0) == pytest.approx(0.15)  # 15 tokens in debt, at 100 per second
    assert throttle.charge(1, 0.15) == 0.0  # paid for; the next is within the slack again


def test_a_client_held_back_without_a_pause_is_closed_after_close_after() -> None:
    throttle = Throttle(rate=100, capacity=200, now=0.0, close_after=60.0)
    now = 0.0
    throttle.charge(200, now)
    while now < 60.0:  # one frame more than the rate allows, every time it may send
        now += throttle.charge(10, now) + 0.001
    with pytest.raises(RateLimitError, match="without a pause for 60 s"):
        for _ in range(10):
            now += throttle.charge(10, now)


def test_a_pause_that_refills_the_burst_forgives_the_past() -> None:
    throttle = Throttle(rate=100, capacity=200, now=0.0, close_after=60.0)
    now = 0.0
    for _ in range(50):  # 50 floods of 50 s each, each followed by a pause that earns a full burst back
        throttle.charge(200, now)
        for _ in range(500):
            now += throttle.charge(10, now)
        now += 2.0
    assert throttle.held_since is not None  # held during the last flood, never for 60 s on end


def test_one_frame_costing_more_than_the_max_is_refused_outright() -> None:
    throttle = Throttle(rate=100, capacity=200, now=0.0)
    assert throttle.charge(MAX_FRAME_COST_BURSTS * 200, 0.0) > 0
    with pytest.raises(RateLimitError, match="more than 10 bursts"):
        throttle.charge(MAX_FRAME_COST_BURSTS * 200 + 1, 100.0)


def test_awareness_costs_per_entry_and_relayed_messages_per_audience() -> None:
    entries = [AwarenessEntry(client, 1, '{"a":1}') for client in range(1, 51)]
    update = Update(keystrokes("a")[0]).encode()
    assert frame_cost(parse_frame(awareness_message(entries))) == 50
    assert frame_cost(parse_frame(update)) == 1
    assert frame_cost(parse_frame(update + update + QueryAwareness().encode())) == 3
    assert frame_cost(parse_frame(update), audience=AUDIENCE_PER_TOKEN * 3) == 4
    assert frame_cost(parse_frame(awareness_message(entries)), audience=AUDIENCE_PER_TOKEN) == 51


def test_big_updates_cost_by_their_size_but_are_never_refused_for_it() -> None:
    big = parse_frame(Update(b"\x00" * 60_000_000).encode())  # parsed, not decoded: the size is what counts
    assert frame_cost(big) == 1 and bytes_cost(big) == 60_000_000 // 4096
    throttle = Throttle(rate=500, capacity=1000, now=0.0)
    assert throttle.charge(frame_cost(big), 0.0, bytes_cost(big)) == pytest.approx((60_000_000 // 4096 - 999) / 500)


def test_a_sync_step_1_costs_by_the_size_of_its_state_vector() -> None:
    small = SyncStep1(b"\x00").encode()
    entries = 10_000
    big_vector = encode_var_uint(entries) + b"".join(encode_var_uint(c) + encode_var_uint(9) for c in range(entries))
    assert frame_cost(parse_frame(small)) == 1
    assert frame_cost(parse_frame(SyncStep1(big_vector).encode())) == 1 + len(big_vector) // 256


# Throttling against a real server.


async def test_a_bulk_writer_at_default_settings_is_slowed_and_loses_nothing(start_server: StartServer) -> None:
    """5,000 keystrokes, each its own update, sent as fast as TCP allows: all arrive, nobody is closed."""
    server = await start_server()
    rate = Settings().max_messages_per_second
    count = 5_000
    expected = ("abcdefghij" * count)[:count]
    updates = keystrokes(expected)
    async with (
        synced(room_url(server, "bulk")) as reader,
        synced(room_url(server, "elsewhere")) as bystander,
        synced(room_url(server, "bulk")) as writer,
    ):
        started = time.monotonic()
        for update in updates:
            await writer.ws.send(Update(update).encode())  # waits whenever TCP pushes back
        await still_works(server, bystander, "elsewhere", "unharmed")
        await writer.resync(timeout=60)
        elapsed = time.monotonic() - started
        await reader.wait_until(lambda: str(text(reader)) == expected, timeout=30)
        assert server_text(server, "bulk") == expected
        assert writer.close_code is None and reader.close_code is None
    # The throttle did slow it: no more than the burst plus the rate went through (a bound, not a speed).
    assert elapsed >= (count - 2 * rate) / rate * 0.9
    assert not server.metrics.rejected.get("RateLimitError")


async def test_a_client_held_back_for_too_long_is_closed_with_1008(start_server: StartServer) -> None:
    server = await start_server(max_messages_per_second=20, throttle_close_after=1.0)
    updates = keystrokes("abcdefghij" * 200)
    async with synced(room_url(server, "flood")) as same, synced(room_url(server, "other")) as other:
        flooder = await Client(room_url(server, "flood")).connect()
        await flooder.synced.wait()
        try:
            async with asyncio.timeout(30):
                for update in updates:
                    await flooder.ws.send(Update(update).encode())
        except websockets.exceptions.ConnectionClosed:  # once the server gives up on it
            pass
        code, reason = await flooder.wait_closed(timeout=30)
        assert code == 1008 and "without a pause" in (reason or ""), (code, reason)
        await still_works(server, same, "flood", "calm")
        await still_works(server, other, "other", "calm")
        assert same.close_code is None and other.close_code is None


async def test_one_frame_worth_more_than_ten_bursts_is_closed_with_1008(start_server: StartServer) -> None:
    server = await start_server(max_messages_per_second=10)
    async with synced(room_url(server, "costly")) as same, synced(room_url(server, "other")) as other:
        attacker = await Client(room_url(server, "costly")).connect()
        await attacker.synced.wait()
        attacker.send_raw(QueryAwareness().encode() * (MAX_FRAME_COST_BURSTS * 20 + 1))
        code, reason = await attacker.wait_closed()
        assert code == 1008 and "bursts" in (reason or ""), (code, reason)
        await still_works(server, same, "costly", "fine")
        await still_works(server, other, "other", "fine")


# Big documents and slow readers.


async def test_a_60_mb_update_reaches_a_full_speed_reader_and_a_newcomer_opens_it(start_server: StartServer) -> None:
    """The write buffer is far above --max-buffered for a while, but the readers keep reading: nobody is dropped."""
    server = await start_server()
    big = "x" * 60_000_000
    async with (
        synced(room_url(server, "big")) as writer,
        synced(room_url(server, "big")) as reader,
        synced(room_url(server, "elsewhere")) as bystander,
    ):
        text(writer).insert(0, big)  # its writer then waits ~30 s before it is read again (limits.bytes_cost)
        await reader.wait_until(lambda: len(str(text(reader))) == len(big), timeout=60)
        async with synced(room_url(server, "big")) as newcomer:
            assert len(str(text(newcomer))) == len(big)
            await still_works(server, bystander, "elsewhere", "ok")
            assert newcomer.close_code is None
        assert reader.close_code is None and writer.close_code is None
    assert not server.metrics.rejected.get("slow_client")


async def test_a_newcomer_that_never_reads_a_40_mb_document_is_dropped_after_the_grace(
    start_server: StartServer,
) -> None:
    server = await start_server(slow_client_grace=1.0)
    async with (
        synced(room_url(server, "big")) as writer,
        synced(room_url(server, "big")) as healthy,
        synced(room_url(server, "elsewhere")) as bystander,
    ):
        text(writer).insert(0, "y" * 40_000_000)
        await healthy.wait_until(lambda: len(str(text(healthy))) == 40_000_000, timeout=60)
        stuck = await Client(room_url(server, "big")).connect()
        stuck.ws.transport.pause_reading()  # never reads: the step 2 waits in the server's buffer
        # Dropped within the grace plus one sweep (Backlogs.SWEEP_INTERVAL), once the bytes have waited that long.
        await wait_for(lambda: server.metrics.rejected.get("slow_client") == 1, timeout=20)
        # The server dropped it by itself (the test has not touched it yet), and only it.
        assert [peer.dropped for peer in server.peers].count(True) == 1 and len(server.peers) == 4
        await still_works(server, bystander, "elsewhere", "ok")
        await still_works(server, healthy, "big", "ok")
        assert healthy.close_code is None and writer.close_code is None and bystander.close_code is None
        # It never completes the close handshake either: the server cuts it (SLOW_CLOSE_TIMEOUT) and lets go.
        await wait_for(lambda: len(server.peers) == 3, timeout=SLOW_CLOSE_TIMEOUT + 10)
        assert healthy.close_code is None and writer.close_code is None and bystander.close_code is None
        stuck.ws.transport.abort()
        await stuck.wait_closed(timeout=10)


# --max-document-size.


async def test_an_update_that_would_grow_a_document_too_large_is_refused_with_1009(
    start_server: StartServer,
) -> None:
    server = await start_server(max_document_size=200_000)
    async with synced(room_url(server, "capped")) as same, synced(room_url(server, "other")) as other:
        text(same).insert(0, "kept.")
        await same.resync()
        attacker = await Client(room_url(server, "capped")).connect()
        await attacker.synced.wait()
        text(attacker).insert(0, "attack" * 50_000)
        code, reason = await attacker.wait_closed()
        assert code == 1009 and "document would exceed 200000 bytes" in (reason or ""), (code, reason)
        assert "attack" not in server_text(server, "capped") and "attack" not in str(text(same))
        await still_works(server, same, "capped", "more")
        await still_works(server, other, "other", "fine")
        async with synced(room_url(server, "capped")) as fresh:
            assert str(text(fresh)) == str(text(same))
    assert server.metrics.rejected.get("DocumentTooLargeError") == 1


async def test_the_document_size_is_measured_again_before_refusing(start_server: StartServer) -> None:
    """Deleted text does not count: the running size over-counts, so it is measured before a refusal."""
    server = await start_server(max_document_size=200_000)
    async with synced(room_url(server, "churn")) as client:
        content = text(client)
        for _ in range(3):  # 450 KB inserted in all, never more than 150 KB at once
            content.insert(0, "z" * 150_000)
            await client.resync()
            del content[0 : len(content)]
            await client.resync()
        content.insert(0, "w" * 150_000)
        await client.resync()
        assert client.close_code is None
        content.insert(0, "v" * 100_000)  # 250 KB at once: too much
        code, _ = await client.wait_closed()
        assert code == 1009
    assert server_text(server, "churn") == "w" * 150_000


async def test_the_document_size_survives_a_restart(start_server: StartServer) -> None:
    server = await start_server(max_document_size=200_000)
    async with synced(room_url(server, "stored")) as client:
        text(client).insert(0, "s" * 150_000)
        await client.resync()
    await server.stop()
    server = await start_server(max_document_size=200_000)
    async with synced(room_url(server, "stored")) as client:
        assert len(str(text(client))) == 150_000
        text(client).insert(0, "t" * 100_000)
        code, reason = await client.wait_closed()
        assert code == 1009 and "would exceed" in (reason or "")
