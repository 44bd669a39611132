"""README promises of settings and metrics: batch_size, redis_pool_timeout, Sentinel's pool,
and every worker counter in a scrape."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import RedisCluster
from redis.exceptions import ConnectionError as RedisConnError

from actionbus import CommonAppSettings, DomainAction, RedisManager, WorkerStats
from actionbus.embedded import RedisSentinel, RedisServer
from actionbus.metrics import WorkerMetrics

from .conftest import wait_for

pytestmark = pytest.mark.backends

COUNTERS = (
    "actionbus_actions_handled_total", "actionbus_actions_failed_attempts_total",
    "actionbus_actions_error_replies_total", "actionbus_actions_dead_lettered_total",
    "actionbus_actions_expired_skipped_total", "actionbus_actions_duplicates_skipped_total",
    "actionbus_actions_reclaimed_total", "actionbus_actions_bad_input_total",
    "actionbus_actions_large_entries_seen_total", "actionbus_actions_dead_letters_trimmed_total",
)
"""The counters the README's Metrics section lists, in WorkerStats order."""


async def _xreadgroup_calls(redis: Any) -> int:
    stats: Any = await redis.info("commandstats")
    return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))


async def test_batch_size_limits_each_read(bus: Any, make_worker: Any) -> None:
    """With batch_size=3, ten waiting actions take four reads, not one."""
    client = bus.client("caller")
    await client.send_actions_async(
        [DomainAction(action_type="batch.op.run") for _ in range(10)])
    worker = make_worker("batch", batch_size=3, block_ms=5000)
    started: list[str] = []
    release = asyncio.Event()

    @worker.handler("batch.op.run")
    async def run(action: DomainAction, data: dict[str, Any]) -> None:
        started.append(str(action.action_id))
        await release.wait()

    before = await _xreadgroup_calls(bus.redis)
    await worker.start()
    await wait_for(lambda: len(started) == 10, "all ten handlers started")
    reads = await _xreadgroup_calls(bus.redis) - before
    release.set()
    assert reads >= 4


async def _blocked_clients(redis: Any) -> int:
    """Clients blocked on the server (on a cluster: the node of key ``nothing``)."""
    if isinstance(redis, RedisCluster):
        info: Any = await redis.info("clients", target_nodes=redis.get_node_from_key("nothing"))
    else:
        info = await redis.info("clients")
    return int(info["blocked_clients"])


async def test_redis_pool_timeout_bounds_the_wait_for_a_connection(make_settings: Any) -> None:
    """With one pooled connection busy, a command fails after redis_pool_timeout, well before
    the connection is free again."""
    settings = make_settings(redis_max_connections=1, redis_pool_timeout=0.3)
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        holder = asyncio.create_task(redis.blpop(["nothing"], timeout=5))
        async with RedisManager(make_settings()) as observer:
            await wait_for(lambda: _blocked_clients(observer.get_client()), "BLPOP holds it")
        started = time.monotonic()
        with pytest.raises(RedisConnError):
            await redis.get("nothing")  # the busy connection's node, on a cluster too
        assert time.monotonic() - started >= 0.25  # it waited for a connection first
        assert not holder.done()
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)


@pytest.fixture
def sentinel_topology() -> Iterator[tuple[RedisServer, RedisSentinel]]:
    """A master watched by one sentinel."""
    with RedisServer() as master, RedisSentinel(master) as sentinel:
        yield master, sentinel


async def test_sentinel_pool_waits_redis_pool_timeout_when_exhausted(
    sentinel_topology: tuple[RedisServer, RedisSentinel],
) -> None:
    """Through Sentinel, a command finding every pooled connection busy waits up to
    redis_pool_timeout for one (as standalone does), then fails."""
    master, sentinel = sentinel_topology
    settings = CommonAppSettings(
        _env_file=None, service_name="s", redis_sentinels=[sentinel.address],
        redis_sentinel_master=sentinel.master_name, redis_max_connections=1,
        redis_pool_timeout=0.5,
    )
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        holder = asyncio.create_task(redis.blpop(["nothing"], timeout=5))
        async with RedisManager(CommonAppSettings(
            _env_file=None, service_name="obs", redis_url=master.url)) as obs:
            await wait_for(lambda: _blocked_clients(obs.get_client()), "BLPOP holds it")
        started = time.monotonic()
        with pytest.raises(RedisConnError):
            await redis.get("nothing")  # the busy connection's node, on a cluster too
        assert time.monotonic() - started >= 0.45  # it waited for a connection first
        assert not holder.done()
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)


def test_a_scrape_shows_every_documented_counter(make_worker: Any) -> None:
    """Each documented counter is scraped with the worker's current value."""
    worker = make_worker("metrics", consumer_name="c1")
    names = [f.name for f in dataclasses.fields(WorkerStats)]
    assert len(names) == len(COUNTERS)
    for value, name in enumerate(names, start=1):
        setattr(worker.stats, name, value)
    registry = CollectorRegistry()
    registry.register(WorkerMetrics([worker]))
    text = generate_latest(registry).decode()
    for value, family in enumerate(COUNTERS, start=1):
        assert f'{family}{{instance="c1",service="metrics"}} {float(value)}' in text, family
