"""Tests for the actionbus.testing pytest plugin fixtures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio

from actionbus.embedded import RedisCluster, RedisServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dirty_server(redis_server: RedisServer) -> None:
    """Leave a key on the session server before redis_url is set up."""
    with redis_server.client() as client:
        client.set("leftover", "from another test")


def _close_cluster_client(client: redis.RedisCluster) -> None:
    """Close a cluster client: in redis-py 8.1 close() leaves the node pools' sockets open."""
    for node in client.get_nodes():  # type: ignore[no-untyped-call]
        node.redis_connection.connection_pool.disconnect()
    client.close()


@pytest.fixture
def dirty_cluster(redis_cluster: RedisCluster) -> None:
    """Leave keys on all three cluster masters before redis_cluster_url is set up."""
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        for key in ("alpha", "beta", "delta"):  # slots 865, 15419, 9053: one per master
            client.set(key, "leftover")
    finally:
        _close_cluster_client(client)


def test_redis_url_is_empty_at_test_start(
    dirty_server: None, redis_url: str, redis_server: RedisServer
) -> None:
    """redis_url points at the session server after FLUSHALL, so a test starts with no keys."""
    assert redis_url == redis_server.url
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def test_redis_url_restarts_a_stopped_session_server(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    """A test that stopped the shared server gets it back through redis_url, running and empty."""
    redis_server.stop()
    assert not redis_server.running
    url = request.getfixturevalue("redis_url")  # what the next test's fixture does
    assert redis_server.running
    with redis.Redis.from_url(url) as client:
        assert client.ping() is True


async def test_redis_client_works(redis_client: redis.asyncio.Redis) -> None:
    """redis_client is a connected async client on an empty server."""
    assert await redis_client.dbsize() == 0
    await redis_client.set("k", "v")
    assert await redis_client.get("k") == b"v"


def test_fresh_servers_are_separate(
    fresh_redis_server: RedisServer, fresh_redis_server_aof: RedisServer, redis_server: RedisServer
) -> None:
    """Each fresh_* fixture is its own running server, apart from the session one."""
    assert len({fresh_redis_server.port, fresh_redis_server_aof.port, redis_server.port}) == 3
    assert fresh_redis_server.running
    assert fresh_redis_server_aof.running
    assert not fresh_redis_server.appendonly
    assert fresh_redis_server_aof.appendonly


def test_fresh_aof_server_survives_a_crash(fresh_redis_server_aof: RedisServer) -> None:
    """fresh_redis_server_aof keeps written data across a kill and restart() on the same port."""
    port = fresh_redis_server_aof.port
    with fresh_redis_server_aof.client() as client:
        client.set("kept", "1")
        while client.info("persistence")["aof_buffer_length"]:  # everysec may delay the write
            time.sleep(0.05)
    fresh_redis_server_aof.restart()  # SIGKILL, then start on the same port
    assert fresh_redis_server_aof.port == port
    with fresh_redis_server_aof.client() as client:
        assert client.get("kept") == b"1"


def test_redis_cluster_url_is_empty_and_usable(dirty_cluster: None, redis_cluster_url: str) -> None:
    """redis_cluster_url is emptied on every master and works with redis.RedisCluster."""
    client = redis.RedisCluster.from_url(redis_cluster_url)
    try:
        assert client.dbsize() == 0  # summed over all masters
        client.set("round", "trip")
        assert client.get("round") == b"trip"
    finally:
        _close_cluster_client(client)


async def test_redis_cluster_url_works_with_async_cluster(redis_cluster_url: str) -> None:
    """redis_cluster_url is accepted by redis.asyncio.RedisCluster.from_url."""
    client = redis.asyncio.RedisCluster.from_url(redis_cluster_url)
    try:
        await client.set("async", "yes")
        assert await client.get("async") == b"yes"
    finally:
        await client.aclose()


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def test_plugin_import_is_cheap() -> None:
    """Importing the plugin defines fixtures only: actionbus.embedded is loaded on first use."""
    result = _python("import sys, actionbus.testing; print('actionbus.embedded' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_plugin_imports_without_pytest_asyncio() -> None:
    """Without pytest-asyncio the plugin still imports, only redis_client is left out."""
    result = _python(
        "import sys; sys.modules['pytest_asyncio'] = None\n"
        "import actionbus.testing as t\n"
        "print(hasattr(t, 'redis_client'), hasattr(t, 'redis_url'))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False True"
