"""JSON Schemas of the wire messages and an AsyncAPI 3 document of a service.

The schemas describe what conforming writers emit (``docs/wire-format.md``): every
documented field present (``null`` where empty), timestamps as
``YYYY-MM-DDTHH:MM:SS.ffffffZ``, lowercase UUIDs. Readers accept more (see the spec).
``actionbus schema`` writes them to ``schemas/``; a test fails when the committed files
drift from the models.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from actionbus.models.actions import (
    ACTION_TYPE_PATTERN,
    SERVICE_NAME_PATTERN,
    DomainAction,
    DomainActionResponse,
    ErrorDetail,
)

if TYPE_CHECKING:
    from actionbus.workers.base_worker import BaseWorker

__all__ = [
    "CallbackMetadata",
    "DeadLetterEntry",
    "asyncapi_document",
    "json_schemas",
    "write_schemas",
]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_PATTERNS = {
    "action_id": UUID_PATTERN,
    "timestamp": TIMESTAMP_PATTERN,
    "expires_at": TIMESTAMP_PATTERN,
    "failed_at": TIMESTAMP_PATTERN,
    "action_type": f"^{ACTION_TYPE_PATTERN}$",
    "callback_action_type": f"^{ACTION_TYPE_PATTERN}$",
    "action_type_response_to": f"^{ACTION_TYPE_PATTERN}$",
    "origin_service": f"^{SERVICE_NAME_PATTERN}$",
    "target_service": f"^{SERVICE_NAME_PATTERN}$",
}


class CallbackMetadata(BaseModel):
    """``metadata`` of a callback action, written by the worker that handled the request."""

    model_config = ConfigDict(extra="allow")

    response_to: str = Field(description="The request's action_type.")
    response_to_action_id: str = Field(description="The request's action_id (lowercase).")
    success: bool
    callback_context: str | None = Field(
        None, description="The request's metadata.callback_context, copied when present."
    )
    error: ErrorDetail | None = Field(
        None, description="Set when success is false: the same error object as a reply's."
    )


class DeadLetterEntry(BaseModel):
    """The fields of a dead-letter stream entry (every value is a Redis string)."""

    model_config = ConfigDict(extra="allow")

    data: str = Field(description="The original entry's data field, byte for byte ('' if none).")
    reason: str = Field(description="Why it died; values listed in docs/wire-format.md.")
    error_type: str
    error_message: str = Field(description="At most 2000 characters.")
    deliveries: str = Field(pattern=r"^\d+$", description="Deliveries, as decimal text.")
    original_id: str = Field(pattern=r"^\d+-\d+$", description="The entry id it had.")
    stream: str = Field(description="The stream it was read from.")
    consumer: str = Field(description="The consumer that buried it.")
    failed_at: str = Field(description="When, RFC 3339 UTC with microseconds and Z.")


def _strict(schema: dict[str, Any], required: Iterable[str] | None = None) -> dict[str, Any]:
    """Mark every property of an object schema required and add the wire patterns."""
    props: dict[str, Any] = schema.get("properties", {})
    schema["required"] = list(props) if required is None else list(required)
    for name, prop in props.items():
        pattern = _PATTERNS.get(name)
        if pattern is None:
            continue
        for option in prop.get("anyOf", [prop]):
            if option.get("type") == "string":
                option.pop("pattern", None)  # the model's own constraint: written last
                option["pattern"] = pattern
                option.pop("format", None)
    return schema


def _document(model: type[BaseModel], file: str, title: str) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    for sub in schema.get("$defs", {}).values():
        _strict(sub)
    _strict(schema)
    return {"$schema": DRAFT, "$id": file, **schema, "title": title}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every wire schema by file name: action, reply, error, callback, dead letter."""
    action = _document(DomainAction, "domain-action.schema.json", "DomainAction")
    callback = copy.deepcopy(action)
    callback["$id"], callback["title"] = "callback.schema.json", "Callback"
    callback["description"] = (
        "A callback: a DomainAction sent by the worker that handled a request with "
        "callback_action_type, to the request's callback_queue_name (else the origin "
        "service's stream)."
    )
    meta = _document(CallbackMetadata, "", "CallbackMetadata")
    callback["$defs"] = {**meta.pop("$defs", {}), "CallbackMetadata": meta}
    for key in ("$schema", "$id"):
        meta.pop(key)
    _strict(meta, ["response_to", "response_to_action_id", "success"])
    callback["properties"]["metadata"] = {"$ref": "#/$defs/CallbackMetadata"}
    for field in ("origin_service", "target_service", "correlation_id"):
        callback["properties"][field] = callback["properties"][field]["anyOf"][0]
    return {
        "domain-action.schema.json": action,
        "domain-action-response.schema.json": _document(
            DomainActionResponse, "domain-action-response.schema.json", "DomainActionResponse"),
        "error-detail.schema.json": _document(
            ErrorDetail, "error-detail.schema.json", "ErrorDetail"),
        "callback.schema.json": callback,
        "dead-letter.schema.json": _document(
            DeadLetterEntry, "dead-letter.schema.json", "DeadLetterEntry"),
    }


