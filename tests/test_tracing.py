"""OpenTelemetry: the trace context travels with the action; handlers run in child spans."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from actionbus import BaseRedisClient, BaseWorker, CommonAppSettings, DomainAction, WorkerSettings
from actionbus.connection import create_redis_client
from actionbus.tracing import disable_tracing, enable_tracing


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """Tracing enabled with an in-memory exporter; disabled again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    enable_tracing(provider)
    try:
        yield provider, exporter
    finally:
        disable_tracing()


async def test_handler_span_is_a_child_of_the_senders_span(
    redis_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """A pseudo-sync call made inside a span is handled in a CONSUMER span of the same trace."""
    provider, exporter = spans
    settings = CommonAppSettings(service_name="inventory", redis_url=redis_url)
    worker = BaseWorker(settings, worker_settings=WorkerSettings(block_ms=100))

    @worker.handler("inventory.item.count")
    async def count(action: DomainAction, data: dict[str, object]) -> dict[str, object]:
        return {}

    redis = create_redis_client(settings)
    client = BaseRedisClient("orders", redis, settings)
    action = DomainAction(action_type="inventory.item.count")
    async with worker:
        with provider.get_tracer("test").start_as_current_span("checkout") as parent:
            reply = await client.send_action_pseudo_sync(action, timeout=5)
    await client.close()
    await redis.aclose()
    assert reply is not None
    handled = next(s for s in exporter.get_finished_spans()
                   if s.name == "inventory.item.count process")
    sent = next(s for s in exporter.get_finished_spans()
                if s.name == "inventory.item.count publish")
    assert handled.kind == SpanKind.CONSUMER
    assert sent.kind == SpanKind.PRODUCER
    assert handled.parent is not None
    assert sent.parent is not None
    assert handled.parent.span_id == sent.context.span_id
    assert sent.parent.span_id == parent.get_span_context().span_id
    assert handled.context.trace_id == parent.get_span_context().trace_id
    assert reply.trace_id == format(parent.get_span_context().trace_id, "032x")
    assert "traceparent" not in action.metadata  # the caller's object is not changed
    assert handled.attributes is not None
    assert handled.attributes["messaging.message.id"] == str(action.action_id)


async def test_a_failing_handler_marks_its_span_as_error(
    redis_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """A handler that raises leaves an ERROR span with the exception recorded."""
    _, exporter = spans
    settings = CommonAppSettings(service_name="inventory", redis_url=redis_url)
    worker = BaseWorker(settings, worker_settings=WorkerSettings(block_ms=100))

    @worker.handler("inventory.item.count")
    async def count(action: DomainAction, data: dict[str, object]) -> None:
        raise RuntimeError("no stock table")

    redis = create_redis_client(settings)
    client = BaseRedisClient("orders", redis, settings)
    async with worker:
        reply = await client.send_action_pseudo_sync(
            DomainAction(action_type="inventory.item.count"), timeout=5)
        await asyncio.sleep(0.05)
    await client.close()
    await redis.aclose()
    assert reply is not None
    assert not reply.success
    span = next(s for s in exporter.get_finished_spans()
                if s.name == "inventory.item.count process")
    assert span.status.status_code == StatusCode.ERROR
    assert any(event.name == "exception" for event in span.events)


async def test_without_tracing_nothing_is_added(redis_url: str) -> None:
    """Tracing is off by default: no traceparent in metadata, trace_id left unset."""
    settings = CommonAppSettings(service_name="orders", redis_url=redis_url)
    redis = create_redis_client(settings)
    client = BaseRedisClient("orders", redis, settings)
    action = DomainAction(action_type="inventory.item.count")
    await client.send_action_async(action)
    [(_, fields)] = await redis.xrange("actionbus:dev:{inventory}:streams:main")
    await client.close()
    await redis.aclose()
    sent = json.loads(fields[b"data"])
    assert "traceparent" not in sent["metadata"]
    assert sent.get("trace_id") is None


async def test_a_send_without_a_span_starts_a_trace_and_callbacks_join_it(
    redis_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """A send outside any span opens a PRODUCER root span; the handler, the callback action
    (which carries traceparent) and the callback's handler all join that one trace."""
    _, exporter = spans
    settings = CommonAppSettings(service_name="inventory", redis_url=redis_url)
    worker = BaseWorker(settings, worker_settings=WorkerSettings(block_ms=100))
    orders = BaseWorker(CommonAppSettings(service_name="orders", redis_url=redis_url),
                        worker_settings=WorkerSettings(block_ms=100))
    done = asyncio.Event()

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, object]) -> dict[str, object]:
        return {"ok": True}

    callbacks: list[DomainAction] = []

    @orders.handler("orders.reserved")
    async def reserved(action: DomainAction, data: dict[str, object]) -> None:
        callbacks.append(action)
        done.set()

    redis = create_redis_client(settings)
    client = BaseRedisClient("orders", redis, settings)
    action = DomainAction(action_type="inventory.item.reserve")
    async with worker, orders:
        await client.send_action_async_with_callback(action, "orders.reserved")
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.05)
    await client.close()
    await redis.aclose()
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    sent = by_name["inventory.item.reserve publish"]
    assert sent.kind == SpanKind.PRODUCER
    assert sent.parent is None
    trace_id = sent.context.trace_id
    assert "traceparent" in callbacks[0].metadata
    assert callbacks[0].trace_id == format(trace_id, "032x")
    handled = by_name["inventory.item.reserve process"]
    callback = by_name["orders.reserved process"]
    assert handled.parent is not None
    assert handled.parent.span_id == sent.context.span_id
    assert callback.context.trace_id == trace_id
    assert callback.parent is not None
    assert callback.parent.span_id == sent.context.span_id


async def test_a_retried_action_span_carries_its_delivery_number(
    redis_url: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """An action back from the delayed set after 2 deliveries is handled in a span with
    actionbus.delivery = 3; a first delivery says 1."""
    _, exporter = spans
    settings = CommonAppSettings(service_name="inventory", redis_url=redis_url)
    worker = BaseWorker(settings, worker_settings=WorkerSettings(block_ms=100))
    seen: list[int] = []

    @worker.handler("inventory.item.count")
    async def count(action: DomainAction, data: dict[str, object]) -> None:
        seen.append(1)

    redis = create_redis_client(settings)
    client = BaseRedisClient("orders", redis, settings)
    async with worker:
        await client.send_action_async(DomainAction(action_type="inventory.item.count"))
        await client.send_action_async(DomainAction(
            action_type="inventory.item.count", metadata={"actionbus_deliveries": 2}))
        for _ in range(200):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
    await client.close()
    await redis.aclose()
    deliveries = sorted(s.attributes["actionbus.delivery"] for s in exporter.get_finished_spans()
                        if s.name == "inventory.item.count process" and s.attributes)
    assert deliveries == [1, 3]
