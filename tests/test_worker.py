"""BaseWorker: group setup, routing, validation, replies, retries, dead letters, shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from actionbus import (
    ActionRejected,
    BaseRedisClient,
    BaseWorker,
    ClientNotInitializedError,
    CommonAppSettings,
    ConfigurationError,
    DomainAction,
    DomainActionResponse,
    HandlerError,
    QueueManager,
    WorkerSettings,
)
from actionbus.models.actions import utc_now

Settings = Callable[..., CommonAppSettings]
QM = QueueManager("dev")


class Reserve(BaseModel):
    """Data of inventory.item.reserve."""

    sku: str
    qty: int


async def _noop(action: DomainAction, data: Any) -> None:
    return None


async def _xadd(redis: Any, service: str, payload: dict[str, Any] | str) -> str:
    """Append a raw entry as any producer (redis-cli, Node, Go) would."""
    raw = payload if isinstance(payload, str) else json.dumps(payload, default=str)
    entry_id = await redis.xadd(QM.get_service_action_stream(service), {"data": raw})
    return str(entry_id.decode())


async def _pending(redis: Any, service: str) -> int:
    info = await redis.xpending(QM.get_service_action_stream(service), service)
    return int(info["pending"])


async def _drained(redis: Any, service: str) -> bool:
    """True once nothing is pending (unacknowledged) for ``service``."""
    return await _pending(redis, service) == 0


async def _dead(worker: BaseWorker) -> list[Any]:
    return await worker.dead_letters.list()


def test_constructor_rejects_bad_service_name(conn: Any, make_settings: Settings) -> None:
    """A worker for an invalid service name is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="service name"):
        BaseWorker(make_settings(), conn, service_name="bad:name")


def test_constructor_rejects_socket_timeout_below_block(
    conn: Any, make_settings: Settings
) -> None:
    """redis_socket_timeout must exceed block_ms, or every blocking read would time out."""
    with pytest.raises(ConfigurationError, match="block_ms"):
        BaseWorker(
            make_settings(redis_socket_timeout=1), conn,
            worker_settings=WorkerSettings(block_ms=2000),
        )


def test_redis_client_before_start_raises(make_settings: Settings) -> None:
    """Without a client given, redis_client before start() is ClientNotInitializedError."""
    worker = BaseWorker(make_settings())
    with pytest.raises(ClientNotInitializedError, match="start"):
        _ = worker.redis_client


