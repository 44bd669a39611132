"""The send path's shortcuts keep its promises: exact wire bytes, checks on every send,
tracing switched on at any time, and one batch encoded before anything is written."""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import PrivateAttr

from actionbus import DomainAction, InvalidActionError, InvalidNameError, PublishNext
from actionbus.tracing import disable_tracing, enable_tracing

STREAM = "actionbus:dev:{{{}}}:streams:main"


async def _raw(redis: Any, service: str) -> list[bytes]:
    return [fields[b"data"] for _, fields in await redis.xrange(STREAM.format(service))]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory span exporter; tracing is enabled by the test and disabled afterwards."""
    spans = InMemorySpanExporter()
    try:
        yield spans
    finally:
        disable_tracing()


async def test_entry_bytes_are_the_models_wire_json(bus: Any) -> None:
    """The entry holds exactly model_dump_json(exclude_none=True) of the stamped action:
    every declared field (null where empty), None extras dropped, other extras kept."""
    client = bus.client("orders")
    action = DomainAction(action_type="inventory.item.add", data={"n": 1.5, "s": None},
                          note="kept", gone=None)
    await client.send_action_async(action)
    [sent] = await _raw(bus.redis, "inventory")
    stamped = action.model_copy(update={"origin_service": "orders"})
    assert sent == stamped.model_dump_json(exclude_none=True).encode()
    assert b'"gone"' not in sent
    assert b'"tenant_id":null' in sent


async def test_nan_and_infinity_as_text_are_sent(bus: Any) -> None:
    """Strings that read "NaN" or "Infinity" are data, not non-finite numbers: sent as is."""
    client = bus.client("orders")
    data = {"a": "NaN", "b": ["-Infinity"], "c": {"Infinity": 1}}
    await client.send_action_async(DomainAction(action_type="inventory.item.add", data=data))
    [sent] = await _raw(bus.redis, "inventory")
    assert DomainAction.model_validate_json(sent).data == data


async def test_nan_in_a_batch_sends_nothing(bus: Any) -> None:
    """One NaN in a batch (no publish layers) refuses the batch before anything is written."""
    client = bus.client("orders")
    batch = [DomainAction(action_type="inventory.item.add", data={"v": 1.0}),
             DomainAction(action_type="inventory.item.add", data={"v": math.nan})]
    with pytest.raises(InvalidActionError, match="NaN or infinity"):
        await client.send_actions_async(batch)
    assert await bus.redis.exists(STREAM.format("inventory")) == 0


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("origin_service", "bad:name", "origin_service 'bad:name' is not valid"),
        ("target_service", "bad name", "target_service 'bad name' is not valid"),
        ("callback_queue_name", "elsewhere:victim:responses:x",
         "key 'elsewhere:victim:responses:x' is not in the namespace"),
        ("callback_action_type", "no-dots", "callback_action_type 'no-dots' is not valid"),
    ],
)
async def test_names_are_checked_after_the_same_type_was_sent(
    bus: Any, field: str, value: str, why: str
) -> None:
    """A good send of an action type does not let a later action of that type with one
    field reassigned to a bad value through: it is refused, the error naming the field
    and value, and nothing more is written."""
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.add"))
    bad = DomainAction(action_type="inventory.item.add")
    setattr(bad, field, value)
    with pytest.raises(InvalidActionError) as refused:
        await client.send_action_async(bad)
    assert f"was not sent: {why}" in str(refused.value)
    assert len(await _raw(bus.redis, "inventory")) == 1


async def test_tracing_enabled_after_sends_traces_the_next_send(
    bus: Any, exporter: InMemorySpanExporter
) -> None:
    """A client that already sent without tracing traces its sends once tracing is enabled."""
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.add"))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    enable_tracing(provider)
    await client.send_actions_async([DomainAction(action_type="inventory.item.add")])
    await client.send_action_async(DomainAction(action_type="inventory.item.add"))
    first, *traced = [DomainAction.model_validate_json(raw)
                      for raw in await _raw(bus.redis, "inventory")]
    assert "traceparent" not in first.metadata
    assert all("traceparent" in action.metadata for action in traced)
    assert len(traced) == 2
    assert len(exporter.get_finished_spans()) == 2


class _Tagged(DomainAction):
    _seen: list[str] = PrivateAttr(default_factory=list)


async def test_subclass_with_private_attributes_is_copied_not_changed(bus: Any) -> None:
    """A DomainAction subclass with private attributes is sent; the client's copy has
    them too (a publish layer reads them); the caller's object keeps its origin (None)."""
    client = bus.client("orders")
    seen: list[list[str]] = []

    async def read_private(copy: DomainAction, call_next: PublishNext) -> str:
        assert isinstance(copy, _Tagged)
        seen.append(list(copy._seen))
        return await call_next(copy)

    client.use(read_private)
    action = _Tagged(action_type="inventory.item.add")
    action._seen.append("x")
    await client.send_action_async(action)
    assert seen == [["x"]]
    [sent] = await _raw(bus.redis, "inventory")
    assert DomainAction.model_validate_json(sent).origin_service == "orders"
    assert action.origin_service is None
    assert action._seen == ["x"]


