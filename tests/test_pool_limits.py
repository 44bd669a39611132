"""The connection limit waits (up to redis_pool_timeout) on every topology: standalone,
Redis Cluster and Sentinel, instead of failing with "Too many connections"."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from actionbus import (
    BaseRedisClient,
    CommonAppSettings,
    DomainAction,
    RedisManager,
    RedisStateManager,
    StateError,
)
from actionbus.embedded import RedisSentinel, RedisServer

CONCURRENT = 100


class Counter(BaseModel):
    """A counter state."""

    value: int = 0


def _bump(counter: Counter | None) -> Counter:
    return Counter(value=(counter.value if counter else 0) + 1)


async def _hundred_updates_and_sends(settings: CommonAppSettings) -> None:
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        state = RedisStateManager(redis, Counter, settings)
        results = await asyncio.gather(
            *(state.update_state("hits", _bump) for _ in range(CONCURRENT)))
        assert max(r.value for r in results) == CONCURRENT
        loaded = await state.load_state("hits")
        assert loaded is not None
        assert loaded.value == CONCURRENT
        client = BaseRedisClient("orders", redis, settings)
        await asyncio.gather(*(
            client.send_action_async(DomainAction(action_type=f"svc{i % 7}.item.add"))
            for i in range(CONCURRENT)))
        lengths = [await redis.xlen(f"actionbus:dev:{{svc{i}}}:streams:main") for i in range(7)]
        assert sum(lengths) == CONCURRENT
        await client.close()


async def test_cluster_limit_waits_instead_of_failing(redis_cluster_url: str) -> None:
    """On a cluster with redis_max_connections=3, 100 concurrent updates and sends all succeed."""
    await _hundred_updates_and_sends(CommonAppSettings(
        _env_file=None, service_name="tests", redis_cluster=True, redis_url=redis_cluster_url,
        redis_max_connections=3, redis_pool_timeout=20,
    ))


async def test_cluster_pool_timeout_is_a_library_error(redis_cluster_url: str) -> None:
    """A cluster connection slot busy beyond redis_pool_timeout fails as StateError."""
    settings = CommonAppSettings(
        _env_file=None, service_name="tests", redis_cluster=True, redis_url=redis_cluster_url,
        redis_max_connections=1, redis_pool_timeout=0.2,
    )
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        state = RedisStateManager(redis, Counter, settings)
        blocker = asyncio.create_task(redis.blpop(["tests:never"], timeout=3))
        await asyncio.sleep(0.1)  # the only slot is now taken by the blocking pop
        try:
            with pytest.raises(StateError, match="No connection available"):
                await state.load_state("x")
        finally:
            await blocker


@pytest.fixture
def sentinel_topology() -> Iterator[RedisSentinel]:
    """A master, its replica and one sentinel watching them."""
    with (
        RedisServer() as master,
        RedisServer(extra_args=["--replicaof", master.host, str(master.port)]),
        RedisSentinel(master) as sentinel,
    ):
        yield sentinel


async def test_sentinel_limit_waits_instead_of_failing(sentinel_topology: Any) -> None:
    """Through Sentinel with redis_max_connections=3, 100 concurrent updates and sends succeed."""
    await _hundred_updates_and_sends(CommonAppSettings(
        _env_file=None, service_name="tests", redis_sentinels=[sentinel_topology.address],
        redis_sentinel_master=sentinel_topology.master_name,
        redis_max_connections=3, redis_pool_timeout=20,
    ))


async def test_standalone_limit_waits_instead_of_failing(redis_url: str) -> None:
    """Standalone with redis_max_connections=3: 100 concurrent updates and sends succeed."""
    await _hundred_updates_and_sends(CommonAppSettings(
        _env_file=None, service_name="tests", redis_url=redis_url,
        redis_max_connections=3, redis_pool_timeout=20,
    ))