def test_register_rejects_bad_declarations(conn: Any, make_settings: Settings) -> None:
    """A sync handler, a duplicate, a malformed action type or a non-model data_model fail."""
    worker = BaseWorker(make_settings(service_name="inventory"), conn)
    worker.register("inventory.item.reserve", _noop)
    with pytest.raises(HandlerError, match="already registered"):
        worker.register("inventory.item.reserve", _noop)
    with pytest.raises(HandlerError, match="async def"):
        worker.register("inventory.item.sync", lambda action, data: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(HandlerError, match="action_type"):
        worker.register("not valid", _noop)
    with pytest.raises(HandlerError, match="Pydantic model"):
        worker.register("inventory.item.x", _noop, data_model=dict)  # type: ignore[arg-type]
    with pytest.raises(HandlerError, match="already registered"):
        worker.handler("inventory.item.reserve")(_noop)
    assert worker.registry.action_types == ["inventory.item.reserve"]


async def test_start_creates_stream_and_group(bus: Any) -> None:
    """start() creates the service's stream and its consumer group when missing."""
    stream = QM.get_service_action_stream("inventory")
    assert not await bus.redis.exists(stream)
    worker = bus.worker("inventory")
    await worker.start()
    groups = await bus.redis.xinfo_groups(stream)
    assert [g["name"] for g in groups] == [b"inventory"]
    await worker.start()  # a second start is a no-op


async def test_actions_sent_before_worker_existed_are_delivered(bus: Any, eventually: Any) -> None:
    """Actions already on the stream when the group is created are handled."""
    client = bus.client("orders")
    for i in range(3):
        await client.send_action_async(DomainAction(action_type="inventory.item.n", data={"i": i}))
    seen: list[int] = []
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.n")
    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(data["i"])

    await worker.start()
    await eventually(lambda: len(seen) == 3)
    assert sorted(seen) == [0, 1, 2]


async def test_routes_by_action_type(bus: Any, eventually: Any) -> None:
    """Each action goes to the handler registered for its action_type, and is acked."""
    worker = bus.worker("inventory")
    calls: list[tuple[str, Any]] = []

    @worker.handler("inventory.item.reserve", data_model=Reserve)
    async def reserve(action: DomainAction, data: Reserve) -> None:
        calls.append(("reserve", data))

    @worker.handler("inventory.item.release")
    async def release(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append(("release", data))

    await worker.start()
    client = bus.client("orders")
    await client.send_action_async(
        DomainAction(action_type="inventory.item.reserve", data={"sku": "A", "qty": 1})
    )
    await client.send_action_async(
        DomainAction(action_type="inventory.item.release", data={"sku": "B"})
    )
    await eventually(lambda: len(calls) == 2)
    assert ("reserve", Reserve(sku="A", qty=1)) in calls
    assert ("release", {"sku": "B"}) in calls
    await eventually(lambda: worker.stats.handled == 2)
    await eventually(lambda: _drained(bus.redis, "inventory"))


async def test_data_model_mismatch_dead_lettered_without_retry(
    bus: Any, eventually: Any
) -> None:
    """Data that does not match data_model is dead-lettered at once; the handler never runs."""
    worker = bus.worker("inventory", max_deliveries=5)
    calls: list[Any] = []

    @worker.handler("inventory.item.reserve", data_model=Reserve)
    async def reserve(action: DomainAction, data: Reserve) -> None:
        calls.append(data)

    await worker.start()
    client = bus.client("orders")
    await client.send_action_async(
        DomainAction(action_type="inventory.item.reserve", data={"sku": "A", "qty": "many"})
    )
    [letter] = await eventually(lambda: _dead(worker))
    assert calls == []
    assert letter.reason == "rejected"
    assert letter.error_type == "ActionRejected"
    assert "Reserve" in letter.error_message
    assert letter.deliveries == 1
    await eventually(lambda: _drained(bus.redis, "inventory"))


async def test_data_model_mismatch_replies_error_to_waiting_caller(bus: Any) -> None:
    """A pseudo-sync caller whose data does not match data_model gets an error response."""
    worker = bus.worker("inventory")
    worker.register("inventory.item.reserve", _noop, data_model=Reserve)
    await worker.start()
    client = bus.client("orders")
    response = await client.send_action_pseudo_sync(
        DomainAction(action_type="inventory.item.reserve", data={"sku": "A"}), timeout=5
    )
    assert response is not None
    assert response.success is False
    assert response.error is not None
    assert response.error.error_type == "ActionRejected"
    assert response.error.error_code == "invalid_data"


async def test_handler_exception_becomes_error_response(bus: Any) -> None:
    """A handler that raises gives a waiting caller success=False with an ErrorDetail."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        raise RuntimeError("out of stock")

    await worker.start()
    client = bus.client("orders")
    action = DomainAction(action_type="inventory.item.reserve", trace_id="t")
    response = await client.send_action_pseudo_sync(action, timeout=5)
    assert response is not None
    assert response.success is False
    assert response.error is not None
    assert response.error.error_type == "RuntimeError"
    assert response.error.message == "out of stock"
    assert response.correlation_id == str(action.action_id)
    assert response.trace_id == "t"
    assert worker.stats.error_replies == 1


async def test_handler_result_types(bus: Any) -> None:
    """A handler may return a dict, a Pydantic model, None or its own DomainActionResponse."""
    worker = bus.worker("svc")

    @worker.handler("svc.r.model")
    async def model(action: DomainAction, data: Any) -> Reserve:
        return Reserve(sku="S", qty=3)

    @worker.handler("svc.r.none")
    async def none(action: DomainAction, data: Any) -> None:
        return None

    @worker.handler("svc.r.own")
    async def own(action: DomainAction, data: Any) -> DomainActionResponse:
        return DomainActionResponse.for_action(action, data={"own": True})

    @worker.handler("svc.r.bad")
    async def bad(action: DomainAction, data: Any) -> int:
        return 42

    await worker.start()
    client = bus.client("orders")

    async def call(kind: str) -> DomainActionResponse:
        response = await client.send_action_pseudo_sync(
            DomainAction(action_type=f"svc.r.{kind}"), timeout=5
        )
        assert response is not None
        return response

    assert (await call("model")).data == {"sku": "S", "qty": 3}
    assert (await call("none")).data == {}
    assert (await call("own")).data == {"own": True}
    bad_response = await call("bad")
    assert bad_response.success is False
    assert bad_response.error is not None
    assert bad_response.error.error_type == "HandlerError"


async def test_unserializable_result_becomes_error_response(bus: Any, eventually: Any) -> None:
    """A handler result that cannot be serialized gives the caller an error and is acked."""
    worker = bus.worker("svc")

    @worker.handler("svc.r.obj")
    async def obj(action: DomainAction, data: Any) -> dict[str, Any]:
        return {"x": object()}

    await worker.start()
    client = bus.client("orders")
    response = await client.send_action_pseudo_sync(DomainAction(action_type="svc.r.obj"), 2)
    assert response is not None
    assert response.success is False
    await eventually(lambda: _drained(bus.redis, "svc"))


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
    [letter] = await eventually(lambda: _dead(worker))
    assert len(attempts) == 3
    assert letter.reason == "max_deliveries"
    assert letter.deliveries == 3
    assert letter.error_type == "ConnectionResetError"
    assert "downstream unavailable" in letter.error_message
    assert letter.stream == QM.get_service_action_stream("inventory")
    assert DomainAction.model_validate_json(letter.data).action_type == "inventory.item.reserve"
    await eventually(lambda: _drained(bus.redis, "inventory"))
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
    await eventually(lambda: _drained(bus.redis, "inventory"))


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
    [letter] = await eventually(lambda: _dead(worker))
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


async def test_concurrency_bound_respected(bus: Any, eventually: Any) -> None:
    """No more than ``concurrency`` handlers run at the same time."""
    worker = bus.worker("inventory", concurrency=3)
    running = 0
    peak = 0
    done: list[int] = []

    @worker.handler("inventory.item.slow")
    async def slow(action: DomainAction, data: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        done.append(1)

    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="inventory.item.slow") for _ in range(12)]
    )
    await worker.start()
    await eventually(lambda: len(done) == 12)
    assert peak == 3


async def test_subclass_handle_action_hook(bus: Any, eventually: Any) -> None:
    """A subclass overriding handle_action receives actions with no registered handler."""
    seen: list[str] = []

    class InventoryWorker(BaseWorker):
        async def handle_action(self, action: DomainAction) -> dict[str, Any]:
            seen.append(action.action_type)
            return {"handled_by": "hook"}

    worker = bus.worker("inventory", cls=InventoryWorker)
    worker.register("inventory.item.registered", _noop)
    await worker.start()
    client = bus.client("orders")
    response = await client.send_action_pseudo_sync(
        DomainAction(action_type="inventory.item.other"), timeout=5
    )
    assert response is not None
    assert response.data == {"handled_by": "hook"}
    await client.send_action_async(DomainAction(action_type="inventory.item.registered"))
    await eventually(lambda: worker.stats.handled == 2)
    assert seen == ["inventory.item.other"]


async def test_unhandled_action_type_ends_in_dead_letters(bus: Any, eventually: Any) -> None:
    """Without a handler or hook an action fails naming the type and is finally dead-lettered."""
    worker = bus.worker("inventory", max_deliveries=2)
    worker.register("inventory.item.known", _noop)
    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.other"))
    [letter] = await eventually(lambda: _dead(worker))
    assert letter.error_type == "HandlerError"
    assert "inventory.item.other" in letter.error_message
    assert "inventory.item.known" in letter.error_message


async def test_stop_leaves_unfinished_actions_pending(bus: Any, eventually: Any) -> None:
    """stop() after the grace period leaves an unfinished action pending for another worker."""
    worker = bus.worker("inventory")
    started = asyncio.Event()

    @worker.handler("inventory.item.hang")
    async def hang(action: DomainAction, data: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(60)

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.hang"))
    await asyncio.wait_for(started.wait(), 5)
    await worker.stop(grace=0.1)
    assert worker.in_flight == 0
    assert worker.stats.handled == 0
    assert await _pending(bus.redis, "inventory") == 1

    rescuer = bus.worker(
        "inventory", claim_idle_ms=100, reclaim_interval_s=0.1, consumer_name="rescuer"
    )
    rescued: list[DomainAction] = []

    @rescuer.handler("inventory.item.hang")
    async def finish(action: DomainAction, data: dict[str, Any]) -> None:
        rescued.append(action)

    await rescuer.start()
    await eventually(lambda: rescued)
    await eventually(lambda: _drained(bus.redis, "inventory"))
    assert rescuer.stats.reclaimed == 1


async def test_stop_drains_in_flight_actions_within_grace(bus: Any, eventually: Any) -> None:
    """stop() lets a running handler finish within the grace period and acknowledges it."""
    worker = bus.worker("inventory")
    started = asyncio.Event()
    finished: list[int] = []

    @worker.handler("inventory.item.slow")
    async def slow(action: DomainAction, data: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(0.2)
        finished.append(1)

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.slow"))
    await asyncio.wait_for(started.wait(), 5)
    await worker.stop(grace=5)
    assert finished == [1]
    assert worker.stats.handled == 1
    assert await _pending(bus.redis, "inventory") == 0


async def test_concurrent_start_runs_one_set_of_loops(
    conn: Any, make_settings: Settings
) -> None:
    """Two concurrent start() calls start the worker once; stop() leaves no task behind."""
    worker = BaseWorker(
        make_settings(service_name="inventory"), conn, worker_settings=WorkerSettings(block_ms=100)
    )

    def ours() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name().startswith("actionbus-")
                and t.get_name().endswith(worker.stream) and not t.done()]

    try:
        await asyncio.gather(worker.start(), worker.start())
        running = len(ours())
        await worker.stop(grace=0.1)
        await asyncio.sleep(0.05)
        left = ours()
    finally:  # never leave orphans running into the next test
        await worker.stop(grace=0.1)
        orphans = ours()
        for task in orphans:
            task.cancel()
        await asyncio.gather(*orphans, return_exceptions=True)
    assert running == 3  # read, upkeep, output
    assert left == []


async def test_async_with_and_run(bus: Any, make_settings: Settings) -> None:
    """``async with worker`` starts and stops it; run() returns after request_stop()."""
    worker = bus.worker("inventory")
    async with worker:
        assert worker.redis_client is bus.redis
    other = BaseWorker(
        make_settings(service_name="inventory"),
        worker_settings=WorkerSettings(block_ms=100, consumer_name="own-client"),
    )
    task = asyncio.create_task(other.run())
    await asyncio.sleep(0.2)
    assert await other.redis_client.ping()
    other.request_stop()
    await asyncio.wait_for(task, 5)
    with pytest.raises(ClientNotInitializedError):
        _ = other.redis_client


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
    await _xadd(bus.redis, "inventory", action.model_dump_json())
    await worker.start()
    await eventually(lambda: worker.stats.expired_skipped == 1)
    await eventually(lambda: _drained(bus.redis, "inventory"))
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
    await _xadd(bus.redis, "inventory", payload)
    await eventually(lambda: worker.stats.handled == 1)
    await eventually(lambda: _drained(bus.redis, "inventory"))
    await _xadd(bus.redis, "inventory", payload)
    await eventually(lambda: worker.stats.duplicates_skipped == 1)
    await eventually(lambda: _drained(bus.redis, "inventory"))
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


@pytest.mark.parametrize(
    ("queue", "callback_type"),
    [
        ("victim:key", None),
        ("actionbus:dev:orders:streams:main", None),
        ("actionbus:prod:orders:responses:x", None),
        ("actionbus:dev:orders:responses:x", "orders.x.done"),
        ("victim:stream", "orders.x.done"),
    ],
)
async def test_forged_reply_target_dead_lettered(
    bus: Any, eventually: Any, queue: str, callback_type: str | None
) -> None:
    """An action whose callback_queue_name is outside the namespace is dead-lettered unhandled."""
    worker = bus.worker("inventory")
    calls: list[Any] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        calls.append(action)
        return {"x": 1}

    await worker.start()
    payload: dict[str, Any] = {
        "action_type": "inventory.item.reserve", "callback_queue_name": queue,
    }
    if callback_type:
        payload["callback_action_type"] = callback_type
    await _xadd(bus.redis, "inventory", payload)
    [letter] = await eventually(lambda: _dead(worker))
    assert letter.reason == "malformed"
    assert letter.error_type == "InvalidReplyTarget"
    assert calls == []
    assert not await bus.redis.exists(queue)
    await eventually(lambda: _drained(bus.redis, "inventory"))


@pytest.mark.parametrize(
    ("fields", "error_type"),
    [
        ({"data": "{not json"}, "InvalidJSON"),
        ({"data": '{"action_type": "no dots here"}'}, "InvalidAction"),
        ({"payload": "{}"}, "MissingField"),
    ],
)
async def test_malformed_entries_dead_lettered_and_worker_survives(
    bus: Any, eventually: Any, fields: dict[str, str], error_type: str
) -> None:
    """Bad entries are dead-lettered with the reason, and the next good action is handled."""
    worker = bus.worker("inventory")
    worker.register("inventory.item.ok", _noop)
    await worker.start()
    await bus.redis.xadd(QM.get_service_action_stream("inventory"), fields)
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.ok"))
    [letter] = await eventually(lambda: _dead(worker))
    assert letter.reason == "malformed"
    assert letter.error_type == error_type
    await eventually(lambda: worker.stats.handled == 1)
    await eventually(lambda: _drained(bus.redis, "inventory"))


async def test_unknown_fields_reach_the_handler(bus: Any, eventually: Any) -> None:
    """Fields unknown to this version arrive in action.model_extra."""
    worker = bus.worker("inventory")
    extras: list[dict[str, Any]] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        extras.append(dict(action.model_extra or {}))

    await worker.start()
    await _xadd(bus.redis, "inventory", {"action_type": "inventory.item.reserve", "x_new": [1]})
    await eventually(lambda: extras)
    assert extras == [{"x_new": [1]}]


async def test_raw_producer_and_raw_reply(bus: Any, eventually: Any) -> None:
    """A foreign producer can XADD an action and read the worker's reply by BRPOP."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.stock.get")
    async def stock(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"qty": 5}

    await worker.start()
    queue = QM.get_response_queue("nodejs", "req-1")
    await _xadd(bus.redis, "inventory", {
        "action_type": "inventory.stock.get", "correlation_id": "req-1",
        "callback_queue_name": queue,
    })
    popped = await bus.redis.brpop([queue], timeout=5)
    assert popped is not None
    reply = json.loads(popped[1])
    assert reply["success"] is True
    assert reply["data"] == {"qty": 5}
    assert reply["correlation_id"] == "req-1"


def test_worker_accepts_base_redis_client_peer(conn: Any, make_settings: Settings) -> None:
    """A worker and a client of the same service agree on the stream name."""
    settings = make_settings(service_name="inventory")
    worker = BaseWorker(settings, conn)
    client = BaseRedisClient("inventory", conn, settings)
    assert worker.stream == client.queue_manager.get_service_action_stream("inventory")
    assert worker.group == "inventory"


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


async def test_restart_after_stop(bus: Any, eventually: Any) -> None:
    """A stopped worker can be started again and handles new actions."""
    worker = bus.worker("inventory")
    seen: list[int] = []

    @worker.handler("inventory.item.n")
    async def handle(action: DomainAction, data: dict[str, Any]) -> None:
        seen.append(data["i"])

    client = bus.client("orders")
    await worker.start()
    await client.send_action_async(DomainAction(action_type="inventory.item.n", data={"i": 1}))
    await eventually(lambda: seen == [1])
    await worker.stop()
    await client.send_action_async(DomainAction(action_type="inventory.item.n", data={"i": 2}))
    await worker.start()
    await eventually(lambda: seen == [1, 2])


async def test_consumers_of_one_group_share_the_work(bus: Any, eventually: Any) -> None:
    """Two workers of one service split the actions; each action is handled once."""
    seen: list[tuple[str, int]] = []
    for name in ("w1", "w2"):
        worker = bus.worker("inventory", consumer_name=name, concurrency=2)

        async def handle(action: DomainAction, data: dict[str, Any], name: str = name) -> None:
            await asyncio.sleep(0.01)
            seen.append((name, data["i"]))

        worker.register("inventory.item.n", handle)
        await worker.start()
    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="inventory.item.n", data={"i": i}) for i in range(20)]
    )
    await eventually(lambda: len(seen) == 20)
    await asyncio.sleep(0.1)
    assert sorted(i for _, i in seen) == list(range(20))
    assert {name for name, _ in seen} == {"w1", "w2"}


