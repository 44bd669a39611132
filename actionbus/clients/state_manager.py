"""``RedisStateManager``: Pydantic models stored as JSON in Redis, tagged with their type.

Each value is stored as an envelope, header first::

    {"__actionbus_state__": {"model": "Session", "version": 1}, "data": {...}}

so a value of one model is never read as, or overwritten by, another model. Values written
before the envelope (the model's bare JSON) still load, as the manager's model.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from actionbus.clients.guard import redis_call
from actionbus.clients.queue_manager import QueueManager
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.exceptions import StateConflictError, StateError, StateTypeError

__all__ = ["RedisStateManager", "StateMigration"]

TStateModel = TypeVar("TStateModel", bound=BaseModel)

StateMigration = Callable[[int, dict[str, Any]], dict[str, Any]]
"""``migrate(stored_version, data) -> data``: bring an older version's data to the current one."""

ENVELOPE = "__actionbus_state__"
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_WARNED_MAX = 1024  # distinct (key, stored model) pairs logged per manager

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

# SET unless the key holds an envelope of another model or a newer version of this one;
# returns 1, or "<stored model> v<stored version>".
_SAVE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  local model, version = string.match(
    current, '^{"__actionbus_state__":{"model":"([^"]*)","version":(%d+)')
  if model and (model ~= ARGV[3] or tonumber(version) > tonumber(ARGV[4])) then
    return model .. ' v' .. version
  end
end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""

_Outcome = Literal["ok", "missing", "invalid", "mismatch"]


_guarded = redis_call(StateError, "state of service {self.app_settings.service_name!r}")


