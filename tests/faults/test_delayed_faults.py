"""Delayed actions and retries under kill -9 of workers and a Redis restart with AOF, on a
standalone server and on the 3-master cluster (where the stream's master restarts)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from redis.asyncio import Redis, RedisCluster

from actionbus import BaseRedisClient, DelayedQueue
from actionbus.clients import QueueManager
from tests.faults.conftest import (
    DEAD,
    SERVICE,
    Target,
    Workers,
    handled_count,
    job,
    send_jobs,
    wait_until,
)

pytestmark = pytest.mark.backends

QUICK = {"claim_idle_ms": 500, "reclaim_interval_s": 0.2, "block_ms": 200,
         "retry_backoff_base_s": 0.2, "retry_backoff_max_s": 0.5}


@pytest.mark.parametrize("when", ["before", "after"])
async def test_kill_mid_retry_loses_nothing(
    target: Target, workers: Workers, when: str
) -> None:
    """A worker killed at its first retry (before or after parking it): every action still
    gets handled by the next worker, none dead-lettered."""
    url, cluster = target.url, target.cluster
    check = target.client()
    await send_jobs(url, range(20), cluster=cluster)
    doomed = workers.start(url, cluster=cluster, fail=True, crash_in_retry=when, worker=QUICK)
    doomed.wait(timeout=20)
    assert doomed.returncode == 17
    workers.start(url, cluster=cluster, worker=QUICK)
    took = await wait_until(lambda: _all(check, 20), 30, "all 20 actions handled")
    print(f"\n[kill -9 mid-retry, {when}] 20/20 handled {took:.2f}s after the restart")
    assert await check.xlen(DEAD) == 0
    await check.aclose()


async def test_delayed_actions_survive_kill_of_every_worker_and_redis_restart(
    target_aof: Target, workers: Workers
) -> None:
    """Delayed sends survive kill -9 of all workers and a Redis restart with AOF (on a
    cluster: of the master holding the service's stream and delayed set)."""
    server, url, cluster = target_aof.server, target_aof.url, target_aof.cluster
    first = [workers.start(url, cluster=cluster, worker=QUICK) for _ in range(2)]
    redis = target_aof.client()
    client = BaseRedisClient("faults-client", redis, target_aof.settings())
    for i in range(30):
        await client.send_action_async(job(i), delay=timedelta(seconds=1.5 + i * 0.02))
    await client.close()
    await redis.aclose()
    for proc in first:
        proc.kill()
        proc.wait(timeout=10)
    await asyncio.sleep(1.2)  # the AOF is written; some actions are due by now
    server.kill()
    server.restart(keep_data=True)
    target_aof.wait_ready()
    check = target_aof.client()
    queue = DelayedQueue(check, QueueManager(), SERVICE)
    assert await queue.count() == 30  # nothing moved while no worker ran
    workers.start(url, cluster=cluster, worker=QUICK)
    await wait_until(lambda: _all(check, 30), 30, "all 30 delayed actions handled")
    assert await queue.count() == 0
    await check.aclose()


async def _all(check: Redis | RedisCluster, n: int) -> bool:
    return await handled_count(check) == n
