"""The send path's checks and encoding of the client's copy of an action.

``ActionEncoder.check`` re-checks the fields a caller may have reassigned after the
action was built (names that become key parts or reply addresses); ``payload`` writes the
wire JSON (``docs/wire-format.md``: every declared field, ``null`` where empty) as bytes,
once, straight from pydantic-core. Names already found valid are remembered, so a service
that sends the same action types again pays a set lookup, not regular expressions.

NaN and infinity have no JSON form: the wire serializer writes them as the ``NaN`` /
``Infinity`` constants, so one substring search finds the rare action that might hold
one (only then are its values walked), and such an action is refused, never sent.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic_core import CoreConfig, PydanticSerializationError, SchemaSerializer

from actionbus.clients.queue_manager import QueueManager
from actionbus.config import CommonAppSettings
from actionbus.exceptions import InvalidActionError, InvalidNameError, PayloadTooLargeError
from actionbus.models.actions import DomainAction, check_action_type, check_service_name

__all__ = ["ActionEncoder", "wire_json"]

_MAX_KNOWN = 4096
"""Valid names remembered per client (the set is emptied when full)."""

_SERIALIZERS: dict[type[DomainAction], SchemaSerializer | None] = {}


def _serializer(cls: type[DomainAction]) -> SchemaSerializer | None:
    """``cls``'s serializer with NaN/infinity written as JSON constants (None: the
    model's schema is not a plain model schema; the caller then checks the slow way)."""
    if cls not in _SERIALIZERS:
        schema = cls.__pydantic_core_schema__
        config: CoreConfig | None = schema.get("config") if schema["type"] == "model" else None
        if config is not None:
            config = CoreConfig(**config)
            config["ser_json_inf_nan"] = "constants"
        _SERIALIZERS[cls] = None if config is None else SchemaSerializer(schema, config)
    return _SERIALIZERS[cls]


def _non_finite(value: Any) -> bool:
    """Whether ``value`` holds a NaN or infinite float anywhere inside."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_non_finite(v) for v in value)
    return False


def _what(action: DomainAction) -> str:
    return f"action {action.action_id} ({action.action_type})"


def wire_json(action: DomainAction) -> bytes:
    """The action's wire JSON (what ``model_dump_json(exclude_none=True)`` writes), as
    bytes. Raises ``InvalidActionError`` when it holds NaN/infinity or no JSON value."""
    cls = type(action)
    serializer = _SERIALIZERS[cls] if cls in _SERIALIZERS else _serializer(cls)
    try:
        if serializer is None:
            payload = action.model_dump_json(exclude_none=True).encode()
            suspect = b"null" in payload
        else:
            if action.__pydantic_extra__:  # None extras are dropped (the every-field rule)
                payload = serializer.to_json(action, exclude=action._none_extras())
            else:
                payload = serializer.to_json(action)
            # Most payloads have no capital N or I at all (one memchr each); the others
            # are searched for the constants.
            suspect = (b"N" in payload or b"I" in payload) and (
                b"NaN" in payload or b"Infinity" in payload)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise InvalidActionError(
            f"{_what(action)} was not sent: its content cannot be serialized to JSON ({exc}). "
            "Put only JSON values (str, int, float, bool, None, lists, dicts) in data."
        ) from None
    # A NaN may hide behind the constant (or a null, see ``_serializer``): walk the values.
    if suspect and _non_finite(action.model_dump(exclude_none=True)):
        raise InvalidActionError(
            f"{_what(action)} was not sent: it contains NaN or infinity, which JSON cannot "
            "carry (it would arrive as null). Send a finite number or None."
        )
    return payload


class ActionEncoder:
    """Checks and encodes a client's copies of actions (see the module)."""

    def __init__(self, queues: QueueManager, settings: CommonAppSettings) -> None:
        self.queues = queues
        self.settings = settings
        self._known: set[tuple[str, str]] = set()
        self._checked: set[tuple[Any, ...]] = set()

    def _name(self, what: str, value: Any) -> None:
        """Check one name field (``what``: ``action_type``, a service field, or a callback
        field); raises ``ValueError``/``TypeError``/``InvalidNameError`` saying why."""
        if type(value) is str and (what, value) in self._known:
            return
        if what == "action_type" or what == "callback_action_type":
            check_action_type(value, what)
        elif what == "callback_stream":
            self.queues.check_action_stream(value)
        elif what == "response_queue":
            self.queues.check_response_queue(value)
        else:
            check_service_name(value, what)
        if len(self._known) >= _MAX_KNOWN:
            self._known.clear()
        self._known.add((what, value))

    def check(self, action: DomainAction) -> None:
        """Re-check the fields that may have been reassigned after construction (the
        combination of names last found valid is remembered: one lookup)."""
        key = (action.action_type, action.target_service, action.origin_service,
               action.callback_action_type, action.callback_queue_name)
        try:
            if key in self._checked:
                return
        except TypeError:  # a reassigned field is not hashable: the checks say why
            pass
        self._check(action)
        if len(self._checked) >= _MAX_KNOWN:
            self._checked.clear()
        self._checked.add(key)

    def _check(self, action: DomainAction) -> None:
        try:
            self._name("action_type", action.action_type)
        except ValueError as exc:
            raise InvalidNameError(f"nothing was sent: {exc}") from None
        try:
            if action.origin_service is not None:
                self._name("origin_service", action.origin_service)
            if action.target_service is not None:
                self._name("target_service", action.target_service)
            if action.callback_action_type is not None:
                self._name("callback_action_type", action.callback_action_type)
            if action.callback_queue_name is not None:
                self._name("callback_stream" if action.callback_action_type is not None
                           else "response_queue", action.callback_queue_name)
        except (ValueError, TypeError) as exc:
            raise InvalidActionError(f"{_what(action)} was not sent: {exc}") from None

    def payload(self, action: DomainAction) -> bytes:
        """The wire JSON of ``action`` (checked first with ``check``); raises the library's
        error when it cannot be sent (no JSON value, NaN/infinity, too large)."""
        payload = wire_json(action)
        if len(payload) > self.settings.max_payload_bytes:
            raise PayloadTooLargeError(
                f"{_what(action)} is {len(payload)} bytes, above "
                f"max_payload_bytes={self.settings.max_payload_bytes}; nothing was sent. "
                "Store large data elsewhere and send a reference, or raise the limit."
            )
        return payload