class RedisStateManager(Generic[TStateModel]):
    """Load, save, delete and atomically update one kind of Pydantic state in Redis.

    Keys are namespaced per service: ``{prefix}:{environment}:{service}:state:{state_key}``.
    ``model_name`` (default: the class name) and ``schema_version`` (default 1) are written
    with each value. A stored older version is passed through ``migrate`` (when given) before
    validation; a newer version or another model is a type mismatch.
    """

    def __init__(
        self,
        redis_conn: AnyRedis,
        state_model: type[TStateModel],
        app_settings: CommonAppSettings,
        *,
        model_name: str | None = None,
        schema_version: int = 1,
        migrate: StateMigration | None = None,
    ) -> None:
        if not (isinstance(state_model, type) and issubclass(state_model, BaseModel)):
            raise TypeError(f"state_model must be a Pydantic model class, got {state_model!r}")
        self.model_name = model_name or state_model.__name__
        if not _MODEL_NAME.fullmatch(self.model_name):
            raise ValueError(f"model_name {self.model_name!r}: use letters, digits, _ . : -")
        if schema_version < 1:
            raise ValueError(f"schema_version must be >= 1, got {schema_version}")
        self.redis = redis_conn
        self.state_model = state_model
        self.schema_version = schema_version
        self.migrate = migrate
        self.app_settings = app_settings
        self.queue_manager = QueueManager(app_settings.environment, app_settings.key_prefix)
        self.logger = logging.getLogger(f"actionbus.state.{app_settings.service_name}")
        self.counters: dict[str, int] = {"invalid": 0, "type_mismatch": 0}
        """How many loads found an invalid value / a value of another model or version."""
        self._warned: set[tuple[str, str]] = set()
        self._cas = redis_conn.register_script(_CAS_SCRIPT)
        self._save = redis_conn.register_script(_SAVE_SCRIPT)

    def key_for(self, state_key: str) -> str:
        """The Redis key holding ``state_key``."""
        return self.queue_manager.get_state_key(self.app_settings.service_name, state_key)

    # -- reading ------------------------------------------------------------------------

    def _decode(self, raw: bytes | str) -> tuple[str, int, Any]:
        """(model name, version, data) of a stored value; a bare legacy value is ours, v1."""
        value = json.loads(raw)
        if isinstance(value, dict) and isinstance(value.get(ENVELOPE), dict):
            header = value[ENVELOPE]
            return str(header.get("model")), int(header.get("version", 1)), value.get("data")
        return self.model_name, 1, value

    def _parse(self, state_key: str, raw: bytes | str | None) -> tuple[_Outcome, Any]:
        """(outcome, instance or the reason) for a stored value."""
        if raw is None:
            return "missing", None
        try:
            model, version, data = self._decode(raw)
        except (ValueError, TypeError) as exc:
            return "invalid", f"not a JSON state value ({exc})"
        if model != self.model_name or version > self.schema_version:
            return "mismatch", (model, version)
        try:
            if version < self.schema_version and self.migrate is not None:
                data = self.migrate(version, data)
            return "ok", self.state_model.model_validate(data)
        except (ValidationError, ValueError, TypeError, KeyError) as exc:
            return "invalid", f"does not validate as {self.model_name} v{version}: {exc}"

    def _mismatch_text(self, state_key: str, model: str, version: int) -> str:
        return (
            f"state {state_key!r} ({self.key_for(state_key)}) holds a {model} v{version}, "
            f"not a {self.model_name} v{self.schema_version} (or older): read it with a "
            f"manager of that model, or delete_state() it if it is stale"
        )

    def _result(self, state_key: str, outcome: _Outcome, value: Any, strict: bool) -> Any:
        if outcome in ("ok", "missing"):
            return value
        if outcome == "mismatch":
            self.counters["type_mismatch"] += 1
            text = self._mismatch_text(state_key, *value)
            if strict:
                raise StateTypeError(text)
            marker = (state_key, f"{value[0]} v{value[1]}")
        else:
            self.counters["invalid"] += 1
            text = f"state {state_key!r} (read as {self.model_name}) {value}"
            if strict:
                raise StateError(f"{text}; fix or delete_state() it")
            marker = (state_key, "invalid")
        if marker not in self._warned:
            if len(self._warned) < _WARNED_MAX:
                self._warned.add(marker)
            self.logger.warning("%s; treating it as absent", text)
        return None

    @_guarded
    async def load_state(self, state_key: str, *, strict: bool = False) -> TStateModel | None:
        """The stored state, or ``None`` when absent, invalid or of another model (logged
        once, counted in ``counters``). ``strict=True`` raises ``StateTypeError`` for another
        model/version and ``StateError`` for an invalid value instead."""
        raw = await self.redis.get(self.key_for(state_key))
        outcome, value = self._parse(state_key, raw)
        result: TStateModel | None = self._result(state_key, outcome, value, strict)
        return result

    # -- writing ------------------------------------------------------------------------

    def _dump(self, state_data: TStateModel | None) -> str:
        if state_data is None:
            raise TypeError("state_data is None: use delete_state() to remove a state")
        if not isinstance(state_data, self.state_model):
            raise TypeError(
                f"state_data must be a {self.state_model.__name__}, "
                f"got {type(state_data).__name__}"
            )
        header = json.dumps({"model": self.model_name, "version": self.schema_version})
        return f'{{"{ENVELOPE}":{header.replace(" ", "")},"data":{state_data.model_dump_json()}}}'

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
        """Store ``state_data``, optionally expiring after ``expiration_seconds``.

        Raises ``StateTypeError`` (and writes nothing) when the key holds another model, or
        a newer ``schema_version`` of this one.
        """
        payload = self._dump(state_data)
        self._check_expiry(expiration_seconds)
        result = await self._save(
            keys=[self.key_for(state_key)],
            args=[payload, expiration_seconds or "", self.model_name, self.schema_version],
        )
        if result != 1:
            stored = result.decode() if isinstance(result, bytes) else str(result)
            raise StateTypeError(
                f"save_state({state_key!r}) refused: {self.key_for(state_key)} holds a "
                f"{stored}, not a {self.model_name} v{self.schema_version} (or older); "
                "delete_state() it first if it is stale"
            )

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
        side effects. Raises ``StateTypeError`` when the key holds another model (``fn`` is
        not called) and ``StateConflictError`` after ``max_attempts`` lost races.
        """
        self._check_expiry(expiration_seconds)
        key = self.key_for(state_key)
        for _ in range(max_attempts):
            raw = await self.redis.get(key)
            outcome, value = self._parse(state_key, raw)
            if outcome == "mismatch":
                self.counters["type_mismatch"] += 1
                text = self._mismatch_text(state_key, *value)
                raise StateTypeError(f"update_state refused: {text}")
            current = self._result(state_key, outcome, value, strict=False)
            result = fn(current)
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
