"""Fault scenarios 1, 2 and 8: workers killed with SIGKILL or stopped with SIGTERM, on a
standalone server and on the 3-master cluster."""

from __future__ import annotations

import os
import signal
import time

import pytest
from redis.asyncio import Redis, RedisCluster

from actionbus.clients import QueueManager
from tests.faults.conftest import (
    SERVICE,
    Target,
    Workers,
    handled_count,
    pending_count,
    send_jobs,
    wait_until,
)

pytestmark = pytest.mark.backends
QM = QueueManager()

FAST_RECLAIM = {"claim_idle_ms": 500, "reclaim_interval_s": 0.2, "block_ms": 200}


@pytest.mark.parametrize("partitions", [1, 3], ids=["p1", "p3"])
async def test_kill_9_mid_batch_loses_nothing(
    target: Target, workers: Workers, partitions: int
) -> None:
    """Scenario 1: a worker killed with SIGKILL mid-batch; its replacement handles the rest
    (with 3 partitions: in every partition)."""
    url, on = target.url, {"cluster": target.cluster, "partitions": partitions}
    redis = target.client()
    first = workers.start(url, **on, sleep=0.005, worker={**FAST_RECLAIM, "concurrency": 16})
    await send_jobs(url, range(1000), **on)
    await wait_until(lambda: _at_least(redis, 200), 30, "200 actions handled")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    done_before = await handled_count(redis)
    assert done_before < 1000, "the kill must land mid-batch"
    workers.start(url, **on, worker=FAST_RECLAIM)
    await wait_until(lambda: _at_least(redis, 1000), 30, "all 1000 actions handled")
    await wait_until(lambda: _pending_is(redis, 0, partitions), 10, "the pending list to empty")
    counts = await redis.hgetall("faults:handled")
    assert sorted(int(k) for k in counts) == list(range(1000))
    assert all(int(v) >= 1 for v in counts.values())
    twice = sum(1 for v in counts.values() if int(v) > 1)
    lengths = [await redis.xlen(s) for s in QM.get_partition_streams(SERVICE, partitions)]
    assert sum(lengths) == 1000, "no action was retried: nothing failed"
    assert all(lengths), lengths  # every partition had its share
    print(f"[scenario 1] {'cluster' if target.cluster else 'standalone'}, {partitions} "
          f"partition(s) {lengths}: killed after {done_before}/1000 handled; all 1000 "
          f"handled, {twice} handled twice (in flight at the kill), 0 pending")
    await redis.aclose()


async def test_sigterm_exits_within_grace_and_leaves_work_for_others(
    target: Target, workers: Workers
) -> None:
    """Scenario 2: SIGTERM with handlers slower than the grace: the worker exits, leaving the
    unfinished actions pending, and the next worker redoes them."""
    url, on = target.url, {"cluster": target.cluster}
    redis = target.client()
    grace = 1.0
    slow = workers.start(url, **on, sleep=5, trace=True,
                         worker={**FAST_RECLAIM, "shutdown_grace_s": grace, "concurrency": 10})
    await send_jobs(url, range(10), **on)
    await wait_until(lambda: _started(redis, 10), 10, "10 handlers running")
    sent = time.monotonic()
    slow.send_signal(signal.SIGTERM)
    slow.wait(grace + 30)  # bounded; how long it took is reported, not asserted
    took = time.monotonic() - sent
    print(f"[scenario 2] SIGTERM with 10 handlers of 5 s, grace {grace} s: exited in "
          f"{took:.2f} s, 10 left pending")
    assert await handled_count(redis) == 0
    assert await pending_count(redis) == 10, "unfinished actions stay pending, unacknowledged"
    workers.start(url, **on, worker=FAST_RECLAIM)
    redone = await wait_until(lambda: _at_least(redis, 10), 15,
                              "the 10 actions handled by the next worker")
    print(f"[scenario 2] the next worker handled all 10 within {redone:.2f} s")
    await wait_until(lambda: _pending_is(redis, 0), 10, "the pending list to empty")
    await redis.aclose()


@pytest.mark.parametrize("partitions", [1, 3], ids=["p1", "p3"])
async def test_idempotent_handler_runs_once_across_a_crash_before_ack(
    target: Target, workers: Workers, partitions: int
) -> None:
    """Scenario 8: a crash between side effect and ack; the redelivery skips the side effect
    (with 3 partitions too)."""
    url, on = target.url, {"cluster": target.cluster, "partitions": partitions}
    redis = target.client()
    crashing = workers.start(url, **on, idempotent=True, crash_before_ack=True, worker=FAST_RECLAIM)
    await send_jobs(url, range(1), **on)
    assert crashing.wait(10) == 17, "the worker must die at its first acknowledgement"
    assert await handled_count(redis) == 1
    assert await pending_count(redis, partitions) == 1
    workers.start(url, **on, idempotent=True, log_file=None, worker=FAST_RECLAIM)
    await wait_until(lambda: _pending_is(redis, 0, partitions), 10,
                     "the redelivered action acknowledged")
    assert await redis.hget("faults:handled", "0") == b"1", "side effect ran twice"
    print("[scenario 8] crashed before ack; redelivered and acknowledged; side effect ran 1 time")
    await redis.aclose()


async def _at_least(redis: Redis | RedisCluster, n: int) -> bool:
    return await handled_count(redis) >= n


async def _pending_is(redis: Redis | RedisCluster, n: int, partitions: int = 1) -> bool:
    return await pending_count(redis, partitions) == n


async def _started(redis: Redis | RedisCluster, n: int) -> bool:
    return int(await redis.llen("faults:trace")) >= n
