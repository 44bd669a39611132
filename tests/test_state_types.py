"""Typed state: values carry their model and version; mismatches are refused or counted."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from actionbus import CommonAppSettings, RedisManager, RedisStateManager
from actionbus.exceptions import StateError, StateTypeError

pytestmark = pytest.mark.backends

Settings = Callable[..., CommonAppSettings]


class Session(BaseModel):
    """A login session."""

    user_id: str
    visits: int = 0


class Account(BaseModel):
    """Structurally compatible with Session, yet another type."""

    user_id: str
    visits: int = 0


class Order(BaseModel):
    """An incompatible model."""

    order_id: str


def manager(conn: Any, settings: Settings, model: type[BaseModel], **kw: Any) -> Any:
    return RedisStateManager(conn, model, settings(service_name="svc"), **kw)


async def test_compatible_model_does_not_load_another_type(
    conn: Any, make_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A saved Session loads as None through an Account manager, logged once, counted each time."""
    await manager(conn, make_settings, Session).save_state("k", Session(user_id="u"))
    accounts = manager(conn, make_settings, Account)
    with caplog.at_level(logging.WARNING):
        assert await accounts.load_state("k") is None
        assert await accounts.load_state("k") is None
    lines = [r.getMessage() for r in caplog.records if "holds a Session" in r.getMessage()]
    assert len(lines) == 1
    assert "Account" in lines[0]
    assert accounts.counters["type_mismatch"] == 2


async def test_strict_load_raises_typed_error(conn: Any, make_settings: Settings) -> None:
    """load_state(strict=True) raises StateTypeError naming both models."""
    await manager(conn, make_settings, Session).save_state("k", Session(user_id="u"))
    with pytest.raises(StateTypeError, match=r"holds a Session v1, not a Order"):
        await manager(conn, make_settings, Order).load_state("k", strict=True)


async def test_strict_load_of_invalid_value_raises(conn: Any, make_settings: Settings) -> None:
    """load_state(strict=True) of an unparsable value raises StateError; non-strict gives None."""
    sessions = manager(conn, make_settings, Session)
    await conn.set(sessions.key_for("k"), "{broken")
    assert await sessions.load_state("k") is None
    assert sessions.counters["invalid"] == 1
    with pytest.raises(StateError, match="not a JSON state value"):
        await sessions.load_state("k", strict=True)


async def test_save_refuses_to_overwrite_another_model(conn: Any, make_settings: Settings) -> None:
    """save_state through an Order manager refuses a key holding a Session and keeps it."""
    sessions = manager(conn, make_settings, Session)
    await sessions.save_state("k", Session(user_id="u", visits=7))
    with pytest.raises(StateTypeError, match="holds a Session"):
        await manager(conn, make_settings, Order).save_state("k", Order(order_id="o"))
    assert await sessions.load_state("k") == Session(user_id="u", visits=7)


async def test_update_refuses_to_overwrite_another_model(
    conn: Any, make_settings: Settings
) -> None:
    """update_state through an Order manager raises without calling fn; the Session stays."""
    sessions = manager(conn, make_settings, Session)
    await sessions.save_state("k", Session(user_id="u"))
    called: list[Any] = []

    def fn(state: Order | None) -> Order:
        called.append(state)
        return Order(order_id="o")

    with pytest.raises(StateTypeError, match="holds a Session"):
        await manager(conn, make_settings, Order).update_state("k", fn)
    assert called == []
    assert await sessions.load_state("k") == Session(user_id="u")


async def test_bare_json_written_before_still_loads(conn: Any, make_settings: Settings) -> None:
    """A value stored as the model's bare JSON (before envelopes) loads and is upgraded on write."""
    sessions = manager(conn, make_settings, Session)
    key = sessions.key_for("old")
    await conn.set(key, json.dumps({"user_id": "u", "visits": 2}))
    assert await sessions.load_state("old") == Session(user_id="u", visits=2)
    await sessions.update_state("old", lambda s: Session(user_id="u", visits=(s.visits + 1)))
    stored = json.loads(await conn.get(key))
    assert stored["__actionbus_state__"] == {"model": "Session", "version": 1}
    assert stored["data"]["visits"] == 3


