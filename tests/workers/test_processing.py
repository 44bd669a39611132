"""Processing (workers/processing.py, results.py): decoding, replies, callbacks, raw producers."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from typing import Any

import pytest

from actionbus import BaseRedisClient, BaseWorker, DomainAction, WorkerSettings
from actionbus.models.actions import (
    DomainActionResponse,
    ErrorDetail,
    format_timestamp,
    utc_now,
)
from actionbus.workers.results import is_expired
from tests.workers.helpers import QM, Reserve, Settings, dead_letters_of, drained, noop, xadd_raw

pytestmark = pytest.mark.backends


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
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert calls == []
    assert letter.reason == "rejected"
    assert letter.error_type == "ActionRejected"
    assert "Reserve" in letter.error_message
    assert letter.deliveries == 1
    await eventually(lambda: drained(bus.redis, "inventory"))


async def test_data_model_mismatch_replies_error_to_waiting_caller(bus: Any) -> None:
    """A pseudo-sync caller whose data does not match data_model gets an error response."""
    worker = bus.worker("inventory")
    worker.register("inventory.item.reserve", noop, data_model=Reserve)
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


async def test_handler_returning_none_still_answers_and_calls_back(
    bus: Any, eventually: Any
) -> None:
    """A handler returning ``None`` gives a waiting caller a success with empty data, and
    a requested callback is sent with empty data."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        return None

    await worker.start()
    client = bus.client("orders")
    response = await client.send_action_pseudo_sync(
        DomainAction(action_type="inventory.item.reserve"), timeout=5)
    assert response is not None
    assert (response.success, response.data) == (True, {})
    await xadd_raw(bus.redis, "inventory", {
        "action_type": "inventory.item.reserve", "origin_service": "goservice",
        "callback_action_type": "goservice.item.reserved", "correlation_id": "k2",
    })
    stream = QM.get_service_action_stream("goservice")
    await eventually(lambda: bus.redis.xlen(stream))
    [(_, fields)] = await bus.redis.xrange(stream)
    callback = DomainAction.model_validate_json(fields[b"data"])
    assert (callback.correlation_id, callback.data) == ("k2", {})


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
    assert response.error is not None
    assert response.error.message.startswith(  # names what could not be serialized
        "the result of the svc.r.obj handler cannot be sent: PydanticSerializationError: ")
    await eventually(lambda: drained(bus.redis, "svc"))


