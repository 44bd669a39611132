"""The dead-letter stream of a service: list, count, replay and delete dead letters.

A dead letter keeps the original entry plus why it died: ``data`` untouched, every other
field of the entry as ``field.<name>``; of an oversize entry only the first
``dead_letter_body_bytes`` of ``data`` with its length and SHA-256. Workers trim
dead-letter streams by length and age (``trim_dead_letters``).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from actionbus.clients.guard import redis_call
from actionbus.clients.queue_manager import QueueManager
from actionbus.connection import AnyRedis
from actionbus.exceptions import DeadLetterError
from actionbus.models.actions import format_timestamp, utc_now
from actionbus.streams import text

__all__ = ["DeadLetter", "DeadLetterQueue", "dead_letter_fields", "trim_dead_letters"]

FIELD_PREFIX = "field."
"""Other fields of the original entry are kept as ``field.<name>``."""

_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


class DeadLetter(BaseModel):
    """One entry of a dead-letter stream."""

    entry_id: str
    data: str
    reason: str
    error_type: str
    error_message: str
    deliveries: int
    original_id: str
    stream: str
    consumer: str
    failed_at: datetime
    fields: dict[str, str] = {}
    """The original entry's fields other than ``data`` (``field.<name>`` on the wire)."""
    data_missing: bool = False
    """The original entry had no ``data`` field (``data`` is then ``""``)."""
    truncated: bool = False
    """Oversize: ``data`` holds only the first bytes; see ``data_length``/``data_sha256``."""
    data_length: int | None = None
    data_sha256: str | None = None


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return str(value).encode("utf-8", "replace")


def dead_letter_fields(
    *,
    data: bytes | str | None,
    reason: str,
    error_type: str,
    error_message: str,
    deliveries: int,
    original_id: str,
    stream: str,
    consumer: str,
    entry: Mapping[Any, Any] | None = None,
    max_body: int | None = None,
) -> dict[str, bytes | str]:
    """The fields written to the dead-letter stream for one failed entry.

    ``entry``: the original entry's fields; those other than ``data`` are kept as
    ``field.<name>``. ``max_body``: keep only this many bytes of ``data`` (oversize
    entries), adding ``truncated``, ``data_length`` and ``data_sha256``; other fields
    are then left out. Never raises for odd values (it runs on the failure path).
    """
    out: dict[Any, bytes | str] = {}
    body: bytes | str = "" if data is None else data
    if data is None:
        out["data_missing"] = "true"
    if max_body is not None:
        whole = _as_bytes(body)
        body = whole[:max_body]
        out.update(truncated="true", data_length=str(len(whole)),
                   data_sha256=hashlib.sha256(whole).hexdigest())
    elif entry:
        for name, value in entry.items():
            key = _as_bytes(name)
            if key != b"data":
                out[FIELD_PREFIX.encode() + key] = value if isinstance(value, bytes | str) \
                    else str(value)
    return {
        "data": body,
        "reason": str(reason),
        "error_type": str(error_type)[:200],
        "error_message": str(error_message)[:2000],
        "deliveries": str(deliveries),
        "original_id": str(original_id),
        "stream": str(stream),
        "consumer": str(consumer),
        "failed_at": format_timestamp(utc_now()),
        **out,
    }


async def trim_dead_letters(
    redis: AnyRedis, stream: str, max_len: int | None, max_age_s: float | None
) -> int:
    """Trim a dead-letter stream to ``max_len`` entries and drop those older than
    ``max_age_s`` (by entry id, this process's clock); return how many were dropped."""
    dropped = 0
    if max_age_s is not None:
        now_ms = int(time.time() * 1000)
        min_id = max(0, now_ms - int(max_age_s * 1000))
        dropped += int(await redis.xtrim(stream, minid=f"{min_id}-0", approximate=False))
    if max_len is not None:
        dropped += int(await redis.xtrim(stream, maxlen=max_len, approximate=False))
    return dropped


