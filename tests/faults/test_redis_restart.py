"""Fault scenarios 3 and 7: Redis killed and restarted under a running worker and client."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster

from actionbus import BaseRedisClient
from actionbus.embedded import RedisServer
from tests.faults.conftest import Target, Workers, handled_count, job, settings_for, wait_until

QUICK = {"claim_idle_ms": 1000, "reclaim_interval_s": 0.5, "block_ms": 500}


async def _restart_while_busy(target: Target, workers: Workers, keep_data: bool) -> None:
    url, server = target.url, target.server
    workers.start(url, cluster=target.cluster, worker=QUICK)
    client_redis = target.client()
    client = BaseRedisClient("faults-client", client_redis, target.settings())
    await client.send_action_async(job(0))
    check = target.client()
    await wait_until(lambda: _has(check, 1), 10, "the first action handled")
    await wait_until(lambda: _blocked(server), 10, "the worker blocked in XREADGROUP")
    server.kill()
    server.restart(keep_data=keep_data)
    # The client keeps sending through the same objects; its first attempts may fail.
    sent = 0
    deadline = time.monotonic() + 15
    while sent < 50 and time.monotonic() < deadline:
        try:
            await client.send_action_async(job(100 + sent))
            sent += 1
        except Exception:
            await asyncio.sleep(0.1)
    assert sent == 50, "the client could not send after the restart"
    took = await wait_until(lambda: _has_all(check, range(100, 150)), 20,
                            "every action sent after the restart handled")
    where = "the stream's master of 3" if target.cluster else "Redis"
    print(f"[scenario 3] {where} restarted {'with AOF' if keep_data else 'empty'}: 50/50 "
          f"actions sent after it handled {took:.2f} s after the last send, no process "
          "restarted")
    await client.close()
    for conn in (client_redis, check):
        await conn.aclose()


@pytest.mark.backends
@pytest.mark.parametrize("keep_data", [True, False], ids=["aof", "empty"])
async def test_worker_and_client_resume_after_redis_restart(
    target_aof: Target, workers: Workers, keep_data: bool
) -> None:
    """Scenario 3: after Redis (on a cluster: the master of the service's stream) restarts,
    with its AOF or empty, sends and handling resume without restarting a process."""
    await _restart_while_busy(target_aof, workers, keep_data)


async def test_ten_seconds_without_redis_logs_little_and_recovers_fast(
    fresh_redis_server: RedisServer, workers: Workers, tmp_path: Path
) -> None:
    """Scenario 7: 10 s of Redis down logs the outage's start and end in a few lines; the
    worker resumes by itself."""
    url = fresh_redis_server.url
    log = tmp_path / "worker.log"
    workers.start(url, log_file=str(log), worker={**QUICK, "outage_log_every_s": 30})
    fresh_redis_server.kill()
    await asyncio.sleep(10)
    fresh_redis_server.restart(keep_data=False)
    up = time.monotonic()
    redis = Redis.from_url(url)
    client = BaseRedisClient("faults-client", redis, settings_for(url))
    await client.send_action_async(job(7))
    await wait_until(lambda: _has(redis, 1), 10, "the worker to handle an action after recovery")
    resumed = time.monotonic() - up
    await client.close()
    await redis.aclose()
    lines = [line for line in log.read_text().splitlines() if "WARNING" in line or "ERROR" in line]
    assert any("Redis unavailable" in line for line in lines), "\n".join(lines)
    assert any("Redis available again" in line for line in lines), "\n".join(lines)
    assert len(lines) <= 8, "\n".join(lines)
    print(f"[scenario 7] 10 s without Redis: {len(lines)} warning/error log lines; handled "
          f"an action {resumed:.2f} s after Redis came back")


async def _blocked(server: RedisServer) -> bool:
    with server.client() as direct:
        info: Any = direct.info("clients")
    return int(info["blocked_clients"]) >= 1


async def _has(redis: Redis | RedisCluster, n: int) -> bool:
    return await handled_count(redis) >= n


async def _has_all(redis: Redis | RedisCluster, numbers: range) -> bool:
    values = await redis.hmget("faults:handled", [str(i) for i in numbers])
    return all(v is not None for v in values)