async def test_separate_groups_each_get_every_action(bus: Any, eventually: Any) -> None:
    """A worker with its own group_name receives every action too (fan-out)."""
    seen: dict[str, list[int]] = {"inventory": [], "audit": []}
    for group in ("inventory", "audit"):
        worker = bus.worker("inventory", group_name=group)

        async def handle(action: DomainAction, data: dict[str, Any], group: str = group) -> None:
            seen[group].append(data["i"])

        worker.register("inventory.item.n", handle)
        await worker.start()
    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="inventory.item.n", data={"i": i}) for i in range(3)]
    )
    await eventually(lambda: len(seen["inventory"]) == 3 and len(seen["audit"]) == 3)


async def test_maintain_trims_processed_entries_only(bus: Any, eventually: Any) -> None:
    """maintain() trims acknowledged entries beyond stream_retention but keeps undelivered ones."""
    worker = bus.worker("inventory", stream_retention=5)
    worker.register("inventory.item.n", _noop)
    await worker.start()
    client = bus.client("orders")
    await client.send_actions_async(
        [DomainAction(action_type="inventory.item.n") for _ in range(20)]
    )
    await eventually(lambda: worker.stats.handled == 20)
    await eventually(lambda: _drained(bus.redis, "inventory"))
    await worker.maintain()
    stream = QM.get_service_action_stream("inventory")
    assert await bus.redis.xlen(stream) <= 5
    await worker.stop()
    await client.send_actions_async(
        [DomainAction(action_type="inventory.item.n") for _ in range(8)]
    )
    await worker.maintain()
    assert await bus.redis.xlen(stream) >= 8