@pytest.mark.parametrize(
    ("queue", "callback_type"),
    [
        ("victim:key", None),
        ("actionbus:dev:{orders}:streams:main", None),
        ("actionbus:prod:{orders}:responses:x", None),
        ("actionbus:dev:{orders}:responses:x", "orders.x.done"),
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
    await xadd_raw(bus.redis, "inventory", payload)
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert letter.reason == "malformed"
    assert letter.error_type == "InvalidReplyTarget"
    assert queue in letter.error_message  # says which name was refused
    assert calls == []
    assert not await bus.redis.exists(queue)
    await eventually(lambda: drained(bus.redis, "inventory"))


@pytest.mark.parametrize(
    ("fields", "error_type", "says"),
    [
        ({"data": "{not json"}, "InvalidJSON", r".*Invalid JSON.*"),
        ({"data": '{"action_type": "no dots here"}'}, "InvalidAction", r".*action_type.*"),
        ({"payload": "{}"}, "MissingField", r"the entry has no 'data' field"),
    ],
)
async def test_malformed_entries_dead_lettered_and_worker_survives(
    bus: Any, eventually: Any, fields: dict[str, str], error_type: str, says: str
) -> None:
    """Bad entries are dead-lettered with the reason and a message saying what is wrong
    (the validation error, or the missing field), and the next good action is handled."""
    worker = bus.worker("inventory")
    worker.register("inventory.item.ok", noop)
    await worker.start()
    await bus.redis.xadd(QM.get_service_action_stream("inventory"), fields)
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.ok"))
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert letter.reason == "malformed"
    assert letter.error_type == error_type
    assert re.fullmatch(says, letter.error_message, re.DOTALL)
    await eventually(lambda: worker.stats.handled == 1)
    await eventually(lambda: drained(bus.redis, "inventory"))


async def test_raw_producer_and_raw_reply(bus: Any, eventually: Any) -> None:
    """A foreign producer can XADD an action and read the worker's reply by BRPOP."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.stock.get")
    async def stock(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"qty": 5}

    await worker.start()
    queue = QM.get_response_queue("nodejs", "req-1")
    await xadd_raw(bus.redis, "inventory", {
        "action_type": "inventory.stock.get", "correlation_id": "req-1",
        "callback_queue_name": queue,
    })
    popped = await bus.redis.brpop([queue], timeout=5)
    assert popped is not None
    reply = json.loads(popped[1])
    assert reply["success"] is True
    assert reply["data"] == {"qty": 5}
    assert reply["correlation_id"] == "req-1"
    assert set(reply) == set(DomainActionResponse.model_fields)  # every field, null if empty
    assert reply["error"] is None


async def test_round_trip_with_decoded_responses(
    make_settings: Settings, eventually: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers and clients also work on clients created with redis_decode_responses=True:
    the read loop takes the entry ids as text (nothing logged as an error, no loop
    restarted and the entry recovered instead)."""
    caplog.set_level(logging.WARNING, "actionbus")
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
            await eventually(lambda: drained(redis, "inventory"))
    assert response is not None
    assert response.data == {"qty": 1}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_callback_carries_the_error_as_the_wire_format_writes_it(
    bus: Any, eventually: Any
) -> None:
    """A handler answering a callback request with an error response: the callback's
    metadata holds the error with every declared field, and without its unknown fields
    that are None (exclude_none on a wire model)."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> DomainActionResponse:
        error = ErrorDetail(error_type="OutOfStock", message="none left", hint=None, shelf=3)
        return DomainActionResponse.for_action(action, error=error)

    await worker.start()
    await xadd_raw(bus.redis, "inventory", {
        "action_type": "inventory.item.reserve", "origin_service": "orders",
        "callback_action_type": "orders.item.reserved",
    })
    stream = QM.get_service_action_stream("orders")
    await eventually(lambda: bus.redis.xlen(stream))
    [(_, fields)] = await bus.redis.xrange(stream)
    callback = DomainAction.model_validate_json(fields[b"data"])
    assert callback.metadata["success"] is False
    assert callback.metadata["error"] == {"error_type": "OutOfStock", "error_code": None,
                                          "message": "none left", "details": None,
                                          "shelf": 3}


async def test_a_reply_carries_the_error_as_the_wire_format_writes_it(bus: Any) -> None:
    """A handler answering a waiting caller with its own error response: the raw reply
    holds the error with every declared field, and without its unknown fields that are
    None (exclude_none on a wire model)."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> DomainActionResponse:
        error = ErrorDetail(error_type="OutOfStock", message="none left", hint=None, shelf=3)
        return DomainActionResponse.for_action(action, error=error)

    await worker.start()
    queue = QM.get_response_queue("nodejs", "err-1")
    await xadd_raw(bus.redis, "inventory", {
        "action_type": "inventory.item.reserve", "callback_queue_name": queue})
    popped = await bus.redis.brpop([queue], timeout=5)
    assert popped is not None
    reply = json.loads(popped[1])
    assert reply["success"] is False
    assert reply["error"] == {"error_type": "OutOfStock", "error_code": None,
                              "message": "none left", "details": None, "shelf": 3}


async def test_raw_callback_request_by_origin_service(bus: Any, eventually: Any) -> None:
    """A raw action with callback_action_type and origin_service gets its callback on its stream."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"reserved": True}

    await worker.start()
    await xadd_raw(bus.redis, "inventory", {
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


async def test_callback_action_names_what_it_answers_and_carries_the_context(
    bus: Any, eventually: Any
) -> None:
    """The callback of a handled action is an action of the caller's service that says what
    it answers (metadata response_to, response_to_action_id, success, callback_context),
    from and to whom, and carries the request's tenant/session/task/user ids and result."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"reserved": True}

    await worker.start()
    request = DomainAction(action_type="inventory.item.reserve", tenant_id="ten-1",
                           session_id="s-1", task_id="t-1", user_id="u-1")
    await bus.client("orders").send_action_async_with_callback(
        request, "orders.item.reserved", "cart-7")
    orders = QM.get_service_action_stream("orders")
    [(_, fields)] = await eventually(lambda: bus.redis.xrange(orders))
    callback = DomainAction.model_validate_json(fields[b"data"])
    assert (callback.action_type, callback.origin_service, callback.target_service) == (
        "orders.item.reserved", "inventory", "orders")
    assert (callback.tenant_id, callback.session_id, callback.task_id, callback.user_id) == (
        "ten-1", "s-1", "t-1", "u-1")
    assert callback.data == {"reserved": True}
    assert {k: callback.metadata[k] for k in (
        "response_to", "response_to_action_id", "success", "callback_context", "error")} == {
        "response_to": "inventory.item.reserve", "response_to_action_id": str(request.action_id),
        "success": True, "callback_context": "cart-7", "error": None}


async def test_a_result_no_reply_could_carry_fails_even_when_nobody_reads_it(
    bus: Any, eventually: Any
) -> None:
    """A handler of a fire-and-forget action returning a value of a type no reply could
    carry (here a str) fails the attempt (HandlerError, dead-lettered once attempts run
    out), as it would for a waiting caller; None, a dict or a model are fine."""
    worker = bus.worker("inventory", max_deliveries=1)
    calls: list[str] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> Any:
        calls.append(data["kind"])
        return {"str": "a string", "dict": {"ok": True}, "model": Reserve(sku="A", qty=1),
                "none": None}[data["kind"]]

    await worker.start()
    client = bus.client("orders")
    for kind in ("none", "dict", "model", "str"):
        await client.send_action_async(
            DomainAction(action_type="inventory.item.reserve", data={"kind": kind}))
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert letter.error_type == "HandlerError"
    assert "returned str" in letter.error_message
    await eventually(lambda: drained(bus.redis, "inventory"))
    assert sorted(calls) == ["dict", "model", "none", "str"]
    assert worker.stats.handled == 3


async def test_every_reply_dropped_because_its_caller_stopped_waiting_is_counted(
    bus: Any, eventually: Any
) -> None:
    """A request whose caller stops waiting while its handler runs gets no reply, and each
    such dropped reply adds one to expired_skipped."""
    worker = bus.worker("inventory", clock_skew_s=0)

    @worker.handler("inventory.stock.get")
    async def stock(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        await eventually(lambda: is_expired(action.expires_at, 0))  # until its caller gave up
        return {"qty": 1}

    await worker.start()
    queues = [QM.get_response_queue("orders", f"late-{n}") for n in range(2)]
    for queue in queues:
        await xadd_raw(bus.redis, "inventory", {
            "action_type": "inventory.stock.get", "callback_queue_name": queue,
            "expires_at": format_timestamp(utc_now() + timedelta(seconds=0.3)),
        })
    await eventually(lambda: worker.stats.handled == 2, timeout=10)
    await eventually(lambda: drained(bus.redis, "inventory"))
    assert worker.stats.expired_skipped == 2
    for queue in queues:
        assert not await bus.redis.exists(queue)


async def test_with_max_deliveries_1_a_reclaimed_entry_is_buried_not_run_again(
    bus: Any, eventually: Any
) -> None:
    """max_deliveries=1: an ordinary small action delivered once to a consumer that died is
    dead-lettered as max_deliveries when reclaimed (its second delivery), its handler not run."""
    worker = bus.worker("inventory", max_deliveries=1, claim_idle_ms=100,
                        reclaim_interval_s=0.05)
    calls: list[Any] = []

    @worker.handler("inventory.item.add")
    async def add(action: DomainAction, data: dict[str, Any]) -> None:
        calls.append(data)

    stream = QM.get_service_action_stream("inventory")
    await bus.redis.xgroup_create(stream, "inventory", id="0", mkstream=True)
    entry = await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.add"})
    await bus.redis.xreadgroup("inventory", "crashed", {stream: ">"}, count=1)
    await worker.start()
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert (letter.original_id, letter.reason, letter.deliveries) == (
        entry, "max_deliveries", 2)
    await eventually(lambda: drained(bus.redis, "inventory"))
    assert calls == []
