"""Worker presence: a liveness heartbeat and a per-service throughput counter in Redis.

Every ``interval`` seconds a running worker writes, under its service's hash tag:

- ``…:{service}:consumers:main`` — a hash, consumer name -> the epoch ms until which it
  counts as alive (now + 3 intervals); a field whose deadline passed is a gone consumer,
  pruned ``consumer_gone_after_s`` later (the key expires that long after the last beat);
- ``…:{service}:handled:<epoch // 10>`` — a counter of actions handled in that 10-second
  bucket (INCRBY of what was handled since the last beat), expiring after two minutes.

A stopping worker removes its field, so it shows as gone at once; a killed one shows as
gone when its deadline passes. ``read_presence`` and ``handled_per_second`` are what the
``status`` command and the dashboard read. The interval is
``ACTIONBUS_PRESENCE_INTERVAL_S`` (default 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from redis.exceptions import RedisError

from actionbus.clients.queue_manager import QueueManager
from actionbus.connection import AnyRedis
from actionbus.streams import text
from actionbus.workers.context import WorkerContext
from actionbus.workers.stats import WorkerStats

__all__ = [
    "BUCKET_S", "handled_key", "handled_per_second", "presence_key", "read_presence", "run",
]

logger = logging.getLogger("actionbus.worker")

BUCKET_S = 10
"""Width of one throughput bucket, in seconds."""
_BUCKET_TTL_S = 120
_LEAVE_TIMEOUT_S = 1.0
"""How long a stopping worker tries to remove its field (Redis may not answer)."""


def interval_s() -> float:
    """Seconds between two heartbeats (``ACTIONBUS_PRESENCE_INTERVAL_S``, default 2)."""
    try:
        return max(0.05, float(os.environ.get("ACTIONBUS_PRESENCE_INTERVAL_S", "2")))
    except ValueError:
        return 2.0


def presence_key(queues: QueueManager, service: str) -> str:
    """The hash of a service's live consumers: ``…:{service}:consumers:main``."""
    return f"{queues.prefix}:{queues.environment}:{queues.service_tag(service)}:consumers:main"


def handled_key(queues: QueueManager, service: str, bucket: int) -> str:
    """The counter of actions ``service`` handled in 10-second ``bucket``."""
    tag = queues.service_tag(service)
    return f"{queues.prefix}:{queues.environment}:{tag}:handled:{bucket}"


async def _prune(redis: AnyRedis, ctx: WorkerContext) -> None:
    key = presence_key(ctx.queues, ctx.service)
    raw: Any = await redis.hgetall(key)
    cutoff = int((time.time() - ctx.settings.consumer_gone_after_s) * 1000)
    stale = [name for name, until in raw.items() if int(text(until)) < cutoff]
    if stale:
        await redis.hdel(key, *stale)


async def _beat(redis: AnyRedis, ctx: WorkerContext, handled: int, interval: float) -> None:
    now = time.time()
    key = presence_key(ctx.queues, ctx.service)
    pipe: Any = redis.pipeline(transaction=False)
    pipe.hset(key, ctx.consumer, str(int(now * 1000) + int(interval * 3000)))
    pipe.expire(key, int(ctx.settings.consumer_gone_after_s) + 60)
    if handled:
        bucket = handled_key(ctx.queues, ctx.service, int(now) // BUCKET_S)
        pipe.incrby(bucket, handled)
        pipe.expire(bucket, _BUCKET_TTL_S)
    await pipe.execute()


async def run(ctx: WorkerContext, redis: AnyRedis, stats: WorkerStats) -> None:
    """Beat until cancelled, then remove this consumer's field (it shows as gone at once)."""
    interval = interval_s()
    counted = beats = 0
    try:
        while True:
            handled = stats.handled
            try:
                await _beat(redis, ctx, handled - counted, interval)
                counted = handled
                beats += 1
                if beats % 100 == 1:
                    await _prune(redis, ctx)
            except (RedisError, OSError) as exc:
                logger.debug("presence of %s/%s not written: %s", ctx.service, ctx.consumer, exc)
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(
                redis.hdel(presence_key(ctx.queues, ctx.service), ctx.consumer), _LEAVE_TIMEOUT_S
            )


async def read_presence(redis: AnyRedis, queues: QueueManager, service: str) -> dict[str, bool]:
    """Consumer name -> alive, for every consumer that wrote a heartbeat still stored."""
    raw: Any = await redis.hgetall(presence_key(queues, service))
    now_ms = int(time.time() * 1000)
    return {text(name): int(text(until)) >= now_ms for name, until in raw.items()}


async def handled_per_second(redis: AnyRedis, queues: QueueManager, service: str) -> float:
    """Actions ``service``'s workers handled per second over the last minute."""
    now_bucket = int(time.time()) // BUCKET_S
    keys = [handled_key(queues, service, now_bucket - i) for i in range(60 // BUCKET_S)]
    values: Any = await redis.mget(keys)
    return sum(int(v) for v in values if v is not None) / 60.0
