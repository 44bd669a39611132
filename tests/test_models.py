"""DomainAction, DomainActionResponse and ErrorDetail: defaults, validation, wire JSON."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from actionbus.models.actions import DomainAction, DomainActionResponse, ErrorDetail


def test_defaults_generate_uuid_and_utc_timestamp() -> None:
    """A new action gets a fresh UUID action_id and a timezone-aware UTC timestamp."""
    before = datetime.now(UTC)
    first = DomainAction(action_type="inventory.item.reserve")
    second = DomainAction(action_type="inventory.item.reserve")
    assert isinstance(first.action_id, uuid.UUID)
    assert first.action_id != second.action_id
    assert first.timestamp.tzinfo is not None
    assert first.timestamp.utcoffset() == timedelta(0)
    assert before <= first.timestamp <= datetime.now(UTC)
    assert first.data == {}
    assert first.metadata == {}
    assert first.origin_service is None


def test_seed_style_construction_with_string_action_id() -> None:
    """The seed's ``action_id=str(uuid.uuid4())`` is accepted and kept as that UUID."""
    action_id = str(uuid.uuid4())
    action = DomainAction(
        action_id=action_id, action_type="another_service.do_something", data={"key": "value"}
    )
    assert str(action.action_id) == action_id
    assert action.target == "another_service"


def test_naive_and_offset_timestamps_become_utc() -> None:
    """A naive timestamp is taken as UTC and an offset one is converted to UTC."""
    naive = DomainAction(action_type="a.b", timestamp=datetime(2024, 1, 1, 12, 0))
    assert naive.timestamp == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    plus2 = timezone(timedelta(hours=2))
    shifted = DomainAction(action_type="a.b", timestamp=datetime(2024, 1, 1, 12, 0, tzinfo=plus2))
    assert shifted.timestamp.utcoffset() == timedelta(0)
    assert shifted.timestamp.hour == 10


def test_target_is_first_segment_unless_target_service_set() -> None:
    """target is action_type's first segment, or target_service when that is given."""
    assert DomainAction(action_type="billing.invoice.create").target == "billing"
    action = DomainAction(action_type="billing.invoice.create", target_service="billing-v2")
    assert action.target == "billing-v2"


@pytest.mark.parametrize(
    "action_type",
    [
        "",
        "noseparator",
        "a..b",
        ".a.b",
        "a.b.",
        "svc:x.y",
        "a*.b",
        "a.{b}",
        "a.b c",
        "a b.c",
        "-svc.x",
        "a." + "x" * 65,
        "a" + ".b" * 9,
    ],
)
def test_malformed_action_type_rejected(action_type: str) -> None:
    """action_type must be 'service.entity.verb'-shaped; anything else is refused."""
    with pytest.raises(ValidationError, match="action_type"):
        DomainAction(action_type=action_type)


def test_action_type_with_trailing_newline_rejected() -> None:
    """An action_type ending in a newline is refused."""
    with pytest.raises(ValidationError):
        DomainAction(action_type="inventory.item.reserve\n")


@pytest.mark.parametrize("field", ["origin_service", "target_service"])
@pytest.mark.parametrize("value", ["", "a:b", "a.b", "a*", "{x}", "has space"])
def test_malformed_service_names_rejected(field: str, value: str) -> None:
    """origin_service and target_service must be valid service names."""
    with pytest.raises(ValidationError, match=field):
        DomainAction(action_type="a.b", **{field: value})


def test_malformed_callback_action_type_rejected() -> None:
    """callback_action_type has the same shape rule as action_type."""
    with pytest.raises(ValidationError, match="callback_action_type"):
        DomainAction(action_type="a.b", callback_action_type="not valid")


def test_data_and_metadata_must_be_objects() -> None:
    """data and metadata are JSON objects; a list is refused."""
    with pytest.raises(ValidationError, match="data"):
        DomainAction(action_type="a.b", data=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="metadata"):
        DomainAction(action_type="a.b", metadata="x")  # type: ignore[arg-type]


def test_ids_accept_uuids_and_integers_as_text() -> None:
    """Business ids given as UUID or int are stored as strings."""
    cid = uuid.uuid4()
    action = DomainAction(action_type="a.b", correlation_id=cid, tenant_id=42, user_id="u1")
    assert action.correlation_id == str(cid)
    assert action.tenant_id == "42"
    assert action.user_id == "u1"


def test_json_round_trip_keeps_every_field() -> None:
    """model_dump_json then model_validate_json gives an equal action."""
    action = DomainAction(
        action_type="inventory.item.reserve", tenant_id="t1", session_id="s1", task_id="k1",
        user_id="u1", origin_service="orders", correlation_id="c1", trace_id="tr1",
        data={"sku": "A-1", "qty": 2}, metadata={"m": True},
    )
    again = DomainAction.model_validate_json(action.model_dump_json())
    assert again == action


