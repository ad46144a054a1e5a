"""The test infrastructure that provides Redis (tests/redis.py and the fixtures in tests/conftest.py).

Every cluster test trusts these parts: that the session's Redis answers, that a test's key prefix is its own and
is emptied after it, and that a private Redis really stops, crashes and comes back empty on the same port.
"""

from __future__ import annotations

import os

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .postgres import free_port
from .redis import (
    SCAN_COUNT,
    TEST_PREFIX_NAME,
    PrivateRedis,
    RedisUnavailable,
    choose_redis,
    delete_prefix,
    fresh_prefix,
    reachable,
    redis_admin_url,
)


def test_the_session_redis_answers_ping(redis_url: str) -> None:
    assert redis_url == redis_admin_url()
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping() is True


def test_a_fresh_prefix_is_the_tests_own(relay_prefix: str) -> None:
    match = TEST_PREFIX_NAME.fullmatch(relay_prefix)
    assert match is not None and int(match[1]) == os.getpid()
    assert fresh_prefix() != relay_prefix != fresh_prefix()


def test_deleting_a_prefix_removes_its_keys_and_only_those(redis_url: str) -> None:
    prefix, neighbour = fresh_prefix(), fresh_prefix()
    unprefixed = f"unprefixed:{prefix}"  # contains the prefix, does not start with it
    with redis.Redis.from_url(redis_url) as client:
        try:
            # More keys than one SCAN call returns, of the kinds collab writes (streams, a hash).
            with client.pipeline(transaction=False) as pipeline:
                for index in range(2 * SCAN_COUNT + 1):
                    pipeline.set(f"{prefix}key:{index}", index)
                pipeline.xadd(f"{prefix}room:6e6f746573", {"update": b"\x00"})
                pipeline.hset(f"{prefix}processes", "host:1:abcd", "1")
                pipeline.set(f"{neighbour}key", "kept")
                pipeline.set(unprefixed, "kept")
                pipeline.execute()

            assert delete_prefix(redis_url, prefix) == 2 * SCAN_COUNT + 3

            assert list(client.scan_iter(match=f"{prefix}*")) == []
            assert client.get(f"{neighbour}key") == client.get(unprefixed) == b"kept"
            assert delete_prefix(redis_url, prefix) == 0
        finally:
            client.unlink(f"{neighbour}key", unprefixed)


@pytest.mark.parametrize("prefix", ["collab:", "", "*", "collab_test_1_*:", f"{fresh_prefix()}room:"])
def test_deleting_refuses_a_prefix_the_tests_did_not_make(redis_url: str, prefix: str) -> None:
    with pytest.raises(ValueError, match="refusing to delete"):
        delete_prefix(redis_url, prefix)


def test_a_private_redis_stops_and_starts_empty_on_the_same_port(private_redis: PrivateRedis) -> None:
    port, url = private_redis.port, private_redis.url
    assert port != 6379 and url == f"redis://127.0.0.1:{port}/0"
    with redis.Redis.from_url(url) as client:
        client.set("written", "before the stop")

        private_redis.stop()

        assert not private_redis.running
        assert not reachable(url)

        private_redis.start()

        assert private_redis.running and private_redis.port == port
        assert client.get("written") is None, "SHUTDOWN NOSAVE and no persistence: the data is gone"
        assert client.info("persistence")["aof_enabled"] == 0
    assert list(private_redis.root.iterdir()) == [private_redis.log_file], "nothing on disk but the log"


def test_a_killed_private_redis_drops_its_clients_and_starts_again(private_redis: PrivateRedis) -> None:
    """(Should it fail with the server stopped, `private_redis` starts it again for the next test.)"""
    # No retries: redis-py's default ones would wait out the outage with backoff before failing.
    with redis.Redis.from_url(private_redis.url, retry=Retry(NoBackoff(), 0)) as client:
        client.set("written", "before the crash")

        private_redis.kill()

        assert not private_redis.running
        with pytest.raises(redis.ConnectionError):
            client.get("written")

        private_redis.start()

        assert client.get("written") is None


@pytest.mark.parametrize("turn", [1, 2])
def test_a_private_redis_is_emptied_between_tests(private_redis: PrivateRedis, turn: int) -> None:
    with redis.Redis.from_url(private_redis.url) as client:
        assert client.dbsize() == 0, "the test before (the first turn, on the second) left no keys"
        client.set("left", f"behind by turn {turn}")  # flushed by the fixture, with no restart


def test_an_unreachable_redis_leads_to_a_private_one() -> None:
    """Where 127.0.0.1:6379 does not answer, the session gets a Redis of its own rather than a skip."""
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    assert not reachable(nothing_listens)

    url, private = choose_redis(None, nothing_listens)

    assert private is not None
    try:
        assert url == private.url != nothing_listens
        assert reachable(url)
    finally:
        private.remove()
    assert not private.root.exists()
    assert not reachable(url)


def test_a_reachable_redis_is_used_as_it_is() -> None:
    assert choose_redis(None, redis_admin_url()) == (redis_admin_url(), None)
    assert choose_redis(redis_admin_url(), "redis://127.0.0.1:1/0") == (redis_admin_url(), None)


def test_a_configured_redis_that_does_not_answer_fails_instead_of_falling_back() -> None:
    """COLLAB_TEST_REDIS names the server to test against; quietly testing another one would hide the mistake."""
    configured = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailable, match="does not answer") as failure:
        choose_redis(configured, redis_admin_url())
    assert "hunter2" not in str(failure.value)
