"""Prometheus metrics: a worker's counters as they are at scrape time."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from redis import Redis

from actionbus import (
    BaseRedisClient,
    BaseWorker,
    CommonAppSettings,
    DomainAction,
    QueueManager,
    WorkerSettings,
)
from actionbus.connection import create_redis_client
from actionbus.metrics import QueueMetrics, WorkerMetrics
from tests.ops.helpers import lane_backlog

pytestmark = pytest.mark.backends


async def test_scrape_shows_the_workers_counters(redis_url: str) -> None:
    """After 3 handled and 1 dead-lettered action, a scrape reports exactly those counts."""
    settings = CommonAppSettings(service_name="inventory", redis_url=redis_url)
    worker = BaseWorker(settings, worker_settings=WorkerSettings(
        block_ms=100, consumer_name="c1", max_deliveries=1))

    @worker.handler("inventory.item.count")
    async def count(action: DomainAction, data: dict[str, object]) -> None:
        if data.get("fail"):
            raise RuntimeError("boom")

    registry = CollectorRegistry()
    registry.register(WorkerMetrics([worker]))
    redis = create_redis_client(settings)
    client = BaseRedisClient("orders", redis, settings)
    async with worker:
        await client.send_actions_async(
            [DomainAction(action_type="inventory.item.count") for _ in range(3)]
            + [DomainAction(action_type="inventory.item.count", data={"fail": True})])
        for _ in range(100):
            if worker.stats.handled == 3 and worker.stats.dead_lettered == 1:
                break
            await asyncio.sleep(0.05)
        text = generate_latest(registry).decode()
    await client.close()
    await redis.aclose()
    assert 'actionbus_actions_handled_total{instance="c1",service="inventory"} 3.0' in text
    assert 'actionbus_actions_dead_lettered_total{instance="c1",service="inventory"} 1.0' in text
    assert 'actionbus_actions_in_flight{instance="c1",service="inventory"}' in text


def test_collector_with_no_workers_yields_empty_families() -> None:
    """A collector without workers exposes the metric names with no samples."""
    registry = CollectorRegistry()
    registry.register(WorkerMetrics())
    assert "actionbus_actions_handled_total" in generate_latest(registry).decode()


async def test_client_metrics_count_sends_time_requests_and_timeouts(bus: Any) -> None:
    """ClientMetrics counts sends by action type, times pseudo-sync requests in a histogram
    and counts the ones that timed out."""
    from actionbus.metrics import ClientMetrics

    worker = bus.worker("inventory")

    @worker.handler("inventory.count")
    async def count(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {}

    client = bus.client("orders")
    metrics = ClientMetrics()
    metrics.instrument(client)
    registry = CollectorRegistry()
    registry.register(metrics)
    await worker.start()
    assert await client.send_action_pseudo_sync(DomainAction(action_type="inventory.count"), 5)
    assert await client.send_action_pseudo_sync(DomainAction(action_type="nobody.x"), 0.1) is None
    await client.send_action_async(DomainAction(action_type="inventory.count"))
    text = generate_latest(registry).decode()
    assert ('actionbus_client_sends_total{action_type="inventory.count",outcome="ok",'
            'service="orders"} 2.0') in text
    assert ('actionbus_client_request_timeouts_total{action_type="nobody.x",service="orders"} '
            '1.0') in text
    assert ('actionbus_client_request_duration_seconds_count{action_type="inventory.count",'
            'service="orders"} 1.0') in text


def test_queue_metrics_scrape_shows_each_lane(redis_url: str) -> None:
    """Scraped over HTTP, the service gauges sum a lane service's lanes and the
    actionbus_lane_* families give each lane's figures; a service without lanes keeps its
    service gauges and gets no lane samples."""
    redis = Redis.from_url(redis_url)
    lane_backlog(redis)
    redis.xadd(QueueManager("dev").get_service_action_stream("billing"), {"data": "{}"})
    workers = [BaseWorker(CommonAppSettings(service_name=name, redis_url=redis_url),
                          worker_settings=WorkerSettings(lanes=name == "inventory"))
               for name in ("inventory", "billing")]
    registry = CollectorRegistry()
    registry.register(QueueMetrics(*workers))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics",
                                    timeout=30) as response:
            scraped = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        redis.close()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in scraped.splitlines() if line and not line.startswith("#")}
    assert samples['actionbus_queue_waiting{service="inventory"}'] == 46
    assert samples['actionbus_queue_pending{service="inventory"}'] == 2
    assert samples['actionbus_queue_delayed{service="inventory"}'] == 1
    assert samples['actionbus_queue_waiting{service="billing"}'] == 1
    for lane, length, waiting, pending, delayed in (
            ("high", 3, 1, 2, 0), ("normal", 5, 5, 0, 0), ("low", 40, 40, 0, 1)):
        labels = f'{{lane="{lane}",service="inventory"}}'
        assert (samples[f"actionbus_lane_length{labels}"],
                samples[f"actionbus_lane_waiting{labels}"],
                samples[f"actionbus_lane_pending{labels}"],
                samples[f"actionbus_lane_delayed{labels}"]) == (length, waiting, pending, delayed)
    assert samples['actionbus_lane_read_total{lane="high",service="inventory"}'] == 2
    assert samples['actionbus_lane_oldest_waiting_age_seconds{lane="low",service="inventory"}'] \
        >= 600
    assert samples['actionbus_lane_oldest_pending_age_seconds{lane="high",service="inventory"}'] \
        > 0
    assert not [key for key in samples if key.startswith("actionbus_lane_") and "billing" in key]


async def test_client_metrics_keep_the_priority_of_a_pseudo_sync_call(bus: Any) -> None:
    """An instrumented client's pseudo-sync call still takes priority= (here: the low lane)."""
    from actionbus.metrics import ClientMetrics

    worker = bus.worker("inventory", lanes=True)

    @worker.handler("inventory.count")
    async def count(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {}

    client = bus.client("orders")
    ClientMetrics().instrument(client)
    await worker.start()
    reply = await client.send_action_pseudo_sync(
        DomainAction(action_type="inventory.count"), 5, priority="low")
    assert reply is not None
    assert reply.success
    assert await bus.redis.xlen(QueueManager("dev").get_lane_stream("inventory", "low")) == 1