async def test_migration_of_older_versions(conn: Any, make_settings: Settings) -> None:
    """A v2 manager migrates a v1 value; a v1 manager neither reads nor overwrites a v2 value."""

    class SessionV2(BaseModel):
        user_id: str
        count: int

    def migrate(version: int, data: dict[str, Any]) -> dict[str, Any]:
        assert version == 1
        return {"user_id": data["user_id"], "count": data["visits"]}

    v1 = manager(conn, make_settings, Session)
    await v1.save_state("k", Session(user_id="u", visits=4))
    v2 = manager(conn, make_settings, SessionV2, model_name="Session", schema_version=2,
                 migrate=migrate)  # fmt: skip
    assert await v2.load_state("k") == SessionV2(user_id="u", count=4)
    await v2.save_state("k", SessionV2(user_id="u", count=5))
    with pytest.raises(StateTypeError, match="holds a Session v2"):
        await v1.load_state("k", strict=True)
    with pytest.raises(StateTypeError, match="holds a Session v2"):
        await v1.save_state("k", Session(user_id="u"))  # would lose v2's data
    assert await v2.load_state("k") == SessionV2(user_id="u", count=5)


async def test_update_state_on_cluster_keeps_types(redis_cluster_url: str) -> None:
    """On Redis Cluster, update_state works and save_state still refuses another model."""
    settings = CommonAppSettings(_env_file=None, service_name="svc", redis_cluster=True,
                                 redis_url=redis_cluster_url)  # fmt: skip
    async with RedisManager(settings) as rm:
        redis = rm.get_client()
        sessions = RedisStateManager(redis, Session, settings)
        for _ in range(3):
            await sessions.update_state(
                "k", lambda s: Session(user_id="u", visits=(s.visits + 1) if s else 1)
            )
        assert await sessions.load_state("k") == Session(user_id="u", visits=3)
        with pytest.raises(StateTypeError):
            await RedisStateManager(redis, Order, settings).save_state("k", Order(order_id="o"))


async def test_envelope_without_a_version_is_version_one(
    conn: Any, make_settings: Settings
) -> None:
    """An envelope that names the model but no version (a writer of an older envelope
    format) holds version 1: it loads, even with strict=True."""
    sessions = manager(conn, make_settings, Session)
    await conn.set(sessions.key_for("k"), json.dumps(
        {"__actionbus_state__": {"model": "Session"}, "data": {"user_id": "u", "visits": 2}}))
    assert await sessions.load_state("k", strict=True) == Session(user_id="u", visits=2)
    assert sessions.counters == {"invalid": 0, "type_mismatch": 0}


async def test_missing_state_is_not_an_error(
    conn: Any, make_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A key never saved loads as None even with strict=True: not counted, not logged."""
    sessions = manager(conn, make_settings, Session)
    with caplog.at_level(logging.WARNING):
        assert await sessions.load_state("absent", strict=True) is None
        assert await sessions.load_state("absent") is None
    assert sessions.counters == {"invalid": 0, "type_mismatch": 0}
    assert not [r for r in caplog.records if "absent" in r.getMessage()]


async def test_invalid_value_is_counted_at_every_load_and_logged_once(
    conn: Any, make_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Each load of an invalid value adds one to counters["invalid"]; the warning is logged
    once per key."""
    sessions = manager(conn, make_settings, Session)
    await conn.set(sessions.key_for("k"), "{broken")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert await sessions.load_state("k") is None
    assert sessions.counters["invalid"] == 3
    assert len([r for r in caplog.records if "not a JSON state value" in r.getMessage()]) == 1


async def test_each_other_model_found_at_a_key_is_logged_once(
    conn: Any, make_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A key that held an Account v1 and later an Order v1 gets one warning for each model
    (the same version does not make them the same mismatch)."""
    sessions = manager(conn, make_settings, Session)
    await manager(conn, make_settings, Account).save_state("k", Account(user_id="u"))
    with caplog.at_level(logging.WARNING):
        assert await sessions.load_state("k") is None
        assert await sessions.load_state("k") is None
        await conn.delete(sessions.key_for("k"))
        await manager(conn, make_settings, Order).save_state("k", Order(order_id="o"))
        assert await sessions.load_state("k") is None
        assert await sessions.load_state("k") is None
    lines = [r.getMessage() for r in caplog.records if "holds a" in r.getMessage()]
    assert len(lines) == 2
    assert "holds a Account v1" in lines[0]
    assert "holds a Order v1" in lines[1]
    assert sessions.counters["type_mismatch"] == 4
