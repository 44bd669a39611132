"""RedisStateManager (seed 000): load, save, delete, expiry, invalid data, atomic updates."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from actionbus import (
    CommonAppSettings,
    InvalidNameError,
    RedisManager,
    RedisStateManager,
    StateConflictError,
)

pytestmark = pytest.mark.backends

Settings = Callable[..., CommonAppSettings]


class UserSessionState(BaseModel):
    """The seed's example state."""

    user_id: str
    visits: int = 0


class Counter(BaseModel):
    """A state for concurrency tests."""

    value: int = 0


@pytest.fixture
def sessions(conn: Any, make_settings: Settings) -> RedisStateManager[UserSessionState]:
    """A state manager for UserSessionState, as the seed builds it."""
    return RedisStateManager[UserSessionState](
        redis_conn=conn,
        state_model=UserSessionState,
        app_settings=make_settings(service_name="sessions"),
    )


async def test_load_missing_returns_none(sessions: RedisStateManager[UserSessionState]) -> None:
    """load_state of a key never saved returns None."""
    assert await sessions.load_state("user_session:nobody") is None


async def test_save_then_load_round_trip(
    sessions: RedisStateManager[UserSessionState], conn: Any
) -> None:
    """save_state stores the model's JSON in a typed envelope under the service's state key."""
    state = UserSessionState(user_id="42", visits=3)
    assert await sessions.save_state("user_session:42", state) is None
    loaded = await sessions.load_state("user_session:42")
    assert loaded == state
    assert isinstance(loaded, UserSessionState)
    key = "actionbus:dev:{sessions}:state:user_session:42"
    assert sessions.key_for("user_session:42") == key
    assert json.loads(await conn.get(key)) == {
        "__actionbus_state__": {"model": "UserSessionState", "version": 1},
        "data": {"user_id": "42", "visits": 3},
    }
    assert await conn.ttl(key) == -1


async def test_delete_reports_existence(sessions: RedisStateManager[UserSessionState]) -> None:
    """delete_state returns True when it removed the state and False when there was none."""
    await sessions.save_state("user_session:1", UserSessionState(user_id="1"))
    assert await sessions.delete_state("user_session:1") is True
    assert await sessions.delete_state("user_session:1") is False
    assert await sessions.load_state("user_session:1") is None


async def test_save_none_raises_type_error(sessions: RedisStateManager[UserSessionState]) -> None:
    """save_state(None) raises TypeError pointing at delete_state."""
    with pytest.raises(TypeError) as refused:
        await sessions.save_state("user_session:1", None)  # type: ignore[arg-type]
    assert str(refused.value) == "state_data is None: use delete_state() to remove a state"


async def test_save_wrong_model_raises_type_error(
    sessions: RedisStateManager[UserSessionState],
) -> None:
    """save_state with another model or a dict raises TypeError naming the expected model
    and the type it got."""
    for wrong, got in ((Counter(), "Counter"), ({"user_id": "1"}, "dict")):
        with pytest.raises(TypeError) as refused:
            await sessions.save_state("user_session:1", wrong)  # type: ignore[arg-type]
        assert str(refused.value) == f"state_data must be a UserSessionState, got {got}"
    assert await sessions.load_state("user_session:1") is None


async def test_expiration_sets_ttl_and_state_expires(
    sessions: RedisStateManager[UserSessionState], conn: Any
) -> None:
    """expiration_seconds sets a TTL; after it the state is gone."""
    await sessions.save_state("user_session:9", UserSessionState(user_id="9"), 3600)
    assert 3590 < await conn.ttl(sessions.key_for("user_session:9")) <= 3600
    await sessions.save_state("user_session:8", UserSessionState(user_id="8"), 1)
    await conn.pexpire(sessions.key_for("user_session:8"), 30)
    for _ in range(200):  # bounded wait until Redis expired it
        if not await conn.exists(sessions.key_for("user_session:8")):
            break
        await asyncio.sleep(0.01)
    assert await sessions.load_state("user_session:8") is None


@pytest.mark.parametrize("seconds", [0, -5])
async def test_non_positive_expiration_rejected(
    sessions: RedisStateManager[UserSessionState], seconds: int
) -> None:
    """expiration_seconds must be positive (or None); nothing is saved otherwise."""
    with pytest.raises(ValueError, match="expiration_seconds"):
        await sessions.save_state("user_session:1", UserSessionState(user_id="1"), seconds)
    with pytest.raises(ValueError, match="expiration_seconds"):
        await sessions.update_state("user_session:1", lambda s: UserSessionState(user_id="1"),
                                    seconds)
    assert await sessions.load_state("user_session:1") is None


