"""The wire messages: ``DomainAction``, ``DomainActionResponse`` and ``ErrorDetail``.

Their JSON is the wire format (stream field ``data``; response lists hold the response
JSON), specified in ``docs/wire-format.md``. Unknown fields are kept, so newer senders can
talk to older workers. Readers are tolerant (``null`` = absent for optional fields, an
integer ``error_code``, any ISO 8601 or Unix-time timestamp); writers are strict (every field
emitted, ``null`` where empty, even with ``exclude_none=True``; timestamps as
``YYYY-MM-DDTHH:MM:SS.ffffffZ``).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetPydanticSchema,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

__all__ = [
    "ACTION_TYPE_PATTERN",
    "SERVICE_NAME_PATTERN",
    "DomainAction",
    "DomainActionResponse",
    "ErrorDetail",
    "format_timestamp",
    "utc_now",
]

SERVICE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
"""A service name: letters, digits, ``_`` and ``-``; it is one segment of a Redis key."""
ACTION_TYPE_PATTERN = rf"{SERVICE_NAME_PATTERN}(\.[A-Za-z0-9_-]{{1,64}}){{1,8}}"
"""``service.entity.verb``: two to nine dot-separated segments, the first a service name."""

_SERVICE_RE = re.compile(SERVICE_NAME_PATTERN)
_SERVICE_ANCHORED = f"^{SERVICE_NAME_PATTERN}$"
_ACTION_TYPE_ANCHORED = f"^{ACTION_TYPE_PATTERN}$"
_ACTION_TYPE_RE = re.compile(ACTION_TYPE_PATTERN)


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _as_text(value: Any) -> Any:
    """Accept UUIDs and integers where the wire carries identifiers as strings."""
    if isinstance(value, uuid.UUID | int) and not isinstance(value, bool):
        return str(value)
    return value


def format_timestamp(value: datetime) -> str:
    """The one timestamp form writers emit: RFC 3339 UTC, microseconds, ``Z``."""
    if value.tzinfo is not UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"  # "+00:00" -> "Z"


def _empty_if_null(value: Any) -> Any:
    """``null`` and absent mean the same for the object fields ``data`` and ``metadata``."""
    return {} if value is None else value


class _WireUUID(uuid.UUID):
    """A UUID read from a non-canonical string (e.g. uppercase); keeps that string."""

    original: str

    def __init__(self, value: str) -> None:
        super().__init__(value)
        object.__setattr__(self, "original", value)

    def __reduce__(self) -> tuple[Any, ...]:
        """Copies and pickles keep the original string."""
        return (_WireUUID, (self.original,))


def _read_uuid(value: Any) -> Any:
    """Keep a non-canonical UUID string so replies can echo it exactly."""
    if isinstance(value, str) and not (len(value) == 36 and value == value.lower()):
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            return value  # Pydantic reports it
        return parsed if str(parsed) == value else _WireUUID(value)
    return value


def _utc(value: datetime) -> datetime:
    """Naive timestamps are UTC; aware ones are converted to UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The checks below run inside pydantic-core (no Python call per field for the usual
# input): a string id passes as is, an integer becomes its text, only a ``UUID`` object
# goes through Python; names are pattern constraints, anchored like ``re.fullmatch``.
if TYPE_CHECKING:
    _WireId = str
else:
    _WireId = Annotated[
        Annotated[str, Field(coerce_numbers_to_str=True)]
        | Annotated[uuid.UUID, AfterValidator(str)],
        Field(union_mode="left_to_right"),  # a string stays exactly as written
        WithJsonSchema({"type": "string"}),
    ]
_UtcTime = Annotated[
    datetime, AfterValidator(_utc), PlainSerializer(format_timestamp, when_used="json")
]
"""A timestamp: read as UTC; written as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always six digits)."""
_CANONICAL_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _action_id_schema(source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    """A canonical (lowercase, hyphenated) UUID string is read inside pydantic-core; any
    other input goes through ``_read_uuid`` (which keeps a non-canonical string)."""
    return core_schema.union_schema(
        [core_schema.chain_schema([core_schema.str_schema(pattern=_CANONICAL_UUID),
                                   core_schema.uuid_schema()]),
         core_schema.no_info_before_validator_function(_read_uuid, core_schema.uuid_schema())],
        mode="left_to_right", custom_error_type="uuid_invalid",
        custom_error_message="Input should be a valid UUID",
    )


def _object_schema(source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    """A JSON object is read inside pydantic-core; ``null`` becomes ``{}``."""
    return core_schema.union_schema(
        [core_schema.dict_schema(),
         core_schema.no_info_before_validator_function(_empty_if_null,
                                                       core_schema.dict_schema())],
        mode="left_to_right", custom_error_type="object_invalid",
        custom_error_message="Input should be an object (or null)",
    )


if TYPE_CHECKING:
    _ActionId = uuid.UUID
    _Object = dict[str, Any]
else:
    _ActionId = Annotated[uuid.UUID, GetPydanticSchema(_action_id_schema),
                          WithJsonSchema({"type": "string", "format": "uuid"})]
    _Object = Annotated[dict[str, Any], GetPydanticSchema(_object_schema),
                        WithJsonSchema({"type": "object", "additionalProperties": True})]
_ServiceName = Annotated[str, Field(pattern=_SERVICE_ANCHORED)]
_ActionType = Annotated[str, Field(pattern=_ACTION_TYPE_ANCHORED)]
_OrderingKey = Annotated[str, Field(min_length=1, max_length=256)]
"""An ordering key: 1 to 256 characters of any kind (hashed, never part of a key name)."""


class _WireModel(BaseModel):
    """Base of the wire models: strict writers.

    Every declared field is written, ``null`` where empty: ``exclude_none=True`` only
    drops unknown (extra) fields that are ``None`` (and those of a nested wire model);
    explicit ``include``/``exclude`` are honoured as given. This is done by turning
    ``exclude_none`` into an ``exclude`` of those extras, so serializing stays inside
    pydantic-core (no Python serializer around every model).
    """

    def _none_extras(self) -> dict[str, Any] | None:
        """What ``exclude_none`` may drop: ``None`` extras, and those of nested models."""
        drop: dict[str, Any] = {}
        for name, value in (self.__pydantic_extra__ or {}).items():
            if value is None:
                drop[name] = True
        for name in self._nested:
            value = getattr(self, name)
            if isinstance(value, _WireModel) and (inner := value._none_extras()):
                drop[name] = inner
        return drop or None

    _nested: ClassVar[tuple[str, ...]] = ()
    """Fields holding a wire model (their extras follow the same rule)."""

    def model_dump_json(self, **kwargs: Any) -> str:
        """``BaseModel.model_dump_json`` with the every-field rule (see the class)."""
        if kwargs.get("exclude_none") and kwargs.get("include") is None \
                and kwargs.get("exclude") is None:
            kwargs["exclude_none"], kwargs["exclude"] = False, self._none_extras()
        return super().model_dump_json(**kwargs)

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        """``BaseModel.model_dump`` with the every-field rule (see the class)."""
        if kwargs.get("exclude_none") and kwargs.get("include") is None \
                and kwargs.get("exclude") is None:
            kwargs["exclude_none"], kwargs["exclude"] = False, self._none_extras()
        return super().model_dump(**kwargs)


def check_service_name(value: str, what: str = "service name") -> str:
    """Return ``value`` if it is a valid service name, else raise ``ValueError`` saying why."""
    if not isinstance(value, str) or not _SERVICE_RE.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not valid: use 1-64 letters, digits, '_' or '-', starting "
            "with a letter or digit (no ':', '.', '*', braces or whitespace)"
        )
    return value


def check_action_type(value: str, what: str = "action_type") -> str:
    """Return ``value`` if it has the ``service.entity.verb`` shape, else raise ``ValueError``."""
    if not isinstance(value, str) or not _ACTION_TYPE_RE.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not valid: expected 'service.entity.verb' (2-9 dot-separated "
            "segments of letters, digits, '_' or '-'; the first names the target service)"
        )
    return value


class ErrorDetail(_WireModel):
    """Why an action failed: a type, an optional code, a message and free-form details."""

    model_config = ConfigDict(extra="allow")

    error_type: str
    error_code: str | None = Field(
        None, description="A string; integers are accepted on read and kept as text."
    )
    message: str
    details: dict[str, Any] | None = None

    _code = field_validator("error_code", mode="before")(_as_text)


class DomainAction(_WireModel):
    """A typed message from one service to another."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    action_id: _ActionId = Field(default_factory=uuid.uuid4)
    action_type: _ActionType
    timestamp: _UtcTime = Field(default_factory=utc_now)

    tenant_id: _WireId | None = None
    session_id: _WireId | None = None
    task_id: _WireId | None = None
    user_id: _WireId | None = None

    origin_service: _ServiceName | None = None
    target_service: _ServiceName | None = None
    correlation_id: _WireId | None = None
    trace_id: _WireId | None = None

    callback_queue_name: str | None = None
    callback_action_type: _ActionType | None = None
    expires_at: _UtcTime | None = Field(
        None, description="Set on pseudo-sync requests: after this instant nobody waits."
    )
    ordering_key: _OrderingKey | None = Field(
        None, description="Actions with the same key are handled one at a time, in the "
        "order they were sent (see the wire spec, 'Ordering keys')."
    )

    data: _Object = Field(default_factory=dict)
    metadata: _Object = Field(default_factory=dict)
    @property
    def target(self) -> str:
        """The service this action is for: ``target_service``, else ``action_type``'s first part."""
        return self.target_service or self.action_type.split(".", 1)[0]

    @property
    def reply_correlation_id(self) -> str:
        """The id a reply or callback carries: ``correlation_id``, else the action id
        exactly as the sender wrote it (an uppercase UUID stays uppercase)."""
        return self.correlation_id or getattr(self.action_id, "original", None) or str(
            self.action_id
        )


class DomainActionResponse(_WireModel):
    """The answer to a pseudo-sync ``DomainAction``."""

    model_config = ConfigDict(extra="allow")

    action_id: _ActionId = Field(default_factory=uuid.uuid4)
    correlation_id: str | None = None
    trace_id: str | None = None
    action_type_response_to: str
    success: bool
    timestamp: _UtcTime = Field(default_factory=utc_now)
    data: _Object = Field(default_factory=dict)
    error: ErrorDetail | None = None

    _nested = ("error",)
    _ids = field_validator("correlation_id", "trace_id", mode="before")(_as_text)

    @model_validator(mode="after")
    def _success_matches_error(self) -> DomainActionResponse:
        if self.success and self.error is not None:
            raise ValueError("a response with success=True must not carry an error")
        if not self.success and self.error is None:
            raise ValueError("a response with success=False needs an error (ErrorDetail)")
        return self

    @classmethod
    def for_action(
        cls,
        action: DomainAction,
        *,
        data: dict[str, Any] | None = None,
        error: ErrorDetail | None = None,
    ) -> DomainActionResponse:
        """Build the response to ``action``: success unless ``error`` is given."""
        return cls(
            correlation_id=action.reply_correlation_id,
            trace_id=action.trace_id,
            action_type_response_to=action.action_type,
            success=error is None,
            data=data or {},
            error=error,
        )
