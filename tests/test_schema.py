"""The committed JSON Schemas match the models; the AsyncAPI document describes a worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from actionbus import BaseWorker, CommonAppSettings, DomainAction
from actionbus.cli import main
from actionbus.schema import asyncapi_document, json_schemas, render

SCHEMAS = Path(__file__).parent.parent / "schemas"


class Reserve(BaseModel):
    sku: str
    quantity: int


def _worker() -> BaseWorker:
    worker = BaseWorker(CommonAppSettings(_env_file=None, service_name="inventory"))  # type: ignore[call-arg]

    @worker.handler("inventory.stock.reserve", data_model=Reserve)
    async def reserve(action: DomainAction, data: Reserve) -> dict[str, object]:
        return {}

    @worker.handler("inventory.stock.count")
    async def count(action: DomainAction, data: dict[str, object]) -> None:
        return None

    return worker


worker = _worker()


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_committed_schema_matches_the_models(name: str) -> None:
    """Each file in schemas/ is what `actionbus schema` generates now (run it to update)."""
    committed = (SCHEMAS / name).read_text(encoding="utf-8")
    assert committed == render(json_schemas()[name]), f"run `actionbus schema` to update {name}"


def test_no_stale_schema_files() -> None:
    """schemas/ holds no file the generator no longer writes."""
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(json_schemas())


def test_schema_command_writes_every_schema(tmp_path: Path) -> None:
    """`actionbus schema --out DIR` writes every schema file."""
    result = CliRunner().invoke(main, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name, schema in json_schemas().items():
        assert json.loads((tmp_path / name).read_text()) == schema


def test_action_schema_requires_every_field_with_wire_formats() -> None:
    """The action schema requires every field and pins Z-microsecond times and lowercase ids."""
    schema = json_schemas()["domain-action.schema.json"]
    assert set(schema["required"]) == set(DomainAction.model_fields)
    assert schema["properties"]["timestamp"]["pattern"].endswith(r"\.\d{6}Z$")
    assert "a-f" in schema["properties"]["action_id"]["pattern"]
    assert "A-F" not in schema["properties"]["action_id"]["pattern"]


def test_callback_schema_pins_the_metadata() -> None:
    """A callback's metadata must carry response_to, response_to_action_id and success."""
    schema = json_schemas()["callback.schema.json"]
    meta = schema["$defs"]["CallbackMetadata"]
    assert meta["required"] == ["response_to", "response_to_action_id", "success"]
    assert meta["properties"]["error"]["anyOf"][0] == {"$ref": "#/$defs/ErrorDetail"}
    assert schema["properties"]["metadata"] == {"$ref": "#/$defs/CallbackMetadata"}


def test_asyncapi_lists_action_types_with_their_data_models() -> None:
    """Every registered action type is a message whose data is its handler's model."""
    doc = asyncapi_document(worker)
    assert doc["asyncapi"] == "3.0.0"
    messages = doc["channels"]["actions"]["messages"]
    assert sorted(m["name"] for m in messages.values()) == [
        "inventory.stock.count", "inventory.stock.reserve"]
    reserve = messages["inventory_stock_reserve"]["payload"]["allOf"][1]["properties"]
    assert reserve["data"] == {"$ref": "#/components/schemas/Reserve"}
    assert doc["components"]["schemas"]["Reserve"]["required"] == ["sku", "quantity"]


def test_asyncapi_addresses_come_from_the_queue_manager() -> None:
    """The actions channel's address is the service's stream as QueueManager names it."""
    doc = asyncapi_document(worker)
    assert doc["channels"]["actions"]["address"] == worker.stream
    assert doc["channels"]["dead_letters"]["address"] == \
        worker.queue_manager.get_dead_letter_stream("inventory")


def test_asyncapi_replies_go_to_callback_queue_name() -> None:
    """Each receive operation replies at the request's callback_queue_name."""
    doc = asyncapi_document(worker)
    operation = doc["operations"]["receive_inventory_stock_reserve"]
    assert operation["reply"]["address"]["location"] == "$message.payload#/callback_queue_name"
    assert doc["operations"]["send_callback"]["action"] == "send"


def test_asyncapi_command_prints_the_document() -> None:
    """`actionbus asyncapi MODULE:ATTRIBUTE` prints the worker's document as JSON."""
    result = CliRunner().invoke(main, ["asyncapi", "tests.test_schema:worker"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == asyncapi_document(worker)


def test_asyncapi_command_refuses_what_is_not_a_worker() -> None:
    """A target that is not a BaseWorker is a usage error naming it."""
    result = CliRunner().invoke(main, ["asyncapi", "tests.test_schema:Reserve"])
    assert result.exit_code != 0
    assert "is not a BaseWorker" in result.output