async def test_the_copy_of_a_plain_action_a_layer_gets_is_a_whole_model(bus: Any) -> None:
    """The client's copy of a plain DomainAction (no private attributes) is a complete
    pydantic model: a publish layer can pickle it (e.g. to keep it in an outbox) and the
    unpickled action equals it and is sent as it."""
    client = bus.client("orders")
    kept: list[DomainAction] = []

    async def outbox(copy: DomainAction, call_next: PublishNext) -> str:
        kept.append(pickle.loads(pickle.dumps(copy)))
        return await call_next(copy)

    client.use(outbox)
    await client.send_action_async(DomainAction(action_type="inventory.item.add", data={"n": 1}))
    [sent] = await _raw(bus.redis, "inventory")
    [copy] = kept
    assert copy == DomainAction.model_validate_json(sent)
    assert copy.origin_service == "orders"


async def test_an_action_class_new_to_the_send_path_is_encoded_and_checked(bus: Any) -> None:
    """A DomainAction subclass the send path has not met before (defined here, so new in
    every run) is refused when it holds NaN, and otherwise sent as exactly its wire JSON."""

    class Fresh(DomainAction):
        note: str | None = None

    client = bus.client("orders")
    with pytest.raises(InvalidActionError, match="NaN or infinity"):
        await client.send_action_async(
            Fresh(action_type="inventory.item.add", data={"v": math.nan}))
    action = Fresh(action_type="inventory.item.add", data={"v": 1.5}, extra=None)
    await client.send_action_async(action)
    [sent] = await _raw(bus.redis, "inventory")
    stamped = action.model_copy(update={"origin_service": "orders"})
    assert sent == stamped.model_dump_json(exclude_none=True).encode()
    assert b'"note":null' in sent


async def test_a_self_referencing_action_class_refuses_nan(bus: Any) -> None:
    """An action class whose schema is not a plain model schema (it refers to itself) is
    checked the slow way: NaN, even in its nested action, is refused; a finite one is
    sent as its wire JSON."""

    class Tree(DomainAction):
        child: Tree | None = None

    Tree.model_rebuild()
    client = bus.client("orders")
    nested = Tree(action_type="inventory.item.add", data={"v": math.inf})
    with pytest.raises(InvalidActionError, match="NaN or infinity"):
        await client.send_action_async(
            Tree(action_type="inventory.item.add", data={"v": math.nan}))
    with pytest.raises(InvalidActionError, match="NaN or infinity"):
        await client.send_action_async(Tree(action_type="inventory.item.add", child=nested))
    action = Tree(action_type="inventory.item.add", data={"v": 2.5})
    await client.send_action_async(action)
    [sent] = await _raw(bus.redis, "inventory")
    stamped = action.model_copy(update={"origin_service": "orders"})
    assert sent == stamped.model_dump_json(exclude_none=True).encode()


@pytest.mark.parametrize(("field", "error"), [
    ("action_type", InvalidNameError),
    ("target_service", InvalidActionError),
    ("origin_service", InvalidActionError),
])
async def test_a_name_reassigned_to_an_unhashable_value_is_refused_naming_it(
    bus: Any, field: str, error: type[Exception]
) -> None:
    """A name field reassigned to a list (unhashable) is refused like any bad name: the
    library's error names the field and the value; nothing is written."""
    client = bus.client("orders")
    await client.send_action_async(DomainAction(action_type="inventory.item.add"))
    bad = DomainAction(action_type="inventory.item.add")
    setattr(bad, field, ["x"])
    with pytest.raises(error, match=rf"{field} \['x'\] is not valid"):
        await client.send_action_async(bad)
    assert len(await _raw(bus.redis, "inventory")) == 1


@pytest.mark.parametrize("how", ["batch", "delayed"])
async def test_a_reassigned_bad_name_is_refused_in_a_batch_and_a_delayed_send(
    bus: Any, how: str
) -> None:
    """Batches and delayed sends check names too: an action whose origin_service was
    reassigned to a bad value after construction is refused (InvalidActionError naming
    the field), and nothing is written or parked."""
    client = bus.client("orders")
    bad = DomainAction(action_type="inventory.item.add")
    bad.origin_service = "or:ders"
    send = (client.send_actions_async([DomainAction(action_type="inventory.item.add"), bad])
            if how == "batch" else client.send_action_async(bad, delay=60))
    with pytest.raises(InvalidActionError, match=r"origin_service 'or:ders' is not valid"):
        await send
    assert await bus.redis.keys("*") == []
