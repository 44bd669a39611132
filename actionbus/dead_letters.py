"""The dead-letter stream of a service: list, count, replay and delete dead letters.

A dead letter keeps the original ``data`` untouched plus why it died. Dead-letter
streams are never trimmed by actionbus.
"""

from __future__ import annotations

import re
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

__all__ = ["DeadLetter", "DeadLetterQueue", "dead_letter_fields"]

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


def dead_letter_fields(
    *,
    data: bytes | str,
    reason: str,
    error_type: str,
    error_message: str,
    deliveries: int,
    original_id: str,
    stream: str,
    consumer: str,
) -> dict[str, bytes | str]:
    """The fields written to the dead-letter stream for one failed entry."""
    return {
        "data": data,
        "reason": reason,
        "error_type": error_type,
        "error_message": error_message[:2000],
        "deliveries": str(deliveries),
        "original_id": original_id,
        "stream": stream,
        "consumer": consumer,
        "failed_at": format_timestamp(utc_now()),
    }


def _parse(entry_id: bytes | str, fields: Mapping[bytes | str, bytes | str]) -> DeadLetter:
    values = {text(k): text(v) for k, v in fields.items()}
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
    )


_guarded = redis_call(DeadLetterError, "dead letters of service {self.service!r}")


class DeadLetterQueue:
    """Inspect and replay one service's dead letters."""

    def __init__(self, redis: AnyRedis, queue_manager: QueueManager, service: str) -> None:
        self.redis = redis
        self.service = service
        self.stream = queue_manager.get_dead_letter_stream(service)
        self.action_stream = queue_manager.get_service_action_stream(service)

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

        The action is appended first and the dead letter deleted after, so a crash in
        between leaves a duplicate, never a loss.
        """
        return await self._move_back(await self.get(entry_id))

    async def _move_back(self, letter: DeadLetter) -> str:
        new_id = await self.redis.xadd(self.action_stream, {"data": letter.data})
        await self.redis.xdel(self.stream, letter.entry_id)
        return text(new_id)

    @_guarded
    async def replay_all(self, batch: int = 100) -> int:
        """Replay the dead letters there were when the call started, oldest first, once each.

        A replayed action that fails again is buried again with a newer id, which this call
        does not replay (``replay_all()`` always ends). Returns how many were replayed.
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
                await self._move_back(_parse(entry_id, fields))
                replayed += 1
            start = "(" + text(entries[-1][0])

    @_guarded
    async def delete(self, entry_id: str) -> bool:
        """Delete one dead letter for good; ``True`` if it existed."""
        self._check_id(entry_id)
        return bool(await self.redis.xdel(self.stream, entry_id))
