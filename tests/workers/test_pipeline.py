"""The handler pipeline (workers/pipeline.py): expiry, idempotency and user layers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from actionbus import (
    DomainAction,
)
from actionbus.models.actions import utc_now
from tests.workers.helpers import QM, drained, xadd_raw


async def test_expired_pseudo_sync_request_skipped_and_acked(bus: Any, eventually: Any) -> None:
    """A request whose expires_at passed is acknowledged without running the handler."""
    worker = bus.worker("inventory")
    calls: list[Any] = []

    @worker.handler("inventory.stock.get")
    async def stock(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append(action)

    queue = QM.get_response_queue("orders", "gone")
    action = DomainAction(
        action_type="inventory.stock.get", callback_queue_name=queue,
        expires_at=utc_now() - timedelta(seconds=1),
    )
    await xadd_raw(bus.redis, "inventory", action.model_dump_json())
    await worker.start()
    await eventually(lambda: worker.stats.expired_skipped == 1)
    await eventually(lambda: drained(bus.redis, "inventory"))
    assert calls == []
    assert not await bus.redis.exists(queue)
    assert await worker.dead_letters.count() == 0


async def test_idempotent_handler_not_rerun_for_same_action_id(bus: Any, eventually: Any) -> None:
    """With idempotent=True a second delivery of the same action_id is acked, not re-run."""
    worker = bus.worker("inventory")
    calls: list[str] = []

    @worker.handler("inventory.item.reserve", idempotent=True)
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append(str(action.action_id))

    await worker.start()
    payload = DomainAction(action_type="inventory.item.reserve").model_dump_json()
    await xadd_raw(bus.redis, "inventory", payload)
    await eventually(lambda: worker.stats.handled == 1)
    await eventually(lambda: drained(bus.redis, "inventory"))
    await xadd_raw(bus.redis, "inventory", payload)
    await eventually(lambda: worker.stats.duplicates_skipped == 1)
    await eventually(lambda: drained(bus.redis, "inventory"))
    assert len(calls) == 1


async def test_idempotent_duplicate_gets_the_stored_reply(bus: Any, eventually: Any) -> None:
    """A waiting caller resending an already handled action gets the first response again."""
    worker = bus.worker("inventory")
    calls: list[int] = []

    @worker.handler("inventory.item.reserve", idempotent=True)
    async def reserve(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return {"n": len(calls)}

    await worker.start()
    client = bus.client("orders")
    action = DomainAction(action_type="inventory.item.reserve")
    first = await client.send_action_pseudo_sync(action, timeout=5)
    second = await client.send_action_pseudo_sync(action, timeout=5)
    assert first is not None
    assert second is not None
    assert first.data == second.data == {"n": 1}
    assert calls == [1]
