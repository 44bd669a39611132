"""Coalescing of concurrent XADDs: one round trip for many senders.

A send with nothing else in flight goes out at once, as a plain ``XADD``. Sends that
arrive while one is in flight are queued and written together, in one pipeline, by a
background task (never by a caller's own task, so a cancelled caller cannot strand the
others). Many concurrent callers then cost a few pipelines instead of one command and
one pooled connection each.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import RedisError

from actionbus.connection import AnyRedis
from actionbus.streams import text

__all__ = ["StreamWriter"]

DATA_FIELD = "data"
_MAX_BATCH = 500


class StreamWriter:
    """Appends ``{"data": payload}`` entries to streams, coalescing concurrent calls."""

    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis
        self._in_flight = False
        self._queue: list[tuple[str, str, asyncio.Future[str]]] = []
        self._task: asyncio.Task[None] | None = None

    async def xadd(self, stream: str, payload: str) -> str:
        """Append one entry; return its id. Raises what redis-py raises."""
        if not self._in_flight and not self._queue:
            self._in_flight = True
            try:
                return text(await self.redis.xadd(stream, {DATA_FIELD: payload}))
            finally:
                self._in_flight = False
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((stream, payload, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="actionbus-xadd-batch")
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:_MAX_BATCH]
                del self._queue[:_MAX_BATCH]
                await self._send(batch)
        finally:
            self._task = None

    async def _send(self, batch: list[tuple[str, str, asyncio.Future[str]]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for stream, payload, _ in batch:
            pipe.xadd(stream, {DATA_FIELD: payload})
        try:
            results: list[Any] = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException as exc:  # cancelled while closing: fail the waiters, re-raise
            for *_, future in batch:
                if not future.done():
                    future.set_exception(RedisError(f"send interrupted: {exc!r}"))
            raise
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(text(result))
