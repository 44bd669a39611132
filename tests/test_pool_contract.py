"""Contract with redis-py: the hooks actionbus.pool builds on still exist and behave.

If one of these fails after upgrading redis-py, ``actionbus/pool.py`` (fast-path pool,
deadline writes, waiting cluster and Sentinel pools) must be revisited before release.
"""

from __future__ import annotations

import inspect

import pytest
import redis
from redis.asyncio import BlockingConnectionPool, ConnectionPool, RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from actionbus.pool import (
    MaxConnectionsError,
    WaitingConnectionPool,
    WaitingRedisCluster,
    WaitingSentinelConnectionPool,
    is_pool_exhausted,
)

CONTRACT = f"actionbus.pool relies on this in redis-py {redis.__version__}"


def _params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def test_pool_methods_the_fast_path_calls_exist() -> None:
    """ConnectionPool.get_connection/release/can_get_connection and BlockingConnectionPool's
    get_connection/release exist, so WaitingConnectionPool can bypass and fall back."""
    for cls, name in [(ConnectionPool, "get_connection"), (ConnectionPool, "release"),
                      (ConnectionPool, "can_get_connection"),
                      (BlockingConnectionPool, "get_connection"),
                      (BlockingConnectionPool, "release")]:
        assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name}: {CONTRACT}"
    assert "timeout" in _params(BlockingConnectionPool.__init__), CONTRACT


def test_connection_write_hook_exists() -> None:
    """send_packed_command(command, check_health) and socket_timeout are what deadline
    writes wrap."""
    assert _params(AbstractConnection.send_packed_command)[1:3] == ["command", "check_health"], \
        CONTRACT
    connection = Connection(socket_timeout=1.5)
    assert connection.socket_timeout == 1.5, CONTRACT
    pool = WaitingConnectionPool(max_connections=1)
    assert issubclass(pool.connection_class, Connection), CONTRACT


def test_exhausted_pool_error_is_typed() -> None:
    """An exhausted ConnectionPool raises redis-py's MaxConnectionsError (typed), which
    is_pool_exhausted recognises; the message fallback still matches."""
    assert issubclass(MaxConnectionsError, redis.exceptions.ConnectionError), CONTRACT
    assert MaxConnectionsError is not redis.exceptions.ConnectionError, \
        f"redis-py {redis.__version__} has no MaxConnectionsError: only the message fallback"
    assert is_pool_exhausted(MaxConnectionsError("whatever"))
    assert is_pool_exhausted(redis.exceptions.ConnectionError("Too many connections"))
    assert not is_pool_exhausted(redis.exceptions.ConnectionError("Error 111 connecting"))


async def test_exhausted_pool_raises_max_connections_error(redis_url: str) -> None:
    """ConnectionPool(max_connections=1) with its connection taken raises MaxConnectionsError
    (the typed error the fast path falls back on)."""
    pool = ConnectionPool.from_url(redis_url, max_connections=1)
    taken = await pool.get_connection()
    try:
        with pytest.raises(MaxConnectionsError):
            await pool.get_connection()
    finally:
        await pool.release(taken)
        await pool.disconnect()


def test_cluster_hooks_exist() -> None:
    """RedisCluster.execute_command/pipeline, ClusterPipeline(client, transaction).execute
    and .cluster_client, and from_url passing extra keywords to the constructor."""
    assert callable(RedisCluster.execute_command), CONTRACT
    assert _params(RedisCluster.pipeline)[1:] == ["transaction", "shard_hint"], CONTRACT
    assert _params(ClusterPipeline.__init__)[1:3] == ["client", "transaction"], CONTRACT
    assert "cluster_client" in getattr(ClusterPipeline, "__slots__", ()) or \
        hasattr(ClusterPipeline, "cluster_client"), CONTRACT
    source = inspect.getsource(RedisCluster.from_url)
    assert "cls(**kwargs)" in source, CONTRACT


def test_sentinel_pool_hook_exists() -> None:
    """Sentinel.master_for accepts connection_pool_class and SentinelConnectionPool combines
    with BlockingConnectionPool (our pool's MRO)."""
    assert "connection_pool_class" in _params(Sentinel.master_for), CONTRACT
    assert _params(SentinelConnectionPool.__init__)[1:3] == ["service_name", "sentinel_manager"]
    mro = WaitingSentinelConnectionPool.__mro__
    assert mro.index(SentinelConnectionPool) < mro.index(BlockingConnectionPool), CONTRACT


def test_cluster_connection_class_hook_exists() -> None:
    """RedisCluster keeps connection_class in connection_kwargs, the very dict its nodes
    manager builds nodes from, and startup nodes carry connection_class: deadline writes."""
    cluster = WaitingRedisCluster(host="127.0.0.1", port=7000)
    assert cluster.nodes_manager.connection_kwargs is cluster.connection_kwargs, CONTRACT
    deadline = cluster.connection_kwargs["connection_class"]
    assert issubclass(deadline, Connection), CONTRACT
    assert deadline is not Connection, CONTRACT
    assert "send_packed_command" in vars(deadline.__mro__[1]), CONTRACT
    assert [n.connection_class for n in cluster.nodes_manager.startup_nodes.values()] == \
        [deadline], CONTRACT