@pytest.mark.parametrize(
    "stored", ["{not json", '{"visits": 2}', '{"user_id": "1", "visits": "x"}']
)
async def test_invalid_stored_value_loads_as_none_and_logs(
    sessions: RedisStateManager[UserSessionState],
    conn: Any,
    caplog: pytest.LogCaptureFixture,
    stored: str,
) -> None:
    """A stored value that no longer validates loads as None and the reason is logged."""
    await conn.set(sessions.key_for("user_session:old"), stored)
    with caplog.at_level(logging.WARNING):
        assert await sessions.load_state("user_session:old") is None
    assert "user_session:old" in caplog.text
    assert "UserSessionState" in caplog.text
    assert {r.name for r in caplog.records} == {"actionbus.state.sessions"}


@pytest.mark.parametrize("key", ["", "has space", "a*", "{tag}", "x" * 600])
async def test_bad_state_keys_rejected(
    sessions: RedisStateManager[UserSessionState], key: str
) -> None:
    """State keys with globs, braces, whitespace or excess length are refused."""
    with pytest.raises(InvalidNameError):
        await sessions.load_state(key)
    with pytest.raises(InvalidNameError):
        await sessions.save_state(key, UserSessionState(user_id="1"))
    with pytest.raises(InvalidNameError):
        await sessions.delete_state(key)


def test_state_model_must_be_pydantic_model(conn: Any, make_settings: Settings) -> None:
    """A state_model that is not a Pydantic model class is a TypeError."""
    with pytest.raises(TypeError, match="Pydantic model class"):
        RedisStateManager(conn, dict, make_settings())  # type: ignore[type-var]


async def test_update_state_concurrent_increments(conn: Any, make_settings: Settings) -> None:
    """50 concurrent update_state increments end at exactly 50."""
    counters = RedisStateManager(conn, Counter, make_settings())

    def increment(state: Counter | None) -> Counter:
        return Counter(value=(state.value if state else 0) + 1)

    await asyncio.gather(*(counters.update_state("hits", increment) for _ in range(50)))
    assert await counters.load_state("hits") == Counter(value=50)


async def test_update_state_async_fn_and_expiry(conn: Any, make_settings: Settings) -> None:
    """update_state accepts an async fn, returns the new state and applies the expiry."""
    counters = RedisStateManager(conn, Counter, make_settings())

    async def start_at_ten(state: Counter | None) -> Counter:
        assert state is None
        return Counter(value=10)

    assert await counters.update_state("c", start_at_ten, expiration_seconds=100) == Counter(
        value=10
    )
    assert 0 < await conn.ttl(counters.key_for("c")) <= 100


async def test_update_state_fn_returning_none_raises(conn: Any, make_settings: Settings) -> None:
    """An update fn that returns None raises TypeError and leaves the state unchanged."""
    counters = RedisStateManager(conn, Counter, make_settings())
    await counters.save_state("c", Counter(value=1))
    with pytest.raises(TypeError):
        await counters.update_state("c", lambda state: None)  # type: ignore[arg-type,return-value]
    assert await counters.load_state("c") == Counter(value=1)


async def test_update_state_conflict_after_max_attempts(conn: Any, make_settings: Settings) -> None:
    """When another writer always wins, update_state raises StateConflictError."""
    counters = RedisStateManager(conn, Counter, make_settings())
    key = counters.key_for("c")

    calls = 0

    async def racing(state: Counter | None) -> Counter:
        nonlocal calls
        calls += 1
        await conn.set(key, Counter(value=-calls).model_dump_json())  # another writer
        return Counter(value=1)

    with pytest.raises(StateConflictError, match="lost the race 3 times"):
        await counters.update_state("c", racing, max_attempts=3)
    assert calls == 3
    assert await counters.load_state("c") == Counter(value=-3)


async def test_works_with_decoded_responses(make_settings: Settings) -> None:
    """The state manager works on a client with redis_decode_responses=True."""
    settings = make_settings(redis_decode_responses=True)
    async with RedisManager(settings) as manager:
        counters = RedisStateManager(manager.get_client(), Counter, settings)
        await counters.save_state("c", Counter(value=2))
        assert await counters.update_state("c", lambda s: Counter(value=s.value + 1)) == (
            Counter(value=3)
        )


async def test_state_keys_use_the_settings_key_prefix(conn: Any, make_settings: Settings) -> None:
    """A manager built with settings.key_prefix keeps its states under that prefix."""
    settings = make_settings(service_name="sessions", key_prefix="custom")
    sessions = RedisStateManager(conn, UserSessionState, settings)
    assert sessions.key_for("k") == "custom:dev:{sessions}:state:k"
    await sessions.save_state("k", UserSessionState(user_id="1"))
    assert await conn.exists("custom:dev:{sessions}:state:k") == 1
