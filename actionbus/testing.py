"""Pytest fixtures that run real redis-server processes for tests of actionbus services.

Install actionbus (``pip install actionbus``, plus ``actionbus[embedded]`` when no
``redis-server`` is on PATH) and these fixtures are available in every test: pytest loads
this module through the ``pytest11`` entry point ``actionbus``. Without the installed entry
point, add ``pytest_plugins = ["actionbus.testing"]`` to the root ``conftest.py`` or run
``pytest -p actionbus.testing``.

- ``redis_server`` (session): one server for the whole run; ``redis_url``: its URL, emptied
  with FLUSHALL before each test; ``redis_client``: an async client on it (needs
  pytest-asyncio).
- ``fresh_redis_server`` / ``fresh_redis_server_aof``: a server of the test's own, to kill
  and restart (the second persists to an AOF).
- ``redis_cluster`` (session): a 3-master Redis Cluster; ``redis_cluster_url``: its URL,
  emptied before each test.
- ``redis_replica_cluster``: a 3-master + 3-replica cluster of the test's own (AOF,
  ``appendfsync everysec``), to kill nodes of and reshard; ``redis_replicated``: a
  standalone master of the test's own with one replica in sync.

Servers bind 127.0.0.1 on free ports and are stopped and removed afterwards.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from redis.asyncio import Redis as AsyncRedis

    from actionbus.embedded import RedisCluster, RedisServer

__all__ = [
    "fresh_redis_server",
    "fresh_redis_server_aof",
    "redis_client",
    "redis_cluster",
    "redis_cluster_url",
    "redis_replica_cluster",
    "redis_replicated",
    "redis_server",
    "redis_url",
]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server on a free port, shared by the whole test session."""
    from actionbus.embedded import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's redis-server, emptied with FLUSHALL before the test."""
    redis_server.start()  # no-op unless a test stopped the shared server
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own (no persistence), removed after the test."""
    from actionbus.embedded import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def fresh_redis_server_aof() -> Iterator[RedisServer]:
    """A redis-server of this test's own with appendonly=True, removed after the test."""
    from actionbus.embedded import RedisServer

    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A local Redis Cluster of 3 masters, shared by the whole test session."""
    from actionbus.embedded import RedisCluster

    with RedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """The URL of the session's cluster, every master emptied with FLUSHALL before the test."""
    redis_cluster.start()  # no-op unless a test stopped the shared cluster
    for node in redis_cluster.nodes:
        with node.client() as client:
            client.flushall()
    return redis_cluster.url


@pytest.fixture
def redis_replica_cluster() -> Iterator[RedisCluster]:
    """A 3-master + 3-replica cluster with AOF (everysec) of this test's own, removed after."""
    from actionbus.embedded import RedisCluster

    with RedisCluster(masters=3, replicas=1, appendonly=True) as cluster:
        yield cluster


@pytest.fixture
def redis_replicated() -> Iterator[RedisServer]:
    """A standalone master (AOF) of this test's own with one replica in sync; both removed."""
    from actionbus.embedded import RedisServer, start_replica

    with RedisServer(appendonly=True) as master:
        replica = start_replica(master)
        try:
            yield master
        finally:
            replica.cleanup()


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def redis_client(redis_url: str) -> AsyncIterator[AsyncRedis]:
        """An async redis client on the emptied session server, closed after the test."""
        from redis.asyncio import Redis

        client = Redis.from_url(redis_url)
        try:
            yield client
        finally:
            await client.aclose()
