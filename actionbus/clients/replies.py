"""One reply listener per client: every pending pseudo-sync call shares one waiting read.

Workers ``LPUSH`` responses (with a TTL) onto the client's own response list; the
listener pops them in batches and resolves the waiting call by ``correlation_id``.
Replies nobody waits for any more (the caller timed out) are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from actionbus.backoff import Backoff, OutageLog, cancel_and_wait
from actionbus.clients.guard import CLIENT_FAILURES
from actionbus.connection import AnyRedis
from actionbus.exceptions import InvalidReply
from actionbus.models.actions import DomainActionResponse
from actionbus.models.parsing import parse_reply

__all__ = ["ReplyListener"]

logger = logging.getLogger("actionbus.client")

_BLOCK_SECONDS = 1
_DRAIN_COUNT = 500


class ReplyListener:
    """Pops responses from one list and hands each to the call waiting for it."""

    def __init__(self, redis: AnyRedis, queue: str) -> None:
        self.redis = redis
        self.queue = queue
        self._waiting: dict[str, asyncio.Future[DomainActionResponse]] = {}
        self._task: asyncio.Task[None] | None = None
        self._outage = OutageLog(logger, f"reply listener {queue}")
        self.dropped = 0

    @property
    def pending(self) -> int:
        """How many calls are waiting for a reply."""
        return len(self._waiting)

    def expect(self, correlation_id: str) -> asyncio.Future[DomainActionResponse]:
        """Register a waiting call and make sure the listener runs."""
        future: asyncio.Future[DomainActionResponse] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name=f"actionbus-replies:{self.queue}")
        return future

    def forget(self, correlation_id: str) -> None:
        """Stop waiting for ``correlation_id`` (timeout or cancellation)."""
        self._waiting.pop(correlation_id, None)

    def _deliver(self, raw: bytes | str) -> None:
        try:
            response = parse_reply(raw)
        except InvalidReply as exc:
            # The caller it answers gets the error now, instead of waiting out its timeout.
            waiting = self._waiting.pop(exc.correlation_id or "", None)
            if waiting is not None and not waiting.done():
                waiting.set_exception(exc)
            else:
                logger.warning("dropped a malformed reply on %s: %s", self.queue, exc)
            return
        future = self._waiting.pop(response.correlation_id or "", None)
        if future is None or future.done():
            self.dropped += 1
            logger.debug("dropped a late reply %s on %s", response.correlation_id, self.queue)
            return
        future.set_result(response)

    async def _listen(self) -> None:
        backoff = Backoff()
        try:
            while True:
                try:
                    popped: Any = await self.redis.brpop([self.queue], timeout=_BLOCK_SECONDS)
                    self._outage.success()
                    backoff.reset()
                    if popped is None:
                        if not self._waiting:
                            return  # idle for a whole block: stop until the next call
                        continue
                    self._deliver(popped[1])
                    if self._waiting:  # others wait: take what else arrived in one go
                        more: Any = await self.redis.rpop(self.queue, _DRAIN_COUNT)
                        for raw in more or ():
                            self._deliver(raw)
                    else:
                        # A lone caller was answered: let it run before the next read.
                        await asyncio.sleep(0)
                except CLIENT_FAILURES as exc:  # any client failure: logged, backed off
                    self._outage.failure(exc)
                    await asyncio.sleep(backoff.next_delay())
        finally:
            self._task = None

    async def close(self) -> None:
        """Stop listening, fail no one (waiting calls time out by themselves), drop the list."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])
        with contextlib.suppress(*CLIENT_FAILURES):
            await self.redis.delete(self.queue)
