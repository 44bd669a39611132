"""The failure policy (workers/policy.py): retries with backoff, rejection, dead letters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actionbus import (
    ActionRejected,
    DomainAction,
    WorkerSettings,
)
from tests.workers.helpers import QM, dead_letters_of, drained


async def test_failing_async_action_retried_then_dead_lettered(bus: Any, eventually: Any) -> None:
    """An async action that keeps failing runs max_deliveries times, then is dead-lettered."""
    worker = bus.worker("inventory", max_deliveries=3)
    attempts: list[DomainAction] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        attempts.append(action)
        raise ConnectionResetError("downstream unavailable")

    await worker.start()
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.reserve"))
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert len(attempts) == 3
    assert letter.reason == "max_deliveries"
    assert letter.deliveries == 3
    assert letter.error_type == "ConnectionResetError"
    assert "downstream unavailable" in letter.error_message
    assert letter.stream == QM.get_service_action_stream("inventory")
    assert DomainAction.model_validate_json(letter.data).action_type == "inventory.item.reserve"
    await eventually(lambda: drained(bus.redis, "inventory"))
    await asyncio.sleep(0.1)
    assert len(attempts) == 3


async def test_transient_failure_is_retried_until_success(bus: Any, eventually: Any) -> None:
    """A handler that fails twice then succeeds is handled, not dead-lettered."""
    worker = bus.worker("inventory", max_deliveries=5)
    attempts: list[int] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise TimeoutError("flaky")

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.reserve"))
    await eventually(lambda: worker.stats.handled == 1)
    assert len(attempts) == 3
    assert await worker.dead_letters.count() == 0
    await eventually(lambda: drained(bus.redis, "inventory"))


async def test_action_rejected_is_not_retried(bus: Any, eventually: Any) -> None:
    """A handler raising ActionRejected is dead-lettered after one attempt."""
    worker = bus.worker("inventory", max_deliveries=5)
    attempts: list[int] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        attempts.append(1)
        raise ActionRejected("unknown sku", error_code="sku")

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.reserve"))
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert attempts == [1]
    assert letter.reason == "rejected"


async def test_dead_lettered_callback_action_sends_failure_callback(
    bus: Any, eventually: Any
) -> None:
    """When an action with a callback is dead-lettered, the origin gets a failure callback."""
    billing = bus.worker("billing", max_deliveries=2)

    @billing.handler("billing.invoice.create")
    async def create(action: DomainAction, data: dict[str, Any]) -> None:
        raise ValueError("no customer")

    orders = bus.worker("orders")
    received: list[DomainAction] = []

    @orders.handler("orders.invoice.created")
    async def on_invoice(action: DomainAction, data: dict[str, Any]) -> None:
        received.append(action)

    await billing.start()
    await orders.start()
    await bus.client("orders").send_action_async_with_callback(
        DomainAction(action_type="billing.invoice.create"), "orders.invoice.created", "c1"
    )
    [callback] = await eventually(lambda: received)
    assert callback.metadata["success"] is False
    assert callback.metadata["error"]["error_type"] == "ValueError"
    assert callback.metadata["callback_context"] == "c1"
    assert await billing.dead_letters.count() == 1


def test_worker_settings_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """WorkerSettings refuses inconsistent or out-of-range values and reads its env prefix."""
    with pytest.raises(ValueError, match="retry_backoff_max_s"):
        WorkerSettings(retry_backoff_base_s=2, retry_backoff_max_s=1)
    with pytest.raises(ValueError, match="concurrency"):
        WorkerSettings(concurrency=0)
    with pytest.raises(ValueError, match="block_ms"):
        WorkerSettings(block_ms=1)
    settings = WorkerSettings(retry_backoff_base_s=0.5, retry_backoff_max_s=3)
    assert [settings.retry_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3]
    monkeypatch.setenv("ACTIONBUS_WORKER_MAX_DELIVERIES", "9")
    assert WorkerSettings().max_deliveries == 9
