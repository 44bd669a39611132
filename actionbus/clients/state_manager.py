"""``RedisStateManager``: Pydantic models stored as JSON in Redis."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from actionbus.clients.guard import redis_call
from actionbus.clients.queue_manager import QueueManager
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.exceptions import StateConflictError, StateError

__all__ = ["RedisStateManager"]

TStateModel = TypeVar("TStateModel", bound=BaseModel)

# Compare-and-set in one script on one key, so it also works on Redis Cluster.
_CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 1
"""


_guarded = redis_call(StateError, "state of service {self.app_settings.service_name!r}")


class RedisStateManager(Generic[TStateModel]):
    """Load, save, delete and atomically update one kind of Pydantic state in Redis.

    Keys are namespaced per service: ``{prefix}:{environment}:{service}:state:{state_key}``.
    """

    def __init__(
        self,
        redis_conn: AnyRedis,
        state_model: type[TStateModel],
        app_settings: CommonAppSettings,
    ) -> None:
        if not (isinstance(state_model, type) and issubclass(state_model, BaseModel)):
            raise TypeError(f"state_model must be a Pydantic model class, got {state_model!r}")
        self.redis = redis_conn
        self.state_model = state_model
        self.app_settings = app_settings
        self.queue_manager = QueueManager(app_settings.environment, app_settings.key_prefix)
        self.logger = logging.getLogger(f"actionbus.state.{app_settings.service_name}")
        self._cas = redis_conn.register_script(_CAS_SCRIPT)

    def key_for(self, state_key: str) -> str:
        """The Redis key holding ``state_key``."""
        return self.queue_manager.get_state_key(self.app_settings.service_name, state_key)

    def _parse(self, state_key: str, raw: bytes | str | None) -> TStateModel | None:
        if raw is None:
            return None
        try:
            return self.state_model.model_validate_json(raw)
        except ValidationError as exc:
            self.logger.warning(
                "state %r no longer validates as %s; treating it as absent: %s",
                state_key, self.state_model.__name__, exc,
            )
            return None

    @_guarded
    async def load_state(self, state_key: str) -> TStateModel | None:
        """The stored state, or ``None`` when absent or no longer valid (the reason is logged)."""
        return self._parse(state_key, await self.redis.get(self.key_for(state_key)))

    def _dump(self, state_data: TStateModel | None) -> str:
        if state_data is None:
            raise TypeError("state_data is None: use delete_state() to remove a state")
        if not isinstance(state_data, self.state_model):
            raise TypeError(
                f"state_data must be a {self.state_model.__name__}, "
                f"got {type(state_data).__name__}"
            )
        return state_data.model_dump_json()

    @staticmethod
    def _check_expiry(expiration_seconds: int | None) -> None:
        if expiration_seconds is not None and expiration_seconds <= 0:
            raise ValueError(
                f"expiration_seconds must be a positive integer or None, got {expiration_seconds}"
            )

    @_guarded
    async def save_state(
        self,
        state_key: str,
        state_data: TStateModel,
        expiration_seconds: int | None = None,
    ) -> None:
        """Store ``state_data``, optionally expiring after ``expiration_seconds``."""
        payload = self._dump(state_data)
        self._check_expiry(expiration_seconds)
        await self.redis.set(self.key_for(state_key), payload, ex=expiration_seconds)

    @_guarded
    async def delete_state(self, state_key: str) -> bool:
        """Delete the state; ``True`` if it existed."""
        return bool(await self.redis.delete(self.key_for(state_key)))

    @_guarded
    async def update_state(
        self,
        state_key: str,
        fn: Callable[[TStateModel | None], TStateModel | Awaitable[TStateModel]],
        expiration_seconds: int | None = None,
        *,
        max_attempts: int = 100,
    ) -> TStateModel:
        """Atomically read, change and write a state (optimistic concurrency).

        ``fn`` gets the current state (or ``None``) and returns the new one; it may be
        called again if another writer changed the state in between, so it must not have
        side effects. Raises ``StateConflictError`` after ``max_attempts`` lost races.
        """
        self._check_expiry(expiration_seconds)
        key = self.key_for(state_key)
        for _ in range(max_attempts):
            raw = await self.redis.get(key)
            result = fn(self._parse(state_key, raw))
            new_state = await result if isinstance(result, Awaitable) else result
            payload = self._dump(new_state)
            expected = "" if raw is None else raw
            ok = await self._cas(keys=[key], args=[expected, payload, expiration_seconds or ""])
            if ok:
                return new_state
        raise StateConflictError(
            f"update_state({state_key!r}) lost the race {max_attempts} times against other "
            "writers; retry later or reduce contention on this key"
        )
