"""Redis at maxmemory (noeviction) with one stuck pending entry: trimming still frees memory."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from actionbus import BaseWorker, CommonAppSettings
from actionbus.embedded import RedisServer
from actionbus.workers import WorkerSettings
from actionbus.workers.failures import is_transient
from actionbus.workers.upkeep import maintain


async def test_one_stuck_entry_does_not_block_trimming_at_maxmemory(
    fresh_redis_server: RedisServer,
) -> None:
    """An entry pending since long before keeps its data, and the processed entries after
    it are deleted, so a server refusing writes with OOM accepts them again."""
    redis: Any = Redis.from_url(fresh_redis_server.url)
    worker = BaseWorker(
        CommonAppSettings(_env_file=None, service_name="oom", redis_url=fresh_redis_server.url),
        redis, worker_settings=WorkerSettings(stream_retention=100, trim_stuck_after_s=0),
    )
    ctx = worker.context
    try:
        await redis.xgroup_create(ctx.stream, ctx.group, id="0", mkstream=True)
        for _ in range(3):
            pipe = redis.pipeline(transaction=False)
            for i in range(1000):
                pipe.xadd(ctx.stream, {"data": f"{i}:" + "x" * 1000})
            await pipe.execute()
        read: Any = await redis.xreadgroup(ctx.group, "c1", {ctx.stream: ">"}, count=3000)
        ids = [entry_id for entry_id, _ in read[0][1]]
        stuck = ids[0]
        await redis.xack(ctx.stream, ctx.group, *ids[1:])  # all done but the first
        used = int((await redis.info("memory"))["used_memory"])
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", used + 200_000)
        refused = None
        for i in range(2000):  # fill up to maxmemory
            try:
                await redis.set(f"filler:{i}", "y" * 10_000)
            except OutOfMemoryError as exc:
                refused = exc
                break
        assert refused is not None
        assert is_transient(refused)  # an outage for the worker's output: retried
        rounds = 0
        pushed = False
        while not pushed and rounds < 5:  # bounded: a few maintenance rounds
            rounds += 1
            await maintain(redis, ctx)
            try:
                await redis.lpush("actionbus:dev:{caller}:responses:x", "z" * 10_000)
                pushed = True
            except OutOfMemoryError:
                pass
        length = await redis.xlen(ctx.stream)
        print(f"writes accepted again after {rounds} maintenance round(s); stream "
              f"{len(ids)} -> {length} entries; stuck entry kept: "
              f"{bool(await redis.xrange(ctx.stream, stuck, stuck))}")
        assert pushed
        assert await redis.xrange(ctx.stream, stuck, stuck)  # the stuck entry, whole
        assert int((await redis.xpending(ctx.stream, ctx.group))["pending"]) == 1
    finally:
        await redis.aclose()
