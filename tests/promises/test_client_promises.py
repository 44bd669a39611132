"""README promises of the client: the pseudo-sync timeout bound and coalesced sends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from actionbus import BaseRedisClient, DomainAction, RedisManager


async def test_pseudo_sync_timeout_returns_within_its_bound(bus: Any) -> None:
    """With nobody answering, a 1.0 s pseudo-sync call returns None in [1.0, 1.5) seconds."""
    client = bus.client("caller")
    started = time.monotonic()
    response = await client.send_action_pseudo_sync(
        DomainAction(action_type="nobody.op.run"), timeout=1.0)
    elapsed = time.monotonic() - started
    assert response is None
    assert 1.0 <= elapsed < 1.5


async def test_concurrent_sends_share_a_few_connections(
    redis_url: str, make_settings: Any
) -> None:
    """200 concurrent sends go out in a few pipelines: a handful of connections, not dozens."""
    settings = make_settings(service_name="caller", redis_max_connections=50)
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        client = BaseRedisClient("caller", redis, settings)
        before = await _connections_received(redis_url)
        ids = await asyncio.gather(*(
            client.send_action_async(DomainAction(action_type="inv.op.run", data={"i": i}))
            for i in range(200)
        ))
        opened = await _connections_received(redis_url) - before
        await client.close()
    assert len(set(ids)) == 200
    assert opened <= 4, f"200 concurrent sends opened {opened} connections"


async def _connections_received(url: str) -> int:
    """Connections the server accepted so far, minus the one this check opens."""
    probe = Redis.from_url(url)
    try:
        stats: Any = await probe.info("stats")
        return int(stats["total_connections_received"]) - 1
    finally:
        await probe.aclose()
