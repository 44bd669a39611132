"""Partitioned services and ordering keys on the 3-master Redis Cluster."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from redis.asyncio import RedisCluster

from actionbus import (
    BaseRedisClient,
    BaseWorker,
    CommonAppSettings,
    DomainAction,
    QueueManager,
    RedisManager,
)
from actionbus.workers.partitions import probe
from tests.conftest import fast_worker_settings

QM = QueueManager("dev")
SERVICE = "inventory"  # its 3 partitions' hash tags land on the 3 masters


def settings(url: str, service: str) -> CommonAppSettings:
    """Cluster settings with SERVICE partitioned in 3."""
    return CommonAppSettings(_env_file=None, service_name=service, redis_cluster=True,
                             redis_url=url, partitions={SERVICE: 3})


async def test_partitions_spread_over_the_masters(redis_cluster_url: str) -> None:
    """The 3 partition streams of SERVICE (and each one's delayed set and ordered stream)
    hash to 3 slots owned by 3 different masters; a partition's keys share one slot."""
    async with RedisManager(settings(redis_cluster_url, "probe")) as manager:
        redis = manager.get_client()
        assert isinstance(redis, RedisCluster)
        slots, nodes = set(), set()
        for k in range(3):
            stream = QM.get_partition_stream(SERVICE, k)
            slot = redis.keyslot(stream)
            assert redis.keyslot(QM.get_delayed_set(SERVICE, partition=k)) == slot
            assert redis.keyslot(QM.get_ordered_stream(SERVICE, k)) == slot
            slots.add(slot)
            nodes.add(redis.get_node_from_key(stream).name)
        assert len(slots) == 3
        assert len(nodes) == 3


async def test_a_partitioned_service_drains_all_masters_in_order_per_key(
    redis_cluster_url: str, eventually: Any
) -> None:
    """On the cluster, two workers of a 3-partition service handle 300 unordered actions
    (100 per partition, each once) and 6 keys x 20 ordered actions, each key's sent in one
    send_actions_async, in send order."""
    async with RedisManager(settings(redis_cluster_url, SERVICE)) as manager:
        redis = manager.get_client()
        seen: Counter[int] = Counter()
        ordered: dict[str, list[int]] = defaultdict(list)
        workers = []
        for _ in range(2):
            worker = BaseWorker(settings(redis_cluster_url, SERVICE), redis,
                                worker_settings=fast_worker_settings(concurrency=32))

            @worker.handler("inventory.item.count")
            async def count(action: DomainAction, data: dict[str, Any]) -> None:
                seen[data["i"]] += 1

            @worker.handler("inventory.item.step")
            async def step(action: DomainAction, data: dict[str, Any]) -> None:
                ordered[data["key"]].append(data["n"])

            workers.append(worker)
        client = BaseRedisClient("orders", redis, settings(redis_cluster_url, "orders"))
        try:
            for worker in workers:
                await worker.start()
            await client.send_actions_async(
                [DomainAction(action_type="inventory.item.count", data={"i": i})
                 for i in range(300)])
            for k in range(6):  # one batch per key: a cluster writes its entries in order
                await client.send_actions_async([
                    DomainAction(action_type="inventory.item.step", ordering_key=f"k{k}",
                                 data={"key": f"k{k}", "n": n}) for n in range(20)])
            await eventually(lambda: len(seen) == 300 and sum(map(len, ordered.values())) == 120,
                             timeout=30)
            assert set(seen.values()) == {1}
            assert [await redis.xlen(QM.get_partition_stream(SERVICE, k))
                    for k in range(3)] == [100, 100, 100]
            assert dict(ordered) == {f"k{k}": list(range(20)) for k in range(6)}
        finally:
            for worker in workers:
                await worker.stop(grace=0.5)
            await client.close()


async def test_leftover_partitions_are_found_on_the_cluster(redis_cluster_url: str) -> None:
    """The probe for partitions beyond a worker's count works across the masters: it finds
    partition 2 by its stream, partition 4 by its delayed set and partition 6 by its
    ordered stream, nothing else."""
    async with RedisManager(settings(redis_cluster_url, "probe")) as manager:
        redis = manager.get_client()
        await redis.xadd(QM.get_partition_stream(SERVICE, 2), {"data": "{}"})
        await redis.zadd(QM.get_delayed_set(SERVICE, partition=4), {"{}": 1})
        await redis.xadd(QM.get_ordered_stream(SERVICE, 6), {"data": "{}"})
        assert await probe(redis, QM, SERVICE, 1) == [2, 4, 6]
        assert await probe(redis, QM, SERVICE, 3) == [4, 6]


async def test_the_cluster_probe_from_one_finds_partition_one(redis_cluster_url: str) -> None:
    """A worker of an unpartitioned service (partitions=1) probes from partition 1 on the
    cluster too: actions left in partition 1 by a sender with more partitions are found."""
    async with RedisManager(settings(redis_cluster_url, "probe")) as manager:
        redis = manager.get_client()
        await redis.xadd(QM.get_partition_stream(SERVICE, 1), {"data": "{}"})
        assert await probe(redis, QM, SERVICE, 1) == [1]
