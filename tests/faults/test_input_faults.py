"""Fault scenarios of the input path (issue 17.2, 17.7): worker processes against hostile
entries and a duplicated consumer name. Each is bounded and prints what it measured."""

from __future__ import annotations

import json
import time

import pytest
from redis.asyncio import Redis

from tests.faults.conftest import (
    DEAD,
    STREAM,
    Workers,
    handled_count,
    monitor,
    pending_count,
    send_jobs,
    wait_until,
)

POISON = [
    {"action_type": "faults.job.run", "data": {"i": -1}, "expires_at": "9999-12-31T23:59:59-14:00"},
    {"action_type": "faults.job.run", "data": {"i": -2}, "timestamp": "0001-01-01T00:00:00+14:00"},
]


async def test_overflowing_timestamps_among_traffic_are_buried(
    redis_url: str, workers: Workers
) -> None:
    """Entries whose timestamps overflow are dead-lettered; 300 good actions all flow."""
    redis = monitor(redis_url)
    try:
        for _ in range(2):
            workers.start(redis_url, worker={"block_ms": 100, "claim_idle_ms": 500,
                                             "reclaim_interval_s": 0.2})
        await send_jobs(redis_url, range(150))
        for poison in POISON * 5:
            await redis.xadd(STREAM, {"data": json.dumps(poison)})
        await send_jobs(redis_url, range(150, 300))
        took = await wait_until(lambda: _done(redis, 300, 10), 60, "300 handled, 10 buried")
        assert await pending_count(redis) == 0
        reasons = {f[b"reason"] for _, f in await redis.xrange(DEAD)}
        assert reasons == {b"malformed"}
        print(f"\n300 actions + 10 overflowing timestamps settled in {took:.2f}s")
    finally:
        await redis.aclose()


async def _done(redis: Redis, handled: int, buried: int) -> bool:
    return await handled_count(redis) == handled and await redis.xlen(DEAD) == buried


async def test_second_process_with_the_same_consumer_name_refuses(
    redis_url: str, workers: Workers
) -> None:
    """A second process with a running worker's consumer name refuses to start; no duplicates."""
    redis = monitor(redis_url)
    lease = {"block_ms": 100, "consumer_name": "dup", "consumer_lease_ttl_s": 1.0}
    try:
        workers.start(redis_url, worker=lease)
        started = time.monotonic()
        with pytest.raises(AssertionError, match="is in use by another running worker"):
            workers.start(redis_url, worker=lease)
        refused_after = time.monotonic() - started
        await send_jobs(redis_url, range(200))
        await wait_until(lambda: _handled(redis, 200), 60, "200 handled")
        counts = [int(v) for v in (await redis.hgetall("faults:handled")).values()]
        assert max(counts) == 1
        print(f"\nsecond 'dup' process refused after {refused_after:.2f}s; 200 actions, "
              f"{sum(counts) - len(counts)} duplicates")
    finally:
        await redis.aclose()


async def _handled(redis: Redis, n: int) -> bool:
    return await handled_count(redis) == n
