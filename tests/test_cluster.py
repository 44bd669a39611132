"""Redis Cluster (3 masters): connect, consume, send, reply, callback and state updates."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from pydantic import BaseModel
from redis.asyncio import RedisCluster

from actionbus import (
    BaseRedisClient,
    BaseWorker,
    CommonAppSettings,
    DomainAction,
    QueueManager,
    RedisManager,
    RedisStateManager,
    WorkerSettings,
    close_redis_pool,
    get_redis_client,
)

QM = QueueManager("dev")


class Counter(BaseModel):
    """A counter state."""

    value: int = 0


def cluster_settings(url: str, service: str) -> CommonAppSettings:
    """Settings that select the cluster client."""
    return CommonAppSettings(
        _env_file=None, service_name=service, redis_cluster=True, redis_url=url
    )


@pytest_asyncio.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[Any]:
    """A RedisCluster client from RedisManager, plus factories that clean up after the test."""
    clients: list[BaseRedisClient] = []
    workers: list[BaseWorker] = []
    async with RedisManager(cluster_settings(redis_cluster_url, "tests")) as manager:
        redis = manager.get_client()

        class Cluster:
            client_ = redis

            @staticmethod
            def client(service: str) -> BaseRedisClient:
                client = BaseRedisClient(
                    service, redis, cluster_settings(redis_cluster_url, service)
                )
                clients.append(client)
                return client

            @staticmethod
            def worker(service: str, **options: Any) -> BaseWorker:
                worker = BaseWorker(
                    cluster_settings(redis_cluster_url, service), redis,
                    worker_settings=WorkerSettings(
                        block_ms=100, retry_backoff_base_s=0.01, retry_backoff_max_s=0.05,
                        **options,
                    ),
                )
                workers.append(worker)
                return worker

        yield Cluster
        for worker in workers:
            await worker.stop(grace=0.5)
        for client in clients:
            await client.close()


async def test_redis_manager_connects_to_cluster(cluster: Any) -> None:
    """With redis_cluster=True RedisManager returns a pinged RedisCluster client."""
    redis = cluster.client_
    assert isinstance(redis, RedisCluster)
    assert await redis.ping()
    assert len(redis.get_primaries()) == 3


async def test_redis_pool_on_cluster(redis_cluster_url: str) -> None:
    """get_redis_client with redis_cluster=True returns a working RedisCluster client."""
    await close_redis_pool()
    try:
        client = await get_redis_client(cluster_settings(redis_cluster_url, "pool"))
        assert isinstance(client, RedisCluster)
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await close_redis_pool()


async def test_keys_of_services_spread_over_masters(cluster: Any) -> None:
    """Different services' streams may live on different masters; that is supported."""
    redis = cluster.client_
    nodes = {
        redis.get_node_from_key(QM.get_service_action_stream(f"svc{i}")).name for i in range(12)
    }
    assert len(nodes) > 1