def render(schema: dict[str, Any]) -> str:
    """The committed text of a schema: sorted-free, indented JSON with a final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema into ``directory`` (created if missing); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def worker_routes(worker: BaseWorker) -> list[tuple[str, type[BaseModel] | None]]:
    """``(action_type, data_model)`` of every handler a worker registered.

    The one place that reads the worker's registry (its public attributes only).
    """
    registry = worker.registry
    routes = []
    for action_type in registry.action_types:
        route = registry.get(action_type)
        routes.append((action_type, route.data_model if route is not None else None))
    return routes


def address_parameters(address: str) -> dict[str, Any]:
    """AsyncAPI parameters for ``{…}`` in a key: Redis hash tags, literal braces."""
    params: dict[str, Any] = {}
    start = address.find("{")
    while start != -1:
        end = address.index("}", start)
        name = address[start + 1:end]
        params[name] = {
            "enum": [name],
            "description": "Literal: a Redis Cluster hash tag; the braces are part of the key.",
        }
        start = address.find("{", end)
    return {"parameters": params} if params else {}


def _package_version() -> str:
    try:
        return version("actionbus")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def asyncapi_document(worker: BaseWorker) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the service a worker runs: its actions, replies, callbacks."""
    service = worker.service_name
    qm = worker.queue_manager
    routes = worker_routes(worker)
    models = {m for _, m in routes if m is not None}
    base: list[type[BaseModel]] = [DomainAction, DomainActionResponse, CallbackMetadata]
    pairs = [(m, "validation") for m in [*base, *sorted(models, key=lambda m: m.__qualname__)]]
    refs, defs = models_json_schema(pairs, ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
    schemas: dict[str, Any] = defs.get("$defs", {})
    for name in ("DomainAction", "DomainActionResponse", "ErrorDetail"):
        _strict(schemas[name])
    _strict(schemas["CallbackMetadata"], ["response_to", "response_to_action_id", "success"])
    ref = {model: refs[(model, "validation")]["$ref"] for model, _ in pairs}

    def name_of(action_type: str) -> str:
        return action_type.replace(".", "_").replace("-", "_")

    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for action_type, data_model in routes:
        key = name_of(action_type)
        data = ref_obj(ref[data_model]) if data_model is not None else {"type": "object"}
        messages[key] = {
            "name": action_type,
            "title": action_type,
            "contentType": "application/json",
            "summary": f"A DomainAction of type {action_type} (stream field 'data').",
            "payload": {"allOf": [
                ref_obj(ref[DomainAction]),
                {"type": "object", "properties": {
                    "action_type": {"const": action_type}, "data": data}},
            ]},
        }
        operations[f"receive_{key}"] = {
            "action": "receive",
            "channel": {"$ref": "#/channels/actions"},
            "messages": [{"$ref": f"#/channels/actions/messages/{key}"}],
            "summary": f"Handle {action_type}; answer on callback_queue_name if one is given.",
            "reply": {
                "address": {"location": "$message.payload#/callback_queue_name"},
                "channel": {"$ref": "#/channels/replies"},
                "messages": [{"$ref": "#/channels/replies/messages/reply"}],
            },
        }
    stream = qm.get_service_action_stream(service)
    dead = qm.get_dead_letter_stream(service)
    operations["send_callback"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/callbacks"},
        "messages": [{"$ref": "#/channels/callbacks/messages/callback"}],
        "summary": "Callbacks for requests that carried callback_action_type.",
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": f"{service} (actionbus service)",
            "version": _package_version(),
            "description": (
                f"Actions the {service} service handles, its replies and callbacks. "
                "Wire rules: docs/wire-format.md of actionbus."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            "actions": {
                "address": stream,
                **address_parameters(stream),
                "description": "XADD an entry with one field, 'data' = the action's JSON.",
                "messages": messages,
            },
            "replies": {
                "address": None,
                "description": (
                    "Pseudo-sync replies: LPUSH onto the request's callback_queue_name "
                    "(a ':responses:' list), with a TTL."
                ),
                "messages": {"reply": {
                    "name": "DomainActionResponse", "contentType": "application/json",
                    "payload": ref_obj(ref[DomainActionResponse])}},
            },
            "callbacks": {
                "address": None,
                "description": (
                    "Callbacks: XADD to the request's callback_queue_name (a ':streams:main' "
                    "stream), else to the origin service's stream."
                ),
                "messages": {"callback": {
                    "name": "Callback", "contentType": "application/json",
                    "payload": {"allOf": [ref_obj(ref[DomainAction]), {
                        "type": "object",
                        "properties": {"metadata": ref_obj(ref[CallbackMetadata])},
                    }]}}},
            },
            "dead_letters": {
                "address": dead,
                **address_parameters(dead),
                "description": "Entries the worker buried; see the dead-letter schema.",
            },
        },
        "operations": operations,
        "components": {"schemas": schemas},
    }


def ref_obj(ref: str) -> dict[str, str]:
    """A JSON ``$ref`` object."""
    return {"$ref": ref}
