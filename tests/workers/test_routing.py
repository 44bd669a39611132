"""Routing (workers/routing.py): registration, dispatch, result types, the subclass hook."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from actionbus import BaseWorker, DomainAction, DomainActionResponse, HandlerError
from actionbus.workers.routing import HandlerRegistry, result_data
from tests.workers.helpers import Reserve, Settings, dead_letters_of, drained, noop, xadd_raw

pytestmark = pytest.mark.backends


def test_register_rejects_bad_declarations(conn: Any, make_settings: Settings) -> None:
    """A sync handler, a duplicate, a malformed action type or a non-model data_model fail."""
    worker = BaseWorker(make_settings(service_name="inventory"), conn)
    worker.register("inventory.item.reserve", noop)
    with pytest.raises(HandlerError, match="already registered"):
        worker.register("inventory.item.reserve", noop)
    with pytest.raises(HandlerError, match="async def"):
        worker.register("inventory.item.sync", lambda action, data: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(HandlerError, match="action_type"):
        worker.register("not valid", noop)
    with pytest.raises(HandlerError, match="Pydantic model"):
        worker.register("inventory.item.x", noop, data_model=dict)  # type: ignore[arg-type]
    with pytest.raises(HandlerError, match="already registered"):
        worker.handler("inventory.item.reserve")(noop)
    assert worker.registry.action_types == ["inventory.item.reserve"]


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
    await eventually(lambda: drained(bus.redis, "inventory"))


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


class _Stamped(BaseModel):
    at: datetime
    ref: uuid.UUID


def test_a_returned_model_becomes_json_ready_data() -> None:
    """A handler's Pydantic model becomes its JSON form: datetimes and UUIDs as strings,
    as any reader of the reply gets them."""
    ref = uuid.UUID(int=7)
    data = result_data(_Stamped(at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), ref=ref))
    assert data == {"at": "2026-01-02T03:04:05Z", "ref": str(ref)}


def test_a_result_of_another_type_is_an_error_naming_it() -> None:
    """A handler returning neither None, a dict nor a model fails with a HandlerError that
    names the type returned and the types allowed."""
    with pytest.raises(HandlerError, match=r"^a handler returned int; return a dict, a "
                       r"Pydantic model, a DomainActionResponse or None$"):
        result_data(42)


async def test_subclass_handle_action_hook(bus: Any, eventually: Any) -> None:
    """A subclass overriding handle_action receives actions with no registered handler."""
    seen: list[str] = []

    class InventoryWorker(BaseWorker):
        async def handle_action(self, action: DomainAction) -> dict[str, Any]:
            seen.append(action.action_type)
            return {"handled_by": "hook"}

    worker = bus.worker("inventory", cls=InventoryWorker)
    worker.register("inventory.item.registered", noop)
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
    """Without a handler or hook an action is dead-lettered at once as unknown_action_type."""
    worker = bus.worker("inventory", max_deliveries=5)
    worker.register("inventory.item.known", noop)
    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.other"))
    [letter] = await eventually(lambda: dead_letters_of(worker))
    assert (letter.reason, letter.deliveries) == ("unknown_action_type", 1)
    assert letter.error_type == "UnknownActionType"
    assert worker.stats.failed_attempts == 1
    assert "inventory.item.other" in letter.error_message
    assert "inventory.item.known" in letter.error_message


async def test_unknown_fields_reach_the_handler(bus: Any, eventually: Any) -> None:
    """Fields unknown to this version arrive in action.model_extra."""
    worker = bus.worker("inventory")
    extras: list[dict[str, Any]] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        extras.append(dict(action.model_extra or {}))

    await worker.start()
    await xadd_raw(bus.redis, "inventory", {"action_type": "inventory.item.reserve", "x_new": [1]})
    await eventually(lambda: extras)
    assert extras == [{"x_new": [1]}]


def test_a_registry_route_is_not_idempotent_unless_asked() -> None:
    """``HandlerRegistry.add`` without ``idempotent=`` adds a route that is not idempotent
    and has no timeout of its own; ``idempotent=True`` is kept."""
    registry = HandlerRegistry()
    registry.add("inventory.item.plain", noop)
    registry.add("inventory.item.once", noop, idempotent=True)
    plain, once = registry.get("inventory.item.plain"), registry.get("inventory.item.once")
    assert plain is not None
    assert once is not None
    assert (plain.idempotent, plain.timeout) == (False, None)
    assert once.idempotent is True
