"""README promises about dead letters written by workers, and idempotency markers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from actionbus import ActionRejected, DomainAction, QueueManager
from actionbus.models.actions import utc_now

from .conftest import pending_count, wait_for

pytestmark = pytest.mark.backends


async def test_worker_dead_letter_carries_where_and_when_it_failed(
    bus: Any, make_worker: Any, qm: QueueManager
) -> None:
    """The raw dead-letter entry has original_id, consumer, stream, deliveries and failed_at."""
    worker = make_worker("dl", max_deliveries=2)

    @worker.handler("dl.op.run")
    async def fail(action: DomainAction, data: dict[str, Any]) -> None:
        raise RuntimeError("disk full")

    await worker.start()
    before = utc_now()
    entry_id = await bus.client("caller").send_action_async(DomainAction(action_type="dl.op.run"))
    dead = qm.get_dead_letter_stream("dl")
    await wait_for(lambda: bus.redis.xlen(dead), "a dead letter")
    after = utc_now()
    [(_, raw)] = await bus.redis.xrange(dead)
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    assert fields["original_id"] == entry_id
    assert fields["consumer"] == worker.consumer
    assert fields["stream"] == qm.get_service_action_stream("dl")
    assert fields["deliveries"] == "2"
    assert (fields["reason"], fields["error_type"]) == ("max_deliveries", "RuntimeError")
    assert before <= datetime.fromisoformat(fields["failed_at"]) <= after
    [letter] = await worker.dead_letters.list()
    assert (letter.original_id, letter.consumer, letter.deliveries) == (
        entry_id, worker.consumer, 2)


async def test_dead_letters_are_not_trimmed_by_maintenance(
    bus: Any, make_worker: Any, qm: QueueManager
) -> None:
    """Maintenance with a tiny retention trims the action stream, never the dead letters."""
    worker = make_worker("keep", stream_retention=1)

    @worker.handler("keep.op.run")
    async def reject(action: DomainAction, data: dict[str, Any]) -> None:
        raise ActionRejected("never")

    await worker.start()
    client = bus.client("caller")
    for _ in range(5):
        await client.send_action_async(DomainAction(action_type="keep.op.run"))
    dead = qm.get_dead_letter_stream("keep")
    await wait_for(lambda: _all_acked(bus.redis, worker, 5), "all five buried and acked")
    await worker.maintain()
    assert await bus.redis.xlen(qm.get_service_action_stream("keep")) <= 1
    assert await bus.redis.xlen(dead) == 5


async def test_idempotency_marker_expires_after_idempotency_ttl_s(
    bus: Any, make_worker: Any, qm: QueueManager
) -> None:
    """The marker of a completed idempotent action carries ``idempotency_ttl_s`` as its TTL."""
    worker = make_worker("idem", idempotency_ttl_s=123)

    @worker.handler("idem.op.run", idempotent=True)
    async def run(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    await worker.start()
    action = DomainAction(action_type="idem.op.run")
    await bus.client("caller").send_action_async(action)
    marker = qm.get_idempotency_key("idem", str(action.action_id))
    await wait_for(lambda: bus.redis.exists(marker), "the idempotency marker")
    assert 100 < await bus.redis.ttl(marker) <= 123


async def _all_acked(redis: Any, worker: Any, count: int) -> bool:
    dead = await redis.xlen(worker.queue_manager.get_dead_letter_stream(worker.service_name))
    return bool(dead == count and await pending_count(redis, worker.stream, worker.group) == 0)
