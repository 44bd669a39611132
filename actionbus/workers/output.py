"""Batched writes of a worker: replies, callbacks, dead letters, markers, then acks.

Handlers finish one by one; their writes are queued here and sent in one pipeline per
round, outputs first and acknowledgements after, so an action is never acknowledged
before what it produced is in Redis. On Redis Cluster the two go in two rounds, because
a cluster pipeline may run its node batches in any order.

The task that queues writes calls ``flush()``: if no round is under way it sends one at
once (no hop through another task, so a reply leaves as soon as it is ready), and keeps
sending while more was queued meanwhile; otherwise the running round picks its writes
up. A background task retries failed rounds with backoff and sweeps up leftovers;
nothing queued is dropped while the worker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from actionbus.backoff import Backoff, OutageLog
from actionbus.connection import AnyRedis

__all__ = ["OutputBatcher"]

logger = logging.getLogger("actionbus.worker")

_SWEEP_SECONDS = 1.0

Command = Callable[[Any], None]
"""Adds one or more commands to a pipeline."""


class OutputBatcher:
    """Queues writes and acknowledgements and flushes them in pipelined rounds."""

    def __init__(
        self, redis: AnyRedis, stream: str, group: str, outage: OutageLog
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self._outage = outage
        self._two_phase = isinstance(redis, RedisCluster)
        self._commands: list[Command] = []
        self._replies: dict[str, list[str]] = {}
        self._reply_ttls: dict[str, int] = {}
        self._acks: list[str] = []
        self._sending_acks: list[str] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._flushing = False
        self.acknowledged = 0
        """How many entries this batcher has acknowledged so far."""

    def start(self) -> None:
        """Start the flushing task."""
        self._closing = False
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"actionbus-output:{self.stream}")

    def _pending_writes(self) -> bool:
        return bool(self._commands or self._replies or self._acks)

    def unacknowledged(self) -> set[str]:
        """Entries whose acknowledgement is queued or being sent."""
        return {*self._acks, *self._sending_acks}

    @property
    def queued(self) -> int:
        """Writes and acknowledgements not yet sent."""
        return len(self._commands) + sum(map(len, self._replies.values())) + len(self._acks)

    def reply(self, queue: str, payload: str, ttl: int) -> None:
        """Push a response onto a caller's list, with a TTL so nothing outlives the caller.

        Replies to one list queued in the same round go in one ``LPUSH`` and one ``EXPIRE``.
        """
        self._replies.setdefault(queue, []).append(payload)
        self._reply_ttls[queue] = max(ttl, self._reply_ttls.get(queue, 0))

    def xadd(self, stream: str, fields: dict[str, Any]) -> None:
        """Append an entry (a callback or a dead letter) to a stream."""
        self._push(lambda pipe: pipe.xadd(stream, fields))

    def ack(self, entry_id: str) -> None:
        """Acknowledge an entry once everything queued before it is written."""
        self._acks.append(entry_id)

    def _push(self, command: Command) -> None:
        self._commands.append(command)

    async def flush(self) -> None:
        """Send what is queued now, unless a round is already under way (it will)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._pending_writes():
                await self._flush_once()
        except (RedisError, OSError) as exc:
            self._outage.failure(exc)
            self._wakeup.set()  # the background task retries with backoff
        finally:
            self._flushing = False

    async def _flush_once(self) -> None:
        commands, replies, ttls, acks = self._commands, self._replies, self._reply_ttls, self._acks
        if not (commands or replies or acks):
            return
        self._commands, self._replies, self._reply_ttls, self._acks = [], {}, {}, []
        self._sending_acks = acks
        try:
            # One server: MULTI/EXEC, so a write Redis refuses (e.g. OOM) aborts the round
            # instead of letting its XACK through without the outputs.
            pipe = self.redis.pipeline(transaction=not self._two_phase)
            for queue, payloads in replies.items():
                pipe.lpush(queue, *payloads)
                pipe.expire(queue, ttls[queue])
            for command in commands:
                command(pipe)
            if self._two_phase and (commands or replies) and acks:
                await pipe.execute()
                commands, replies = [], {}
                pipe = self.redis.pipeline(transaction=False)
            if acks:
                pipe.xack(self.stream, self.group, *acks)
            await pipe.execute()
            self.acknowledged += len(acks)
        except BaseException:
            # Put back what was not confirmed, ahead of anything queued meanwhile.
            self._commands[:0] = commands
            for queue, payloads in replies.items():
                self._replies.setdefault(queue, [])[:0] = payloads
                self._reply_ttls[queue] = max(ttls[queue], self._reply_ttls.get(queue, 0))
            self._acks[:0] = acks
            raise
        finally:
            self._sending_acks = []

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), _SWEEP_SECONDS)
            self._wakeup.clear()
            if self._flushing:
                continue
            self._flushing = True
            try:
                sent = False
                while self._pending_writes():
                    await self._flush_once()
                    sent = True
                if sent:  # only a real round trip says Redis is back
                    self._outage.success()
                    backoff.reset()
            except (RedisError, OSError) as exc:
                self._outage.failure(exc)
                self._wakeup.set()
                await asyncio.sleep(backoff.next_delay())
            finally:
                self._flushing = False
            if self._closing and not self.queued:
                return

    async def close(self, timeout: float) -> None:
        """Flush what is queued (for at most ``timeout`` seconds), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            logger.warning(
                "stopped with %d writes/acks unsent (Redis unavailable); their actions stay "
                "pending and will be delivered again", self.queued,
            )
