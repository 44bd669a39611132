"""On Redis Cluster an entry's outputs are confirmed before its XACK is even sent."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from redis.asyncio import Redis

from actionbus import DomainAction, QueueManager, RedisManager
from actionbus.embedded import RedisCluster

from .conftest import wait_for


async def test_ack_follows_a_delayed_reply_on_another_node(
    redis_cluster: RedisCluster, redis_cluster_url: str, make_settings: Any,
    make_worker: Any, qm: QueueManager,
) -> None:
    """With the reply's node pausing writes, the XACK on the stream's node waits for it."""
    settings = make_settings(service_name="clu", redis_url=redis_cluster_url, redis_cluster=True)
    async with RedisManager(settings) as manager:
        cluster: Any = manager.get_client()
        stream = qm.get_service_action_stream("clu")
        stream_port = cluster.get_node_from_key(stream).port
        queue = next(
            q for q in (qm.get_response_queue(f"caller{i}", f"ctx{j}")
                        for i, j in itertools.product(range(50), range(50)))
            if cluster.get_node_from_key(q).port != stream_port
        )
        reply_node = next(n for n in redis_cluster.nodes
                          if n.port == cluster.get_node_from_key(queue).port)
        stream_node = next(n for n in redis_cluster.nodes if n.port == stream_port)
        worker = make_worker("clu", redis=cluster,
                             app={"redis_url": redis_cluster_url, "redis_cluster": True})
        started, release = asyncio.Event(), asyncio.Event()

        @worker.handler("clu.op.run")
        async def run(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
            started.set()
            await release.wait()
            return {"ok": True}

        await worker.start()
        await cluster.xadd(stream, {"data": DomainAction(
            action_type="clu.op.run", callback_queue_name=queue, correlation_id="c1",
        ).model_dump_json()})
        await asyncio.wait_for(started.wait(), 10)
        lpush: list[float] = []
        xack: list[float] = []
        ready = (asyncio.Event(), asyncio.Event())
        monitors = [
            asyncio.create_task(_watch(reply_node.url, "LPUSH", lpush, ready[0])),
            asyncio.create_task(_watch(stream_node.url, "XACK", xack, ready[1])),
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 10)
            pauser = Redis.from_url(reply_node.url)
            await pauser.execute_command("CLIENT", "PAUSE", 400, "WRITE")
            await pauser.aclose()
            release.set()
            await wait_for(lambda: lpush and xack, "both the LPUSH and the XACK ran")
        finally:
            for task in monitors:
                task.cancel()
            await asyncio.gather(*monitors, return_exceptions=True)
        assert lpush[0] < xack[0]


async def _watch(url: str, command: str, times: list[float], ready: asyncio.Event) -> None:
    client = Redis.from_url(url)
    try:
        async with client.monitor() as monitor:
            ready.set()
            while True:
                seen = await monitor.next_command()
                if str(seen["command"]).startswith(command):
                    times.append(float(seen["time"]))
    finally:
        await client.aclose()
