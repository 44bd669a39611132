"""Publish layers: ordered onion around each send, on the client's copy of the action."""

from __future__ import annotations

import json
from typing import Any

import pytest

from actionbus import ConfigurationError, DomainAction, PublishNext, QueueManager

pytestmark = pytest.mark.backends

STREAM = "actionbus:dev:{{{}}}:streams:main"


def _recording(name: str, log: list[str]) -> Any:
    async def layer(action: DomainAction, call_next: PublishNext) -> str:
        log.append(f"{name}>")
        action.metadata[name] = "seen"
        entry_id = await call_next(action)
        log.append(f"<{name}")
        return entry_id

    return layer


async def _sent(redis: Any, service: str) -> list[dict[str, Any]]:
    return [json.loads(f[b"data"]) for _, f in await redis.xrange(STREAM.format(service))]


async def test_layers_run_in_registration_order_first_outermost(bus: Any) -> None:
    """use(a); use(b) runs a, then b, then the write, and unwinds b before a."""
    client = bus.client("orders")
    log: list[str] = []
    client.use(_recording("a", log))
    client.use(_recording("b", log))
    action = DomainAction(action_type="inventory.item.add")
    entry_id = await client.send_action_async(action)
    assert log == ["a>", "b>", "<b", "<a"]
    [sent] = await _sent(bus.redis, "inventory")
    assert sent["metadata"] == {"a": "seen", "b": "seen"}  # changes reach the wire
    assert action.metadata == {}  # on the client's copy, not the caller's object
    assert entry_id


async def test_a_layer_that_raises_stops_the_send(bus: Any) -> None:
    """A layer raising instead of calling call_next: the error reaches the caller, nothing sent."""
    client = bus.client("orders")

    async def refuse(action: DomainAction, call_next: PublishNext) -> str:
        raise PermissionError(f"{action.action_type} is not allowed")

    client.use(refuse)
    with pytest.raises(PermissionError, match=r"inventory\.item\.add"):
        await client.send_action_async(DomainAction(action_type="inventory.item.add"))
    with pytest.raises(PermissionError):
        await client.send_actions_async([DomainAction(action_type="inventory.item.add")])
    assert await bus.redis.exists(STREAM.format("inventory")) == 0


async def test_batch_passes_every_action_through_the_layers(bus: Any) -> None:
    """send_actions_async runs each action through the layers and returns ids in order."""
    client = bus.client("orders")
    log: list[str] = []
    client.use(_recording("a", log))
    ids = await client.send_actions_async(
        [DomainAction(action_type="inventory.item.add", data={"i": i}) for i in range(5)])
    assert len(ids) == 5
    assert log.count("a>") == 5
    assert log.count("<a") == 5
    sent = await _sent(bus.redis, "inventory")
    assert [s["data"]["i"] for s in sent] == list(range(5))
    assert all(s["metadata"] == {"a": "seen"} for s in sent)


async def test_one_bad_action_in_a_batch_sends_nothing(bus: Any) -> None:
    """If a layer rejects one action of a batch, no action of the batch is written."""
    client = bus.client("orders")

    async def reject_odd(action: DomainAction, call_next: PublishNext) -> str:
        if action.data["i"] % 2:
            raise ValueError("odd")
        return await call_next(action)

    client.use(reject_odd)
    with pytest.raises(ValueError, match="odd"):
        await client.send_actions_async(
            [DomainAction(action_type="inventory.item.add", data={"i": i}) for i in range(4)])
    assert await bus.redis.exists(STREAM.format("inventory")) == 0


async def test_pseudo_sync_and_callback_sends_pass_the_layers(bus: Any) -> None:
    """Pseudo-sync and callback sends go through the layers too."""
    client = bus.client("orders")
    log: list[str] = []
    client.use(_recording("a", log))
    assert await client.send_action_pseudo_sync(
        DomainAction(action_type="inventory.item.get"), timeout=0.2) is None
    await client.send_action_async_with_callback(
        DomainAction(action_type="inventory.item.get"), "orders.item.got")
    assert log == ["a>", "<a", "a>", "<a"]


def test_use_rejects_non_callables(bus: Any) -> None:
    """use() with something that is not callable is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="callable"):
        bus.client("orders").use("not a layer")


async def test_a_send_with_wait_replicas_passes_the_layers(bus: Any) -> None:
    """send_action_async(wait_replicas=0, …) (the durable path, given explicitly) runs the
    layers too: their change of the action reaches the wire."""
    client = bus.client("orders")
    log: list[str] = []
    client.use(_recording("a", log))
    await client.send_action_async(DomainAction(action_type="inventory.item.add"),
                                   wait_replicas=0, wait_timeout_ms=100)
    assert log == ["a>", "<a"]
    [sent] = await _sent(bus.redis, "inventory")
    assert sent["metadata"] == {"a": "seen"}


async def test_a_delayed_send_passes_the_layers(bus: Any) -> None:
    """send_action_async(delay=…) runs the layers too: their change of the action is in
    what waits in the target's delayed set."""
    client = bus.client("orders")
    log: list[str] = []
    client.use(_recording("a", log))
    await client.send_action_async(DomainAction(action_type="inventory.item.add"), delay=3600)
    assert log == ["a>", "<a"]
    [member] = await bus.redis.zrange(QueueManager().get_delayed_set("inventory"), 0, -1)
    assert json.loads(member)["metadata"] == {"a": "seen"}