async def test_worker_consumes_async_actions(cluster: Any, eventually: Any) -> None:
    """A worker on the cluster consumes actions sent with send_action_async and send_actions."""
    worker = cluster.worker("inventory")
    seen: list[int] = []

    @worker.handler("inventory.item.add")
    async def add(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(data["i"])

    await worker.start()
    client = cluster.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.add", data={"i": 0}))
    await client.send_actions_async(
        [DomainAction(action_type="inventory.item.add", data={"i": i}) for i in range(1, 5)]
    )
    await eventually(lambda: len(seen) == 5)
    assert sorted(seen) == [0, 1, 2, 3, 4]

    async def drained() -> bool:
        info = await cluster.client_.xpending(QM.get_service_action_stream("inventory"),
                                              "inventory")
        return int(info["pending"]) == 0

    await eventually(drained)


async def test_pseudo_sync_reply_on_cluster(cluster: Any) -> None:
    """send_action_pseudo_sync gets the worker's response across cluster nodes."""
    worker = cluster.worker("inventory")

    @worker.handler("inventory.stock.get")
    async def stock(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"qty": data["n"] * 10}

    await worker.start()
    client = cluster.client("orders")
    responses = await asyncio.gather(*(
        client.send_action_pseudo_sync(
            DomainAction(action_type="inventory.stock.get", data={"n": n}), timeout=5
        )
        for n in range(5)
    ))
    assert [r.data["qty"] if r else None for r in responses] == [0, 10, 20, 30, 40]


async def test_pseudo_sync_timeout_on_cluster(cluster: Any) -> None:
    """Without a worker a pseudo-sync call on the cluster returns None after its timeout."""
    client = cluster.client("orders")
    assert await client.send_action_pseudo_sync(
        DomainAction(action_type="nobody.is.home"), timeout=0.2
    ) is None


async def test_callback_on_cluster(cluster: Any, eventually: Any) -> None:
    """A callback reaches the origin worker's handler on the cluster."""
    billing = cluster.worker("billing")

    @billing.handler("billing.invoice.create")
    async def create(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"invoice": "I-1"}

    orders = cluster.worker("orders")
    received: list[DomainAction] = []

    @orders.handler("orders.invoice.created")
    async def created(action: DomainAction, data: dict[str, Any]) -> None:
        received.append(action)

    await billing.start()
    await orders.start()
    await cluster.client("orders").send_action_async_with_callback(
        DomainAction(action_type="billing.invoice.create"), "orders.invoice.created", "ctx"
    )
    [callback] = await eventually(lambda: received)
    assert callback.data == {"invoice": "I-1"}
    assert callback.metadata["callback_context"] == "ctx"


async def test_dead_letter_on_cluster(cluster: Any, eventually: Any) -> None:
    """A failing action is retried and dead-lettered on the cluster."""
    worker = cluster.worker("inventory", max_deliveries=2)

    @worker.handler("inventory.item.fail")
    async def fail(action: DomainAction, data: dict[str, Any]) -> None:
        raise RuntimeError("nope")

    await worker.start()
    client = cluster.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.fail"))
    [letter] = await eventually(lambda: worker.dead_letters.list())
    assert letter.deliveries == 2


async def test_state_on_cluster(cluster: Any, redis_cluster_url: str) -> None:
    """save/load/delete and 50 concurrent update_state increments work on the cluster."""
    settings = cluster_settings(redis_cluster_url, "counters")
    state = RedisStateManager(cluster.client_, Counter, settings)
    await state.save_state("a", Counter(value=1), expiration_seconds=60)
    assert await state.load_state("a") == Counter(value=1)
    assert await state.delete_state("a") is True

    def increment(current: Counter | None) -> Counter:
        return Counter(value=(current.value if current else 0) + 1)

    await asyncio.gather(*(state.update_state("hits", increment) for _ in range(50)))
    assert await state.load_state("hits") == Counter(value=50)


async def test_concurrent_sends_to_many_services_all_land(cluster: Any) -> None:
    """300 concurrent sends to 7 services (streams in different slots) are all written."""
    client = cluster.client("orders")
    await asyncio.gather(*(
        client.send_action_async(DomainAction(action_type=f"svc{i % 7}.item.add"))
        for i in range(300)
    ))
    lengths = [await cluster.client_.xlen(QM.get_service_action_stream(f"svc{i}"))
               for i in range(7)]
    assert sum(lengths) == 300


async def test_delayed_send_retry_and_schedule_on_cluster(cluster: Any, eventually: Any) -> None:
    """On 3 masters: a delayed send fires, a failed attempt retries via the delayed set, and
    a schedule ticks (each tick once) — the scripts' keys share the service's slot."""
    from datetime import timedelta

    svc = f"timed{uuid.uuid4().hex[:6]}"
    seen: list[DomainAction] = []
    failures: list[int] = []
    ticks: list[str] = []

    async def later(action: DomainAction, data: Any) -> None:
        seen.append(action)

    async def flaky(action: DomainAction, data: Any) -> None:
        if len(failures) < 2:
            failures.append(1)
            raise RuntimeError("try again")
        seen.append(action)

    async def tick(action: DomainAction, data: Any) -> None:
        ticks.append(str(action.metadata["actionbus_tick"]))

    workers = [cluster.worker(svc) for _ in range(2)]
    for worker in workers:
        worker.register(f"{svc}.job.later", later)
        worker.register(f"{svc}.job.flaky", flaky)
        worker.register(f"{svc}.clock.tick", tick)
        worker.schedule(action_type=f"{svc}.clock.tick", every=timedelta(milliseconds=200))
        await worker.start()
    client = cluster.client("orders")
    await client.send_action_async(
        DomainAction(action_type=f"{svc}.job.later", target_service=svc), delay=0.2)
    await client.send_action_async(
        DomainAction(action_type=f"{svc}.job.flaky", target_service=svc))
    await eventually(lambda: len(seen) == 2 and len(set(ticks)) >= 3, timeout=15)
    for worker in workers:
        await worker.stop(grace=0.5)
    assert len(failures) == 2
    assert len(ticks) == len(set(ticks))
    flaky_done = next(a for a in seen if a.action_type.endswith("flaky"))
    assert flaky_done.metadata["actionbus_deliveries"] == 2


async def test_a_cancelled_cluster_command_ends_cancelled(cluster: Any) -> None:
    """A command cancelled while its write completes raises CancelledError, never returns:
    redis-py's per-write wait_for (Python 3.11) swallowed it, and a stopped worker's loop ran
    on, so stop() never returned."""
    redis = cluster.client_
    await redis.ping()
    swallowed = []
    for steps in range(12):  # each point of the send/read path, in event-loop steps
        task = asyncio.create_task(redis.ping())
        for _ in range(steps):
            await asyncio.sleep(0)
        if task.done():
            continue
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled():
            swallowed.append(steps)
    assert swallowed == []
