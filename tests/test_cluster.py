"""Several collab processes sharing rooms through a real Redis, with stock y-websocket clients under Node.

Each test runs three or four `collab serve --relay` processes on one database (SQLite here: one machine;
PostgreSQL where the test says so), with a key prefix of its own in the shared Redis, or a private Redis
for the test that restarts it. Clients reach a process directly, or through `Balancer`, a TCP proxy that
sends a reconnecting client to a process that is still alive.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from collab.auth import Permission

from .cluster import Balancer, Cluster, metric
from .helpers import (
    SECRET,
    NodeClient,
    ServerProcess,
    http_get,
    needs_node,
    refused,
    room_url,
    stored_text,
    synced,
    text,
    token,
    wait_for,
    with_token,
)
from .redis import PrivateRedis

pytestmark = needs_node

ROOM = "team/plan"


def base(port: int) -> str:
    return f"ws://127.0.0.1:{port}"


async def clients(stack: AsyncExitStack, urls: list[str], room: str = ROOM) -> list[NodeClient]:
    opened = [await stack.enter_async_context(NodeClient(url, room)) for url in urls]
    for client in opened:
        await client.synced()
    return opened


async def converged(group: list[NodeClient], expected: set[str], timeout: float = 20.0) -> str:
    """Wait until every client's text is the same and holds every string of `expected`; return that text."""
    deadline = time.monotonic() + timeout
    while True:
        texts: list[str] = [(await client.snapshot())["text"] for client in group]
        if len(set(texts)) == 1 and all(word in texts[0] for word in expected):
            return texts[0]
        if time.monotonic() > deadline:
            missing = [sorted(word for word in expected if word not in found) for found in texts]
            raise AssertionError(f"no convergence; missing per client: {missing}")
        await asyncio.sleep(0.05)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a blocking check (an HTTP request to a process) until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def type_words(client: NodeClient, words: list[str], rng: random.Random, pause: float = 0.0) -> None:
    """Insert each word at the start or the end of the text: concurrent edits that interleave."""
    for word in words:
        client.send("insert", value=word, **({"index": 0} if rng.random() < 0.5 else {}))
        if pause:
            await asyncio.sleep(pause)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_stock_clients_on_three_processes_converge_and_a_fourth_equals_them(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, relay_prefix: str
) -> None:
    db = str(tmp_path / "collab.db") if engine == "sqlite" else request.getfixturevalue("postgres_url")
    rng = random.Random(12)
    with Cluster(db, redis_url, relay_prefix, 4) as cluster:
        async with AsyncExitStack() as stack:
            writers = await clients(stack, [base(port) for port in cluster.ports[:3]])
            words = {index: [f"<{index}:{n}>" for n in range(40)] for index in range(3)}
            await asyncio.gather(*(type_words(writers[index], words[index], rng, 0.005) for index in range(3)))
            expected = {word for group in words.values() for word in group}
            final = await converged(writers, expected)

            # A joiner on a process that never held the room: equal at its first `synced`, before any new edit.
            async with NodeClient(base(cluster.ports[3]), ROOM) as joiner:
                await joiner.synced()
                assert (await joiner.snapshot())["text"] == final
            # Every update committed once, by the process that received it: 40 keystrokes on each writer's.
            await wait_until(lambda: all(metric(port, "collab_store_pending_writes") == 0 for port in cluster.ports))
            persisted = [metric(port, "collab_updates_persisted_total") for port in cluster.ports]
            assert persisted == [40, 40, 40, 0]
        assert all(re.search(r"\bprocess=\S+:\d+:[0-9a-f]{8}\b", "".join(process.output)) for process in cluster)
    assert stored_text(db, ROOM) == final  # each process stored what it accepted; the store holds it all


async def test_awareness_crosses_processes_and_leaves_with_its_client_and_its_process(
    tmp_path: Path, redis_url: str, relay_prefix: str
) -> None:
    with Cluster(tmp_path / "collab.db", redis_url, relay_prefix, 3) as cluster:
        a, b, c = (base(port) for port in cluster.ports)
        async with AsyncExitStack() as stack:
            ada, bob = await clients(stack, [a, b])
            ada.send("awareness", state={"user": "ada"})
            bob.send("awareness", state={"user": "bob"})
            ada_id, bob_id = [str((await client.snapshot())["clientID"]) for client in (ada, bob)]

            # A newcomer on the third process sees both at once.
            (cid,) = await clients(stack, [c])
            first = await cid.snapshot()
            assert first["awareness"].get(ada_id) == {"user": "ada"}
            assert first["awareness"].get(bob_id) == {"user": "bob"}
            await bob.wait_snapshot(lambda snap: snap["awareness"].get(ada_id) == {"user": "ada"})

            # A client closing on one process disappears on the others within a second.
            left = time.monotonic()
            ada.send("exit")
            for watcher in (bob, cid):
                await watcher.wait_snapshot(lambda snap: ada_id not in snap["awareness"], timeout=1.5)
            assert time.monotonic() - left < 1.5

            # A process killed with its client: the cursor goes everywhere within a few seconds, not 30.
            killed = time.monotonic()
            cluster[1].kill()
            await cid.wait_snapshot(lambda snap: bob_id not in snap["awareness"], timeout=8)
            assert time.monotonic() - killed < 8