def test_unknown_fields_kept_through_json_round_trip() -> None:
    """Fields this version does not know are kept when an action is read and re-sent."""
    raw = json.dumps({"action_type": "a.b", "priority": 7, "x_future": {"k": [1, 2]}})
    action = DomainAction.model_validate_json(raw)
    assert action.model_extra == {"priority": 7, "x_future": {"k": [1, 2]}}
    dumped = json.loads(action.model_dump_json())
    assert dumped["priority"] == 7
    assert dumped["x_future"] == {"k": [1, 2]}


def test_wire_json_is_plain() -> None:
    """The wire JSON uses plain strings for the UUID and an RFC 3339 UTC timestamp (Z, µs)."""
    action = DomainAction(action_type="a.b", timestamp=datetime(2024, 5, 1, tzinfo=UTC))
    wire = json.loads(action.model_dump_json())
    assert uuid.UUID(wire["action_id"]) == action.action_id
    assert wire["timestamp"] == "2024-05-01T00:00:00.000000Z"
    assert wire["action_type"] == "a.b"


def test_minimal_foreign_json_is_accepted() -> None:
    """A producer in another language may send only action_type and data."""
    action = DomainAction.model_validate_json('{"action_type":"svc.thing.do","data":{"n":1}}')
    assert action.data == {"n": 1}
    assert isinstance(action.action_id, uuid.UUID)


def test_reply_correlation_id_defaults_to_action_id() -> None:
    """reply_correlation_id is the correlation_id, else the action id."""
    action = DomainAction(action_type="a.b")
    assert action.reply_correlation_id == str(action.action_id)
    assert DomainAction(action_type="a.b", correlation_id="c").reply_correlation_id == "c"


def test_response_success_forbids_error() -> None:
    """success=True with an error is refused."""
    with pytest.raises(ValidationError, match="must not carry an error"):
        DomainActionResponse(
            action_type_response_to="a.b", success=True,
            error=ErrorDetail(error_type="X", message="m"),
        )


def test_response_failure_requires_error() -> None:
    """success=False without an error is refused."""
    with pytest.raises(ValidationError, match="needs an error"):
        DomainActionResponse(action_type_response_to="a.b", success=False)


def test_response_defaults_and_round_trip() -> None:
    """A response gets a new id and UTC timestamp and survives a JSON round trip."""
    response = DomainActionResponse(
        action_type_response_to="a.b", success=True, correlation_id="c", data={"x": 1}
    )
    assert isinstance(response.action_id, uuid.UUID)
    assert response.timestamp.utcoffset() == timedelta(0)
    assert DomainActionResponse.model_validate_json(response.model_dump_json()) == response


def test_response_for_action_copies_ids() -> None:
    """for_action copies correlation and trace ids and the action type, with a new id."""
    action = DomainAction(action_type="a.b", correlation_id="c9", trace_id="t9")
    ok = DomainActionResponse.for_action(action, data={"r": 1})
    assert (ok.correlation_id, ok.trace_id, ok.action_type_response_to) == ("c9", "t9", "a.b")
    assert ok.success
    assert ok.error is None
    assert ok.data == {"r": 1}
    assert ok.action_id != action.action_id
    failed = DomainActionResponse.for_action(
        action, error=ErrorDetail(error_type="Boom", message="bad")
    )
    assert not failed.success
    assert failed.error is not None
    assert failed.error.error_type == "Boom"


def test_error_detail_fields() -> None:
    """ErrorDetail has error_type, optional error_code, message and details; both required."""
    detail = ErrorDetail(error_type="ValueError", error_code="E1", message="m", details={"k": 1})
    assert detail.model_dump() == {
        "error_type": "ValueError", "error_code": "E1", "message": "m", "details": {"k": 1},
    }
    minimal = ErrorDetail(error_type="T", message="m")
    assert minimal.error_code is None
    assert minimal.details is None
    with pytest.raises(ValidationError, match="message"):
        ErrorDetail(error_type="T")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="error_type"):
        ErrorDetail(message="m")  # type: ignore[call-arg]


class _Node(BaseModel):
    child: _Node | None = None


class _TreeAction(DomainAction):
    """An action subclass whose schema is not a plain model schema (a recursive field)."""

    tree: _Node | None = None


def test_wire_json_of_an_action_with_a_recursive_field_drops_its_none_extras() -> None:
    """The send path's JSON of such a subclass (serialized the general way) follows the
    wire rule as for any action: declared fields written even when empty (null), extra
    fields set to None left out, the others kept."""
    from actionbus.clients.encoding import wire_json

    action = _TreeAction(action_type="a.b", tree=_Node(), x_note=None, x_kept=1)
    wire = json.loads(wire_json(action))
    assert wire == json.loads(action.model_dump_json(exclude_none=True))
    assert "x_note" not in wire
    assert (wire["x_kept"], wire["tenant_id"], wire["tree"]) == (1, None, {"child": None})
