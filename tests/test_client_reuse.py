"""Sends leave the caller's DomainAction unchanged and check it before writing anything."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from redis.asyncio import Redis

from actionbus import (
    BaseRedisClient,
    ClientNotInitializedError,
    DomainAction,
    InvalidActionError,
    RedisManager,
)

pytestmark = pytest.mark.backends

STREAM = "actionbus:dev:{{{}}}:streams:main"


def _echo_worker(bus: Any) -> Any:
    worker = bus.worker("calc")

    @worker.handler("calc.number.double")
    async def double(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        return {"n": data["n"] * 2}

    return worker


async def test_resend_after_pseudo_sync_is_handled(bus: Any, eventually: Any) -> None:
    """An action sent pseudo-sync and later sent again (fire and forget) is handled again."""
    worker = bus.worker("calc")
    handled: list[str] = []

    @worker.handler("calc.number.double")
    async def double(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        handled.append("double")
        return {"n": data["n"] * 2}

    @worker.handler("calc.number.mark")
    async def mark(action: DomainAction, data: dict[str, Any]) -> None:
        handled.append("mark")

    await worker.start()
    client = bus.client("orders")
    action = DomainAction(action_type="calc.number.double", data={"n": 4})
    before = action.model_dump()
    first = await client.send_action_pseudo_sync(action, timeout=1.5)
    assert first is not None
    assert first.data == {"n": 8}
    assert action.model_dump() == before
    await asyncio.sleep(1.6)  # past the first call's deadline
    await client.send_action_async(action)
    await client.send_action_async(DomainAction(action_type="calc.number.mark"))
    await eventually(lambda: "mark" in handled)
    assert handled == ["double", "double", "mark"]


async def test_callback_then_pseudo_sync_with_one_object(bus: Any, eventually: Any) -> None:
    """One object sent with a callback and then pseudo-sync gets the callback and the reply."""
    worker = _echo_worker(bus)
    orders = bus.worker("orders")
    callbacks: list[DomainAction] = []

    @orders.handler("orders.number.doubled")
    async def on_doubled(action: DomainAction, data: dict[str, Any]) -> None:
        callbacks.append(action)

    await worker.start()
    await orders.start()
    client = bus.client("orders")
    action = DomainAction(action_type="calc.number.double", data={"n": 3})
    before = action.model_dump()
    await client.send_action_async_with_callback(action, "orders.number.doubled", "ctx-1")
    assert action.model_dump() == before
    reply = await client.send_action_pseudo_sync(action, timeout=5)
    assert reply is not None
    assert reply.success
    assert reply.data == {"n": 6}
    await eventually(lambda: callbacks)
    assert callbacks[0].data == {"n": 6}
    assert action.model_dump() == before
    assert await bus.redis.xlen("actionbus:dev:{calc}:streams:dead") == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("origin_service", "bad:name", "origin_service"),
        ("callback_queue_name", "elsewhere:victim:responses:x", "namespace"),
        ("callback_action_type", "no-dots", "callback_action_type"),
    ],
)
async def test_fields_changed_after_construction_are_checked(
    bus: Any, field: str, value: str, message: str
) -> None:
    """A field reassigned to a bad value is refused at send (library error); nothing is sent."""
    client = bus.client("orders")
    action = DomainAction(action_type="calc.number.double")
    setattr(action, field, value)
    with pytest.raises(InvalidActionError, match=message):
        await client.send_action_async(action)
    assert await bus.redis.exists(STREAM.format("calc")) == 0


async def test_unserializable_data_names_the_action(bus: Any) -> None:
    """Data that is not JSON raises InvalidActionError naming the action; nothing is sent."""
    client = bus.client("orders")
    action = DomainAction(action_type="calc.number.double", data={"when": object()})
    with pytest.raises(InvalidActionError, match=str(action.action_id)):
        await client.send_action_async(action)
    assert await bus.redis.exists(STREAM.format("calc")) == 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_nan_and_infinity_are_refused(bus: Any, value: float) -> None:
    """NaN or infinity anywhere in data is refused at send instead of arriving as null."""
    client = bus.client("orders")
    action = DomainAction(action_type="calc.number.double", data={"xs": [1.0, {"v": value}]})
    with pytest.raises(InvalidActionError, match="NaN or infinity"):
        await client.send_action_async(action)
    assert await bus.redis.exists(STREAM.format("calc")) == 0


async def test_null_data_is_still_sent(bus: Any) -> None:
    """A None value (JSON null) is not mistaken for NaN."""
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="calc.number.double",
                                                data={"v": None, "f": 1.5}))
    [(_, fields)] = await bus.redis.xrange(STREAM.format("calc"))
    assert json.loads(fields[b"data"])["data"] == {"v": None, "f": 1.5}


async def test_boolean_timeout_is_refused(bus: Any) -> None:
    """timeout=True is a ValueError, not one second."""
    client = bus.client("orders")
    with pytest.raises(ValueError, match="timeout"):
        await client.send_action_pseudo_sync(
            DomainAction(action_type="calc.number.double"), timeout=True)


@pytest.mark.standalone_only("counts the connections of a server of its own")
async def test_closed_manager_client_refuses_to_send(
    make_settings: Any, fresh_redis_server: Any
) -> None:
    """After RedisManager.close() its client refuses sends (library error), not reconnecting."""
    url = fresh_redis_server.url  # its own server: other tests' connections do not count
    manager = RedisManager(make_settings(redis_url=url))
    redis = await manager.initialize()
    client = BaseRedisClient("orders", redis, make_settings(service_name="orders", redis_url=url))
    await manager.close()
    action = DomainAction(action_type="calc.number.double")
    with pytest.raises(ClientNotInitializedError, match="closed"):
        await client.send_action_async(action)
    with pytest.raises(ClientNotInitializedError):
        await client.send_actions_async([action])
    async with Redis.from_url(url) as observer:
        assert len(await observer.client_list()) == 1  # only the observer: nothing reconnected
