"""A cluster worker follows the failover of its client's default node."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actionbus import BaseRedisClient, BaseWorker, DomainAction, RedisManager, WorkerSettings
from actionbus.embedded import RedisCluster

from .cluster_load import STREAM, move_default_node, settings, until


async def test_worker_reads_on_after_its_default_node_fails_over(
    redis_replica_cluster: RedisCluster,
) -> None:
    """kill -9 of a master that does NOT own the worker's stream but is its client's default
    node (where redis-py asks COMMAND GETKEYS for XREADGROUP): the worker handles actions
    sent after the failover without a restart."""
    cluster = redis_replica_cluster
    owner = cluster.master_of(STREAM)
    victim = next(n for n in cluster.nodes[:3] if n is not owner)
    victim_key = next(k for k in (f"{{k{i}}}" for i in range(1000))
                      if cluster.master_of(k) is victim)
    handled: list[int] = []

    async def handle(action: DomainAction, data: Any) -> None:
        handled.append(data["i"])

    worker = BaseWorker(settings(cluster.url, "hot"), worker_settings=WorkerSettings(
        block_ms=200, check_permissions=False))
    worker.register("hot.job.run", handle)
    await worker.start()
    move_default_node(worker.redis_client, victim.port)
    async with RedisManager(settings(cluster.url, "sender")) as manager:
        client = BaseRedisClient("sender", manager.get_client(), settings(cluster.url, "sender"))
        try:
            await client.send_action_async(DomainAction(action_type="hot.job.run", data={"i": 0}))
            await until(lambda: handled == [0], 10)
            cluster.kill(victim)
            await asyncio.to_thread(cluster.wait_failover, victim_key, victim, 30)
            killed = time.monotonic()
            await client.send_action_async(DomainAction(action_type="hot.job.run", data={"i": 1}))
            await until(lambda: 1 in handled, 30)
            print(f"\nhandled again {time.monotonic() - killed:.1f}s after the default node's "
                  "failover")
            assert worker.failed is None
        finally:
            await client.close()
            await worker.stop(grace=0.5)