async def test_kill_9_of_a_process_while_its_clients_type_loses_nothing(
    tmp_path: Path, redis_url: str, relay_prefix: str
) -> None:
    db = tmp_path / "collab.db"
    rng = random.Random(7)
    with Cluster(db, redis_url, relay_prefix, 3) as cluster:
        async with Balancer(cluster.ports) as balancer, AsyncExitStack() as stack:
            typists = await clients(stack, [balancer.url()] * 3)  # round robin: one on each process
            words = {index: [f"[{index}.{n}]" for n in range(60)] for index in range(3)}
            typing = [asyncio.create_task(type_words(typists[index], words[index], rng, 0.02)) for index in range(3)]
            await asyncio.sleep(0.4)
            cluster[0].kill()  # kill -9: whatever it had not committed is held by its clients and the others
            await asyncio.gather(*typing)
            text = await converged(typists, {word for group in words.values() for word in group}, timeout=30)
        for process in cluster.processes[1:]:
            process.stop()
    assert stored_text(db, ROOM) == text


async def test_redis_restarted_during_edits_converges_with_one_gap_reload_per_room_and_process(
    tmp_path: Path, private_redis: PrivateRedis, relay_prefix: str
) -> None:
    rooms = ["one", "two"]
    rng = random.Random(3)
    with Cluster(tmp_path / "collab.db", private_redis.url, relay_prefix, 3) as cluster:
        async with AsyncExitStack() as stack:
            groups = {room: await clients(stack, [base(port) for port in cluster.ports], room) for room in rooms}
            words: dict[str, set[str]] = {room: set() for room in rooms}

            async def burst(label: str) -> None:
                jobs: list[Any] = []
                for room, group in groups.items():
                    for index, client in enumerate(group):
                        batch = [f"({room}{label}{index}.{n})" for n in range(10)]
                        words[room].update(batch)
                        jobs.append(type_words(client, batch, rng, 0.01))
                await asyncio.gather(*jobs)

            await burst("a")
            private_redis.stop()  # SHUTDOWN NOSAVE: every stream and heartbeat is gone
            await burst("b")  # each process serves its own clients meanwhile
            assert http_get(cluster.ports[0], "/readyz").status == 503
            private_redis.start()
            await burst("c")
            for room, group in groups.items():
                await converged(group, words[room], timeout=30)
            for process in cluster:
                await wait_until(lambda: http_get(process.port, "/readyz").status == 200)  # noqa: B023
                await wait_until(lambda: metric(process.port, "collab_relay_gap_reloads_total") == len(rooms))  # noqa: B023
            await asyncio.sleep(1.5)  # and no more than one each
            assert [metric(port, "collab_relay_gap_reloads_total") for port in cluster.ports] == [len(rooms)] * 3


def test_a_second_server_without_relay_is_refused_beside_a_cluster(
    tmp_path: Path, redis_url: str, relay_prefix: str
) -> None:
    db = tmp_path / "collab.db"
    with Cluster(db, redis_url, relay_prefix, 2):
        alone = ServerProcess(db)
        with pytest.raises(RuntimeError, match="in use"):
            alone.start()
        assert alone.process is not None and alone.process.wait(10) != 0


async def test_two_workers_on_one_port_converge_and_a_killed_worker_comes_back(
    tmp_path: Path, redis_url: str, relay_prefix: str
) -> None:
    db = tmp_path / "collab.db"
    rng = random.Random(5)
    supervisor = ServerProcess(
        db, "--workers", "2", "--relay", redis_url, "--relay-prefix", relay_prefix, "--log-level", "debug"
    ).start()
    try:
        pids = {index: int(supervisor.wait_for_line(rf"worker {index} serving .*\bpid=(\d+)")[1]) for index in (1, 2)}
        async with AsyncExitStack() as stack:
            typists = await clients(stack, [base(supervisor.port)] * 8)  # the kernel spreads them over both
            for index in (1, 2):
                supervisor.wait_for_line(rf"\bjoined\b.*\bworker={index}\b", timeout=10)
            words = {index: [f"{{{index}.{n}}}" for n in range(30)] for index in range(len(typists))}
            typing = [
                asyncio.create_task(type_words(typist, words[index], rng, 0.02)) for index, typist in enumerate(typists)
            ]
            await asyncio.sleep(0.3)
            os.kill(pids[1], signal.SIGKILL)
            supervisor.wait_for_line(r"worker 1 was killed by SIGKILL; restarting it", timeout=10)
            supervisor.wait_for_line(rf"worker 1 serving .*\bpid=(?!{pids[1]}\b)\d+", timeout=20)
            await asyncio.gather(*typing)
            text = await converged(typists, {word for group in words.values() for word in group}, timeout=30)
    finally:
        assert supervisor.stop() == 0
    assert stored_text(db, ROOM) == text


async def test_access_control_read_only_and_the_api_are_the_same_on_every_process(
    tmp_path: Path, redis_url: str, relay_prefix: str
) -> None:
    db = tmp_path / "collab.db"
    with Cluster(db, redis_url, relay_prefix, 2, "--auth-secret", SECRET) as cluster:
        one, two = cluster.ports
        writer = token("team/", Permission.WRITE)
        reader = token("team/", Permission.READ)
        async with synced(with_token(room_url(one, ROOM), writer)) as ada:
            async with synced(with_token(room_url(two, ROOM), reader)) as viewer:
                text(ada).insert(0, "written on one")
                await wait_for(lambda: str(text(viewer)) == "written on one")
                text(viewer).insert(0, "ignored ")  # read only: dropped on its own process, relayed nowhere
                await asyncio.sleep(0.5)
                assert str(text(ada)) == "written on one"
            await refused(room_url(two, ROOM))  # no token: refused on the other process as on this one
            reply = await asyncio.to_thread(
                http_get, two, f"/api/docs/{ROOM}?format=txt", {"Authorization": f"Bearer {reader}"}
            )
            assert reply.status == 200 and reply.body.decode() == "written on one"
