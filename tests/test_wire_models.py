"""Tolerant readers and strict writers of the wire models (docs/wire-format.md)."""

from __future__ import annotations

import copy
import json
import pickle
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from actionbus import DomainAction, DomainActionResponse, ErrorDetail, InvalidReply, parse_reply

ACTION_FIELDS = [
    "action_id", "action_type", "timestamp", "tenant_id", "session_id", "task_id", "user_id",
    "origin_service", "target_service", "correlation_id", "trace_id", "callback_queue_name",
    "callback_action_type", "expires_at", "ordering_key", "data", "metadata",
]


def test_null_and_absent_mean_the_same_for_data_and_metadata() -> None:
    """`data: null` and `metadata: null` read as empty objects, like absent ones."""
    action = DomainAction.model_validate_json('{"action_type":"a.b","data":null,"metadata":null}')
    assert (action.data, action.metadata) == ({}, {})
    reply = DomainActionResponse.model_validate_json(
        '{"action_type_response_to":"a.b","success":true,"data":null}')
    assert reply.data == {}


def test_integer_error_code_is_kept_as_text() -> None:
    """An integer error_code is accepted and stored as its decimal string."""
    reply = DomainActionResponse.model_validate_json(
        '{"action_type_response_to":"a.b","success":false,'
        '"error":{"error_type":"Nope","error_code":4001,"message":"m"}}')
    assert reply.error is not None
    assert reply.error.error_code == "4001"


def test_writers_emit_every_field_even_with_exclude_none() -> None:
    """exclude_none=True still writes every declared field, null where empty."""
    action = DomainAction(action_type="a.b", extra_none=None)  # type: ignore[call-arg]
    wire = json.loads(action.model_dump_json(exclude_none=True))
    assert list(wire) == ACTION_FIELDS
    assert wire["trace_id"] is None
    reply = DomainActionResponse(action_type_response_to="a.b", success=True)
    assert json.loads(reply.model_dump_json(exclude_none=True))["error"] is None
    error = ErrorDetail(error_type="X", message="m").model_dump(exclude_none=True)
    assert error == {"error_type": "X", "error_code": None, "message": "m", "details": None}


def test_explicit_exclude_is_honoured() -> None:
    """An explicit exclude= still leaves the named fields out."""
    wire = json.loads(DomainAction(action_type="a.b").model_dump_json(
        exclude_none=True, exclude={"trace_id"}))
    assert "trace_id" not in wire


@pytest.mark.parametrize("value", [
    "2026-01-02T03:04:05Z",
    "2026-01-02T03:04:05+00:00",
    "2026-01-02T04:04:05+01:00",
    "2026-01-02T03:04:05",
    "2026-01-02T03:04:05.000000Z",
    "2026-01-02T03:04:05.000000999Z",
    "2026-01-02 03:04:05Z",
    1767323045000,
    1767323045,
    "1767323045000",
])
def test_accepted_timestamp_forms(value: object) -> None:
    """Z, offsets, zone-less (UTC), nanoseconds and Unix time (s or ms) read as one instant."""
    action = DomainAction.model_validate({"action_type": "a.b", "timestamp": value})
    assert action.timestamp == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert json.loads(action.model_dump_json())["timestamp"] == "2026-01-02T03:04:05.000000Z"


@pytest.mark.parametrize("value", [True, "yesterday", "20260102T030405Z", [2026]])
def test_refused_timestamp_forms(value: object) -> None:
    """Booleans, prose, ISO basic format and other types are refused with a reason."""
    with pytest.raises(ValidationError, match="timestamp"):
        DomainAction.model_validate({"action_type": "a.b", "timestamp": value})


def test_expires_at_and_reply_timestamp_use_the_same_rules() -> None:
    """expires_at and a reply's timestamp accept epoch milliseconds and write Z with µs."""
    action = DomainAction.model_validate(
        {"action_type": "a.b", "expires_at": 1767323045000})
    assert json.loads(action.model_dump_json())["expires_at"] == "2026-01-02T03:04:05.000000Z"
    reply = DomainActionResponse.model_validate(
        {"action_type_response_to": "a.b", "success": True, "timestamp": "2026-01-02T03:04:05"})
    assert json.loads(reply.model_dump_json())["timestamp"] == "2026-01-02T03:04:05.000000Z"


def test_times_assigned_after_construction_are_written_in_utc() -> None:
    """A naive or offset datetime assigned later is still written as UTC with Z and µs."""
    action = DomainAction(action_type="a.b")
    action.timestamp = datetime(2026, 1, 2, 5, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    action.expires_at = datetime(2026, 1, 2, 3, 4, 5, 123456)
    wire = json.loads(action.model_dump_json())
    assert wire["timestamp"] == wire["expires_at"] == "2026-01-02T03:04:05.123456Z"


def test_uppercase_action_id_is_echoed_exactly_as_correlation() -> None:
    """An uppercase action_id is read, written lowercase, and replies correlate on it as sent."""
    raw_id = str(uuid.uuid4()).upper()
    action = DomainAction.model_validate_json(json.dumps({"action_type": "a.b",
                                                          "action_id": raw_id}))
    assert action.reply_correlation_id == raw_id
    assert json.loads(action.model_dump_json())["action_id"] == raw_id.lower()
    assert DomainActionResponse.for_action(action).correlation_id == raw_id
    for copied in (copy.deepcopy(action), pickle.loads(pickle.dumps(action)),
                   action.model_copy(deep=True)):
        assert copied.reply_correlation_id == raw_id


@pytest.mark.parametrize("raw_id", [
    "12345678-1234-4234-8234-123456789012",  # no letter at all
    "0f8fad5b-d9cb-469f-a165-70867728950e",  # canonical
])
def test_canonical_action_id_is_read_as_is(raw_id: str) -> None:
    """A canonical (lowercase, or letterless) action_id is read as that UUID, written and
    correlated exactly as sent."""
    action = DomainAction.model_validate_json(json.dumps({"action_type": "a.b",
                                                          "action_id": raw_id}))
    assert action.action_id == uuid.UUID(raw_id)
    assert type(action.action_id) is uuid.UUID
    assert action.reply_correlation_id == raw_id
    assert json.loads(action.model_dump_json())["action_id"] == raw_id


def test_uppercase_correlation_id_is_kept() -> None:
    """A correlation_id is text and keeps its case."""
    action = DomainAction(action_type="a.b", correlation_id="ABC-Def")
    assert DomainActionResponse.for_action(action).correlation_id == "ABC-Def"


def test_parse_reply_returns_the_reply() -> None:
    """parse_reply gives the DomainActionResponse of a valid payload, bytes or text."""
    raw = DomainActionResponse(action_type_response_to="a.b", success=True,
                               correlation_id="c1").model_dump_json()
    assert parse_reply(raw.encode()).correlation_id == "c1"


@pytest.mark.parametrize(("raw", "correlation_id"), [
    ('{"correlation_id":"c2","action_type_response_to":"a.b","success":false}', "c2"),
    ('{"correlation_id":7,"success":true}', "7"),
    ("not json", None),
    ('["c3"]', None),
])
def test_parse_reply_raises_invalid_reply(raw: str, correlation_id: str | None) -> None:
    """An invalid reply raises InvalidReply with the raw payload, reason and correlation id."""
    with pytest.raises(InvalidReply) as caught:
        parse_reply(raw)
    assert caught.value.raw == raw
    assert caught.value.correlation_id == correlation_id
    assert caught.value.reason
