"""Priority lanes across a crash: a worker killed with SIGKILL mid-drain loses nothing."""

from __future__ import annotations

import os
import signal

from redis.asyncio import Redis

from actionbus import DomainAction, QueueManager
from actionbus.embedded import RedisServer
from tests.faults.conftest import SERVICE, Workers, handled_count, wait_until

QM = QueueManager()
LANES = {"high": range(0, 300), "normal": range(1000, 1300), "low": range(2000, 2300)}
SLOW = {5, 1001, 2000}
"""One slow action per lane: certainly in flight when the worker is killed."""
WORKER = {"lanes": True, "claim_idle_ms": 500, "reclaim_interval_s": 0.2, "block_ms": 200}


async def _handled_in(redis: Redis, numbers: range) -> int:
    counts = await redis.hmget("faults:handled", [str(i) for i in numbers])
    return sum(1 for count in counts if count is not None)


async def test_kill_9_mid_drain_loses_nothing_in_any_lane(
    fresh_redis_server: RedisServer, workers: Workers
) -> None:
    """300 actions in each lane (plain XADDs to the lane keys); the lane-reading worker is
    killed with SIGKILL while every lane has entries in flight and entries waiting; its
    replacement handles every action of every lane, and no lane keeps a pending entry."""
    url = fresh_redis_server.url
    redis = Redis.from_url(url)
    slow_ids = {}
    for lane, numbers in LANES.items():
        stream = QM.get_lane_stream(SERVICE, lane)
        for i in numbers:
            data = {"i": i, "sleep": 3} if i in SLOW else {"i": i}
            action = DomainAction(action_type="faults.job.run", data=data)
            entry_id = await redis.xadd(stream, {"data": action.model_dump_json()})
            if i in SLOW:
                slow_ids[stream] = entry_id
    first = workers.start(url, sleep=0.005, worker={**WORKER, "concurrency": 16})

    async def mid_drain() -> bool:  # each lane's slow action is being handled
        for stream, entry_id in slow_ids.items():
            if not await redis.xpending_range(stream, SERVICE, entry_id, entry_id, 1):
                return False
        return True

    await wait_until(mid_drain, 30, "a slow action of every lane in flight")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    left = {lane: len(numbers) - await _handled_in(redis, numbers)
            for lane, numbers in LANES.items()}
    assert all(left.values()), f"the kill must land while every lane has work: {left}"
    in_flight = {lane: (await redis.xpending(QM.get_lane_stream(SERVICE, lane), SERVICE))[
        "pending"] for lane in LANES}
    assert all(in_flight.values()), f"every lane had entries in flight: {in_flight}"
    workers.start(url, worker=WORKER)

    async def all_done() -> bool:
        return await handled_count(redis) == 900

    async def none_pending() -> bool:
        for lane in LANES:
            summary = await redis.xpending(QM.get_lane_stream(SERVICE, lane), SERVICE)
            if summary["pending"]:
                return False
        return True

    await wait_until(all_done, 60, "all 900 actions handled")
    await wait_until(none_pending, 10, "every lane's pending list to empty")
    for numbers in LANES.values():
        assert await _handled_in(redis, numbers) == len(numbers)
    print(f"[lanes crash] killed with {left} left per lane and {in_flight} in flight; "
          "all 900 handled, 0 pending in every lane")
    await redis.aclose()
