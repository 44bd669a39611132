"""Prometheus metrics: a worker's counters as they are at scrape time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from actionbus import BaseRedisClient, BaseWorker, CommonAppSettings, DomainAction, WorkerSettings
from actionbus.connection import create_redis_client
from actionbus.metrics import WorkerMetrics

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