async def test_maintain_removes_gone_consumers(bus: Any, eventually: Any) -> None:
    """maintain() removes consumers idle longer than consumer_gone_after_s with nothing pending."""
    worker = bus.worker("inventory", consumer_gone_after_s=0.05, consumer_name="alive")
    worker.register("inventory.item.n", _noop)
    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.n"))
    await eventually(lambda: worker.stats.handled == 1)
    stream = QM.get_service_action_stream("inventory")
    await bus.redis.execute_command("XGROUP", "CREATECONSUMER", stream, "inventory", "gone")
    await asyncio.sleep(0.15)
    await worker.maintain()
    names = {c["name"] for c in await bus.redis.xinfo_consumers(stream, "inventory")}
    assert names == {b"alive"}


async def test_round_trip_with_decoded_responses(
    make_settings: Settings, eventually: Any
) -> None:
    """Workers and clients also work on clients created with redis_decode_responses=True."""
    from actionbus import RedisManager

    settings = make_settings(service_name="inventory", redis_decode_responses=True)
    async with RedisManager(settings) as manager:
        redis = manager.get_client()
        worker = BaseWorker(settings, redis, worker_settings=WorkerSettings(block_ms=100))

        @worker.handler("inventory.stock.get")
        async def stock(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
            return {"qty": 1}

        async with worker:
            client = BaseRedisClient("orders", redis, settings)
            response = await client.send_action_pseudo_sync(
                DomainAction(action_type="inventory.stock.get"), timeout=5
            )
            await client.close()
            await eventually(lambda: _drained(redis, "inventory"))
    assert response is not None
    assert response.data == {"qty": 1}


async def test_raw_callback_request_by_origin_service(bus: Any, eventually: Any) -> None:
    """A raw action with callback_action_type and origin_service gets its callback on its stream."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"reserved": True}

    await worker.start()
    await _xadd(bus.redis, "inventory", {
        "action_type": "inventory.item.reserve", "origin_service": "goservice",
        "callback_action_type": "goservice.item.reserved", "correlation_id": "k1",
    })
    stream = QM.get_service_action_stream("goservice")
    await eventually(lambda: bus.redis.xlen(stream))
    [(_, fields)] = await bus.redis.xrange(stream)
    callback = DomainAction.model_validate_json(fields[b"data"])
    assert callback.action_type == "goservice.item.reserved"
    assert callback.correlation_id == "k1"
    assert callback.data == {"reserved": True}
