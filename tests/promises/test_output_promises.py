"""README promises about what a worker writes: reply TTLs, late replies, error replies, order."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from actionbus import ActionRejected, DomainAction, DomainActionResponse, QueueManager
from actionbus.models.actions import utc_now

from .conftest import pending_count, wait_for

pytestmark = pytest.mark.backends


class Coded(Exception):
    """A handler failure that carries an application error code."""

    error_code = "E42"


async def test_reply_list_ttl_is_response_ttl_seconds(
    bus: Any, make_worker: Any, qm: QueueManager
) -> None:
    """A pseudo-sync reply list gets the worker's ``response_ttl_seconds`` as its TTL."""
    worker = make_worker("ttl", app={"response_ttl_seconds": 77})
    worker.register("ttl.op.run", _answer)
    await worker.start()
    queue = qm.get_response_queue("caller", "ttlcheck")
    await bus.client("caller").send_action_async(
        DomainAction(action_type="ttl.op.run", callback_queue_name=queue, correlation_id="c1")
    )
    await wait_for(lambda: bus.redis.exists(queue), "the reply list exists")
    assert 60 < await bus.redis.ttl(queue) <= 77


async def test_reply_finished_after_the_deadline_is_not_written(
    bus: Any, make_worker: Any, qm: QueueManager
) -> None:
    """A reply whose handler finished after the caller's ``expires_at`` is never pushed."""
    worker = make_worker("late", clock_skew_s=0)
    release = asyncio.Event()
    started = asyncio.Event()

    @worker.handler("late.op.run")
    async def slow(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("slow"):
            started.set()
            await release.wait()
        return {"n": data["n"]}

    await worker.start()
    queue = qm.get_response_queue("caller", "late")
    client = bus.client("caller")
    deadline = utc_now() + timedelta(seconds=0.3)
    await client.send_action_async(DomainAction(
        action_type="late.op.run", data={"n": 1, "slow": True}, callback_queue_name=queue,
        correlation_id="late", expires_at=deadline,
    ))
    await asyncio.wait_for(started.wait(), 10)
    await wait_for(lambda: utc_now() > deadline, "the caller's deadline passed")
    release.set()
    await wait_for(
        lambda: _no_pending(bus.redis, worker), "the late action is acknowledged"
    )
    await client.send_action_async(DomainAction(
        action_type="late.op.run", data={"n": 2}, callback_queue_name=queue,
        correlation_id="marker",
    ))
    await wait_for(lambda: bus.redis.exists(queue), "the marker's reply arrived")
    replies = [DomainActionResponse.model_validate_json(r)
               for r in await bus.redis.lrange(queue, 0, -1)]
    assert [r.correlation_id for r in replies] == ["marker"]


async def test_error_reply_after_the_deadline_is_not_written(
    bus: Any, make_worker: Any, qm: QueueManager
) -> None:
    """An error reply for a caller whose ``expires_at`` passed is not pushed either."""
    worker = make_worker("laterr", clock_skew_s=0)
    release = asyncio.Event()
    started = asyncio.Event()

    @worker.handler("laterr.op.run")
    async def slow(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("slow"):
            started.set()
            await release.wait()
            raise ActionRejected("too late anyway", error_code="late")
        return {"n": data["n"]}

    await worker.start()
    queue = qm.get_response_queue("caller", "laterr")
    client = bus.client("caller")
    deadline = utc_now() + timedelta(seconds=0.3)
    await client.send_action_async(DomainAction(
        action_type="laterr.op.run", data={"n": 1, "slow": True}, callback_queue_name=queue,
        correlation_id="late", expires_at=deadline,
    ))
    await asyncio.wait_for(started.wait(), 10)
    await wait_for(lambda: utc_now() > deadline, "the caller's deadline passed")
    release.set()
    await wait_for(lambda: _no_pending(bus.redis, worker), "the late action is acknowledged")
    await client.send_action_async(DomainAction(
        action_type="laterr.op.run", data={"n": 2}, callback_queue_name=queue,
        correlation_id="marker",
    ))
    await wait_for(lambda: bus.redis.exists(queue), "the marker's reply arrived")
    replies = [DomainActionResponse.model_validate_json(r)
               for r in await bus.redis.lrange(queue, 0, -1)]
    assert [r.correlation_id for r in replies] == ["marker"]


async def test_failing_pseudo_sync_handler_runs_once_and_replies_its_error_code(
    bus: Any, make_worker: Any, qm: QueueManager
) -> None:
    """A pseudo-sync request whose handler raises gets the error (with error_code), no retry."""
    worker = make_worker("errs", max_deliveries=3)
    calls: list[str] = []

    @worker.handler("errs.op.run")
    async def fail(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append(str(action.action_id))
        raise Coded("the warehouse is closed")

    await worker.start()
    response = await bus.client("caller").send_action_pseudo_sync(
        DomainAction(action_type="errs.op.run"), timeout=10
    )
    assert response is not None
    assert response.success is False
    assert response.error is not None
    assert response.error.error_type == "Coded"
    assert response.error.error_code == "E42"
    assert response.error.message == "the warehouse is closed"
    await wait_for(lambda: _no_pending(bus.redis, worker), "the request is acknowledged")
    assert len(calls) == 1
    assert await bus.redis.xlen(qm.get_dead_letter_stream("errs")) == 0


async def test_rejected_pseudo_sync_reply_carries_the_rejection_code(
    bus: Any, make_worker: Any
) -> None:
    """``ActionRejected(error_code=...)`` reaches the waiting caller as ``error.error_code``."""
    worker = make_worker("rej")

    @worker.handler("rej.op.run")
    async def reject(action: DomainAction, data: dict[str, Any]) -> None:
        raise ActionRejected("sku 7 does not exist", error_code="unknown_sku")

    await worker.start()
    response = await bus.client("caller").send_action_pseudo_sync(
        DomainAction(action_type="rej.op.run"), timeout=10
    )
    assert response is not None
    assert response.error is not None
    assert (response.error.error_type, response.error.error_code) == (
        "ActionRejected", "unknown_sku")


async def test_unserializable_result_replies_its_error_code(bus: Any, make_worker: Any) -> None:
    """A result that cannot be serialized reaches the caller as error_code
    'unserializable_result' (an ActionRejected, so it is not retried)."""
    worker = make_worker("unser")

    @worker.handler("unser.op.run")
    async def run(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"x": object()}

    await worker.start()
    response = await bus.client("caller").send_action_pseudo_sync(
        DomainAction(action_type="unser.op.run"), timeout=10)
    assert response is not None
    assert response.error is not None
    assert (response.error.error_type, response.error.error_code) == (
        "ActionRejected", "unserializable_result")


async def test_failure_callback_carries_the_error_code(
    bus: Any, make_worker: Any, qm: QueueManager
) -> None:
    """The failure callback of a rejected action carries its error_code in metadata."""
    worker = make_worker("cbcode")

    @worker.handler("cbcode.op.run")
    async def run(action: DomainAction, data: dict[str, Any]) -> None:
        raise ActionRejected("no customer", error_code="no_customer")

    await worker.start()
    await bus.client("caller").send_action_async_with_callback(
        DomainAction(action_type="cbcode.op.run"), "caller.op.done")
    callbacks = qm.get_service_action_stream("caller")
    await wait_for(lambda: bus.redis.xlen(callbacks), "the failure callback")
    [(_, fields)] = await bus.redis.xrange(callbacks)
    callback = DomainAction.model_validate_json(fields[b"data"])
    assert callback.metadata["success"] is False
    assert callback.metadata["error"]["error_code"] == "no_customer"


@pytest.mark.standalone_only("MONITOR shows one server's command order; on a cluster the "
                             "reply and the XACK are on different nodes: test_cluster_promises")
async def test_outputs_are_executed_before_the_acknowledgement(
    bus: Any, make_worker: Any, qm: QueueManager, redis_url: str
) -> None:
    """On one server, the reply push, its EXPIRE and every XADD run before the entry's XACK."""
    seen: list[str] = []
    ready = asyncio.Event()
    monitor = asyncio.create_task(_monitor(redis_url, seen, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        worker = make_worker("order")

        @worker.handler("order.op.run")
        async def run(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
            if data.get("reject"):
                raise ActionRejected("no", error_code="no")
            return {"ok": True}

        await worker.start()
        client = bus.client("caller")
        response = await client.send_action_pseudo_sync(
            DomainAction(action_type="order.op.run"), timeout=10)
        assert response is not None
        assert response.success
        await client.send_action_async_with_callback(
            DomainAction(action_type="order.op.run", data={"reject": True}), "caller.op.done")
        await wait_for(lambda: sum(c.startswith("XACK") for c in seen) >= 2, "two XACKs seen")
    finally:
        monitor.cancel()
        await asyncio.gather(monitor, return_exceptions=True)
    acks = [i for i, c in enumerate(seen) if c.startswith("XACK")]
    reply = client.response_queue
    lpush = _index(seen, f"LPUSH {reply}")
    expire = _index(seen, f"EXPIRE {reply}")
    dead = _index(seen, f"XADD {qm.get_dead_letter_stream('order')}")
    callback = _index(seen, f"XADD {qm.get_service_action_stream('caller')}", after=lpush)
    assert lpush < expire < acks[0]
    assert dead < acks[1]
    assert callback < acks[1]


async def _answer(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


async def _no_pending(redis: Redis, worker: Any) -> bool:
    return await pending_count(redis, worker.stream, worker.group) == 0


def _index(seen: list[str], prefix: str, after: int = -1) -> int:
    for i, command in enumerate(seen):
        if i > after and command.startswith(prefix):
            return i
    raise AssertionError(f"no {prefix!r} in {seen}")


async def _monitor(url: str, seen: list[str], ready: asyncio.Event) -> None:
    client = Redis.from_url(url)
    try:
        async with client.monitor() as monitor:
            ready.set()
            while True:
                command = await monitor.next_command()
                seen.append(str(command["command"]))
    finally:
        await client.aclose()
