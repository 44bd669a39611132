"""README promises of the client: the pseudo-sync timeout bound and coalesced sends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from actionbus import BaseRedisClient, DomainAction, RedisManager
from actionbus.embedded import RedisServer

pytestmark = pytest.mark.backends


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
    make_settings: Any, backend: str, request: pytest.FixtureRequest
) -> None:
    """200 concurrent sends go out in a few pipelines: a handful of connections, not dozens."""
    settings = make_settings(service_name="caller", redis_max_connections=50)
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        client = BaseRedisClient("caller", redis, settings)
        servers = (request.getfixturevalue("redis_cluster").nodes if backend == "cluster"
                   else [request.getfixturevalue("redis_server")])
        before = _connections_received(servers)
        ids = await asyncio.gather(*(
            client.send_action_async(DomainAction(action_type="inv.op.run", data={"i": i}))
            for i in range(200)
        ))
        opened = _connections_received(servers) - before - len(servers)  # the first probes
        await client.close()
    assert len(set(ids)) == 200
    assert opened <= 4, f"200 concurrent sends opened {opened} connections"


def _connections_received(servers: list[RedisServer]) -> int:
    """Connections the servers (every node of a cluster) accepted before this check's own."""
    total = 0
    for server in servers:
        with server.client() as probe:
            stats: Any = probe.info("stats")
            total += int(stats["total_connections_received"]) - 1
    return total
