"""Redis Cluster outages: the worker consumes again without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from actionbus import ActionBusError, BaseRedisClient, BaseWorker, DomainAction, RedisManager
from actionbus.config import CommonAppSettings
from actionbus.embedded import RedisCluster
from actionbus.workers import WorkerSettings

from .cluster_load import until


def settings(url: str, service: str) -> CommonAppSettings:
    return CommonAppSettings(_env_file=None, service_name=service, redis_cluster=True,
                             redis_url=url, redis_socket_timeout=2, redis_connect_timeout=1)


async def test_worker_consumes_again_after_a_full_cluster_outage(
    redis_cluster: RedisCluster, redis_cluster_url: str
) -> None:
    """All nodes killed and restarted: the worker's loops survive redis-py's
    RedisClusterException and it handles new actions without a restart."""
    handled: list[int] = []

    async def handle(action: DomainAction, data: Any) -> None:
        handled.append(data["i"])

    worker = BaseWorker(settings(redis_cluster_url, "outage"),
                        worker_settings=WorkerSettings(block_ms=200, reclaim_interval_s=0.2,
                                                       check_permissions=False))
    worker.register("outage.item.n", handle)
    await worker.start()
    async with RedisManager(settings(redis_cluster_url, "sender")) as manager:
        client = BaseRedisClient("sender", manager.get_client(),
                                 settings(redis_cluster_url, "sender"))
        try:
            await client.send_action_async(DomainAction(action_type="outage.item.n",
                                                        data={"i": 0}))
            await until(lambda: handled == [0], 10)
            for node in redis_cluster.nodes:
                node.kill()
            await until(lambda: worker.health.in_outage, 20)  # the worker saw it
            await asyncio.to_thread(redis_cluster.start)
            started = time.monotonic()
            sent = False
            while not sent and time.monotonic() - started < 30:
                with contextlib.suppress(ActionBusError):
                    await client.send_action_async(DomainAction(action_type="outage.item.n",
                                                                data={"i": 1}))
                    sent = True
                await asyncio.sleep(0.1)
            await until(lambda: 1 in handled, 30)
            print(f"handled again {time.monotonic() - started:.1f}s after the restart; "
                  f"loops alive: {worker.failed is None}")
            assert worker.failed is None
        finally:
            await client.close()
            await worker.stop(grace=0.5)