def _text(value: bytes | str) -> str:
    """Decode a value that may not be UTF-8 (bytes kept as surrogate escapes)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _parse(entry_id: bytes | str, fields: Mapping[bytes | str, bytes | str]) -> DeadLetter:
    values = {_text(k): _text(v) for k, v in fields.items()}
    length = values.get("data_length", "")
    return DeadLetter(
        entry_id=text(entry_id),
        data=values.get("data", ""),
        reason=values.get("reason", "unknown"),
        error_type=values.get("error_type", ""),
        error_message=values.get("error_message", ""),
        deliveries=int(values.get("deliveries", "0") or 0),
        original_id=values.get("original_id", ""),
        stream=values.get("stream", ""),
        consumer=values.get("consumer", ""),
        failed_at=values.get("failed_at") or utc_now(),
        fields={k[len(FIELD_PREFIX):]: v for k, v in values.items()
                if k.startswith(FIELD_PREFIX)},
        data_missing=values.get("data_missing") == "true",
        truncated=values.get("truncated") == "true",
        data_length=int(length) if length.isdigit() else None,
        data_sha256=values.get("data_sha256"),
    )


_MOVE_BACK = """
-- KEYS: the dead stream, the main stream, the lanes descriptor, the lane streams.
-- ARGV[1]: the letter's id. Atomically: the letter's original entry is appended again and
-- the letter deleted; false when the letter is gone (so it is never sent twice, nor after
-- its deletion). An error (e.g. the target is not a stream) comes before any write.
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #rows == 0 then return false end
local stored = rows[1][2]
local entry, data, missing, stream = {}, '', false, nil
for i = 1, #stored, 2 do
  local name, value = stored[i], stored[i + 1]
  if string.sub(name, 1, 6) == 'field.' then  -- the original's other fields, byte for byte
    entry[#entry + 1] = string.sub(name, 7)
    entry[#entry + 1] = value
  elseif name == 'data' then data = value
  elseif name == 'data_missing' then missing = value == 'true'
  elseif name == 'stream' then stream = value
  end
end
if not missing then
  entry[#entry + 1] = 'data'
  entry[#entry + 1] = data
end
local target = KEYS[2]  -- a lane's letter goes back to its lane while workers read lanes
for i = 4, #KEYS do
  if stream == KEYS[i] and redis.call('EXISTS', KEYS[3]) == 1 then target = KEYS[i] end
end
local new_id = redis.call('XADD', target, '*', unpack(entry))
redis.call('XDEL', KEYS[1], ARGV[1])
return new_id
"""

_guarded = redis_call(DeadLetterError, "dead letters of service {self.service!r}")


class DeadLetterQueue:
    """Inspect and replay one service's dead letters."""

    def __init__(self, redis: AnyRedis, queue_manager: QueueManager, service: str) -> None:
        self.redis = redis
        self.service = service
        self.stream = queue_manager.get_dead_letter_stream(service)
        self.action_stream = queue_manager.get_service_action_stream(service)
        lanes = sorted(set(queue_manager.get_lane_streams(service)) - {self.action_stream})
        # All of a service's keys share its hash tag: one slot, so one script on a cluster too.
        self._move_keys = [self.stream, self.action_stream,
                           queue_manager.get_lanes_key(service), *lanes]
        self._move = redis.register_script(_MOVE_BACK)  # EVALSHA, loaded on demand

    @_guarded
    async def count(self) -> int:
        """How many dead letters there are."""
        return int(await self.redis.xlen(self.stream))

    @_guarded
    async def list(self, count: int = 100, start: str = "-") -> list[DeadLetter]:
        """Up to ``count`` dead letters, oldest first, from entry id ``start``."""
        if count <= 0:
            raise ValueError(f"count must be positive, got {count}")
        entries: Any = await self.redis.xrange(self.stream, min=start, max="+", count=count)
        return [_parse(entry_id, fields) for entry_id, fields in entries]

    @staticmethod
    def _check_id(entry_id: str) -> str:
        if not isinstance(entry_id, str) or not _ENTRY_ID.fullmatch(entry_id):
            raise DeadLetterError(
                f"{entry_id!r} is not a stream entry id (expected '<milliseconds>-<sequence>', "
                "as shown by list())"
            )
        return entry_id

    @_guarded
    async def get(self, entry_id: str) -> DeadLetter:
        """One dead letter by id; ``DeadLetterError`` if there is none."""
        self._check_id(entry_id)
        entries: Any = await self.redis.xrange(self.stream, min=entry_id, max=entry_id, count=1)
        if not entries:
            raise DeadLetterError(f"no dead letter {entry_id!r} in {self.stream}")
        return _parse(*entries[0])

    @_guarded
    async def replay(self, entry_id: str) -> str:
        """Move one dead letter back to the action stream; return its new entry id.

        A dead letter of a priority lane goes back to its lane while the service's workers
        read lanes (the lanes descriptor exists), else to the main stream, which every
        worker reads. Appending the action and deleting the letter are one atomic script: a
        letter is sent back at most once, never after its deletion, and a refused append
        deletes nothing. ``DeadLetterError`` if there is no such letter (also when a
        concurrent ``replay`` or ``delete`` took it between the read and the move).
        """
        new_id = await self._move_back(await self.get(entry_id))
        if new_id is None:
            raise DeadLetterError(f"no dead letter {entry_id!r} in {self.stream} (replayed or "
                                  "deleted meanwhile)")
        return new_id

    async def _move_back(self, letter: DeadLetter) -> str | None:
        """Append the original entry again (byte for byte) and delete the letter, in one
        script; ``None`` if the letter is gone (replayed or deleted since it was read)."""
        if letter.truncated:
            raise DeadLetterError(
                f"dead letter {letter.entry_id!r} kept only the first bytes of an oversize "
                f"entry ({letter.data_length} bytes, sha256 {letter.data_sha256}): it cannot "
                "be replayed; delete it or re-send the original"
            )
        new_id = await self._move(keys=self._move_keys, args=[letter.entry_id])
        if new_id is None:  # gone: replayed or deleted by another call meanwhile
            return None
        return text(new_id)

    @_guarded
    async def replay_all(self, batch: int = 100) -> int:
        """Replay the dead letters there were when the call started, oldest first, once each.

        A replayed action that fails again is buried again with a newer id, which this call
        does not replay (``replay_all()`` always ends). A letter replayed or deleted by another
        call meanwhile is skipped. Returns how many this call replayed.
        """
        if batch <= 0:
            raise ValueError(f"batch must be positive, got {batch}")
        newest: Any = await self.redis.xrevrange(self.stream, max="+", min="-", count=1)
        if not newest:
            return 0
        last = text(newest[0][0])
        replayed = 0
        start = "-"
        while True:
            entries: Any = await self.redis.xrange(self.stream, min=start, max=last, count=batch)
            if not entries:
                return replayed
            for entry_id, fields in entries:
                letter = _parse(entry_id, fields)
                if letter.truncated:  # an oversize body cannot be replayed: left in place
                    continue
                if await self._move_back(letter) is not None:  # else replayed/deleted meanwhile
                    replayed += 1
            start = "(" + text(entries[-1][0])

    @_guarded
    async def delete(self, entry_id: str) -> bool:
        """Delete one dead letter for good; ``True`` if it existed."""
        self._check_id(entry_id)
        return bool(await self.redis.xdel(self.stream, entry_id))
