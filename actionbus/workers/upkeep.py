"""A worker's background upkeep: heartbeats, trimming by volume and periodic maintenance."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError, ResponseError

from actionbus.backoff import OutageLog
from actionbus.connection import AnyRedis
from actionbus.workers.context import WorkerContext
from actionbus.workers.failures import is_transient
from actionbus.workers.maintenance import remove_gone_consumers, safe_trim, trim_around_pending
from actionbus.workers.reclaim import heartbeat

__all__ = ["Upkeep", "maintain", "trim"]

logger = logging.getLogger("actionbus.worker")


async def maintain(redis: AnyRedis, ctx: WorkerContext) -> None:
    """Trim fully processed entries beyond the retention and remove gone consumers
    (in every lane when the worker reads lanes)."""
    settings = ctx.settings
    if settings.stream_retention is not None:
        removed = await trim(redis, ctx)
        if removed:
            logger.debug("trimmed %d processed entries from %s", removed, ctx.stream)
    for stream in ctx.lanes or (ctx.stream,):
        await remove_gone_consumers(
            redis, stream, ctx.group, ctx.consumer, int(settings.consumer_gone_after_s * 1000),
        )


async def trim(redis: AnyRedis, ctx: WorkerContext) -> int:
    """``safe_trim``, then, if old pending entries block it, ``trim_around_pending``;
    each lane is trimmed to the same retention."""
    settings = ctx.settings
    if settings.stream_retention is None:
        return 0
    removed = 0
    for stream in ctx.lanes or (ctx.stream,):
        removed += await safe_trim(redis, stream, settings.stream_retention)
        if settings.trim_stuck_after_s is not None:
            try:
                removed += await trim_around_pending(
                    redis, stream, settings.stream_retention,
                    stuck_after_ms=int(settings.trim_stuck_after_s * 1000),
                )
            except ResponseError as exc:  # e.g. no +xrange +xdel in the ACL: trim as before
                if is_transient(exc):
                    raise
                logger.info("trimming past stuck entries of %s skipped: %s", stream, exc)
    return removed


async def announce_lanes(redis: AnyRedis, ctx: WorkerContext) -> None:
    """Keep the lanes descriptor alive: senders route by priority only while it exists."""
    if ctx.lanes:
        await redis.set(ctx.queues.get_lanes_key(ctx.service), ",".join(LANES_READ),
                        ex=ctx.settings.lanes_ttl_s)


LANES_READ = ("high", "normal", "low")


class Upkeep:
    """Keeps long-running entries ours, trims as acknowledgements pile up, maintains."""

    def __init__(
        self,
        ctx: WorkerContext,
        redis: AnyRedis,
        *,
        in_progress: Callable[[float], list[str]],
        acknowledged: Callable[[], int],
        maintain: Callable[[], Awaitable[None]],
        outage: OutageLog,
    ) -> None:
        self.ctx = ctx
        self.redis = redis
        self.in_progress = in_progress
        self.acknowledged = acknowledged
        self.maintain = maintain
        self.outage = outage
        self.trim_task: asyncio.Task[None] | None = None
        retention = ctx.settings.stream_retention
        # Trim by volume as well as by time, so a fast stream stays near its retention.
        self._trim_every = max(100, retention // 10) if retention else 0
        self._acked_at_trim = 0

    def maybe_trim(self) -> None:
        """Start a trim in the background after every ``retention / 10`` acknowledgements."""
        acked = self.acknowledged()
        if (
            not self._trim_every
            or self.trim_task is not None
            or acked - self._acked_at_trim < self._trim_every
        ):
            return
        self._acked_at_trim = acked
        self.trim_task = asyncio.create_task(self._trim(), name=f"actionbus-trim:{self.ctx.stream}")

    async def _trim(self) -> None:
        try:
            await trim(self.redis, self.ctx)
        except (RedisError, OSError) as exc:
            logger.debug("trimming %s skipped: %s", self.ctx.stream, exc)
        finally:
            self.trim_task = None

    async def run(self) -> None:
        """Heartbeats for long-running actions, then trimming and consumer cleanup."""
        settings, ctx = self.ctx.settings, self.ctx
        beat = settings.claim_idle_ms / 3000
        if ctx.lanes:  # the lanes descriptor is refreshed well within its TTL
            beat = min(beat, settings.lanes_ttl_s / 3)
        next_maintenance = time.monotonic() + settings.maintenance_interval_s
        while True:
            await asyncio.sleep(min(beat, settings.maintenance_interval_s))
            try:
                by_stream: dict[str, list[str]] = {}
                for key in self.in_progress(beat):
                    stream, entry_id = ctx.split(key)
                    by_stream.setdefault(stream, []).append(entry_id)
                for stream in by_stream or (ctx.stream,):
                    await heartbeat(
                        self.redis, stream, ctx.group, ctx.consumer, by_stream.get(stream, [])
                    )
                await announce_lanes(self.redis, ctx)
                if time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + settings.maintenance_interval_s
                    await self.maintain()
            except ResponseError as exc:  # e.g. the stream is gone after a restart
                logger.debug("upkeep of %s skipped: %s", ctx.stream, exc)
            except (RedisError, OSError) as exc:
                self.outage.failure(exc)
