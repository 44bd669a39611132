"""Coalescing of concurrent XADDs: one round trip for many senders.

A send with nothing else in flight goes out at once, as a plain ``XADD`` (a batch of
one caller's sends, as its own pipeline). Sends that arrive while one is in flight are
queued and written together by a background task (never by a caller's own task, so a
cancelled caller cannot strand the others). Many concurrent callers then cost a few
pipelines instead of one command and one pooled connection each.

On Redis Cluster the queued sends are grouped by the node that owns each stream and
written as parallel single commands (see ``_send_each``): a dead master fails only the
sends meant for it.
A queued send whose caller stopped waiting (cancelled, deadline passed) before the
background task took it is dropped, not written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from actionbus.clients.guard import CLIENT_FAILURES
from actionbus.connection import AnyRedis
from actionbus.streams import text

__all__ = ["DATA_FIELD", "Payload", "StreamWriter"]

DATA_FIELD = "data"
_MAX_BATCH = 500

Payload = str | bytes
"""An entry's ``data`` field: the action's JSON."""
_Item = tuple[str, Payload, "asyncio.Future[str]"]


class StreamWriter:
    """Appends ``{"data": payload}`` entries to streams, coalescing concurrent calls."""

    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis
        self._in_flight = False
        self._queue: list[_Item] = []
        self._task: asyncio.Task[None] | None = None

    async def xadd(self, stream: str, payload: Payload) -> str:
        """Append one entry; return its id. Raises what redis-py raises."""
        if not self._in_flight and not self._queue:
            self._in_flight = True
            try:
                return text(await self.redis.xadd(stream, {DATA_FIELD: payload}))
            finally:
                self._in_flight = False
        return await self._enqueue([(stream, payload)])[0]

    async def xadd_many(
        self, items: Sequence[tuple[str, Payload]]
    ) -> list[str | BaseException]:
        """Append many entries; return each one's id or the exception that failed it."""
        if not self._in_flight and not self._queue and not isinstance(self.redis, RedisCluster):
            self._in_flight = True
            try:
                results: list[str | BaseException] = []
                for start in range(0, len(items), _MAX_BATCH):
                    results += await self._pipeline(items[start:start + _MAX_BATCH])
                return results
            finally:
                self._in_flight = False
        futures = self._enqueue(items)
        return list(await asyncio.gather(*futures, return_exceptions=True))

    async def _pipeline(
        self, items: Sequence[tuple[str, Payload]]
    ) -> list[str | BaseException]:
        """One pipelined round of ``XADD``s (standalone server) from the caller's task."""
        pipe = self.redis.pipeline(transaction=False)
        for stream, payload in items:
            pipe.xadd(stream, {DATA_FIELD: payload})
        try:
            results: list[Any] = await pipe.execute(raise_on_error=False)
        except CLIENT_FAILURES as exc:
            return [exc] * len(items)
        return [r if isinstance(r, BaseException) else text(r) for r in results]

    def _enqueue(self, items: Sequence[tuple[str, Payload]]) -> list[asyncio.Future[str]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[str]] = []
        for stream, payload in items:
            future: asyncio.Future[str] = loop.create_future()
            self._queue.append((stream, payload, future))
            futures.append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="actionbus-xadd-batch")
        return futures

    def _group(self, stream: str) -> str:
        """The node (cluster) that owns ``stream``; one group for a standalone server."""
        if not isinstance(self.redis, RedisCluster):
            return ""
        with contextlib.suppress(*CLIENT_FAILURES):
            node = self.redis.get_node_from_key(stream)
            if node is not None:
                return str(node.name)
        return f"slot:{self.redis.keyslot(stream)}"  # topology unknown yet: one per slot

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = [item for item in self._queue[:_MAX_BATCH] if not item[2].done()]
                del self._queue[:_MAX_BATCH]
                groups: dict[str, list[_Item]] = {}
                for item in batch:
                    groups.setdefault(self._group(item[0]), []).append(item)
                await asyncio.gather(*(self._send(group) for group in groups.values()))
        finally:
            self._task = None

    async def _send(self, batch: list[_Item]) -> None:
        if isinstance(self.redis, RedisCluster):
            await self._send_each(batch)
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream, payload, _ in batch:
            pipe.xadd(stream, {DATA_FIELD: payload})
        try:
            results: list[Any] = await pipe.execute(raise_on_error=False)
        except CLIENT_FAILURES as exc:
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

    async def _send_each(self, batch: list[_Item]) -> None:
        """Cluster: one ``XADD`` command per entry; streams in parallel, each stream's
        entries one after another, so they land in the order they were given (an error
        fails that stream's later entries too: they would meet the same key and node).

        redis-py's cluster pipeline answers a connection error on any node by closing the
        connections of every node, breaking pipelines in flight to healthy masters; a
        plain command only resets its own node's connections, so a dead master fails only
        the sends meant for it.
        """
        streams: dict[str, list[_Item]] = {}
        for item in batch:
            streams.setdefault(item[0], []).append(item)

        async def in_order(items: list[_Item]) -> None:
            for n, (stream, payload, future) in enumerate(items):
                try:
                    entry_id = await self.redis.xadd(stream, {DATA_FIELD: payload})
                except CLIENT_FAILURES as exc:  # the stream's key or node: fails the rest too
                    for *_, later in items[n:]:
                        if not later.done():
                            later.set_exception(exc)
                    return
                if not future.done():
                    future.set_result(text(entry_id))

        await asyncio.gather(*(in_order(items) for items in streams.values()))
