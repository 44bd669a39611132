"""Ordering keys under faults: 100 keys x 100 actions through 3 worker processes with
random handler failures and a kill -9 of a lease holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from actionbus import BaseRedisClient, CommonAppSettings, DomainAction
from actionbus.embedded import RedisServer
from tests.faults.conftest import wait_until

PROC = Path(__file__).with_name("ordered_proc.py")
KEYS, PER_KEY, PARTITIONS = 100, 100, 3


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes of the test, killed and reaped at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def start(procs: list[subprocess.Popen[str]], url: str, logs: Path) -> subprocess.Popen[str]:
    """Start one ordered worker process and wait for READY."""
    config: dict[str, Any] = {
        "url": url, "partitions": PARTITIONS, "fail_rate": 0.03,
        "worker": {"ordering_lease_ttl_s": 1.5, "max_deliveries": 50, "block_ms": 200,
                   "retry_backoff_base_s": 0.01, "retry_backoff_max_s": 0.05,
                   "concurrency": 64},
    }
    with (logs / f"ordered-{len(procs)}.stderr").open("w") as err:
        proc = subprocess.Popen([sys.executable, str(PROC), json.dumps(config)],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


async def test_every_keys_actions_run_in_send_order_through_a_kill_9(
    fresh_redis_server: RedisServer, procs: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """100 keys x 100 actions, 3 worker processes, 3% of attempts failing, and the busiest
    lease holder killed with SIGKILL a third of the way: every key's actions are handled in
    send order (a re-run of the action in hand at the kill may repeat it, right after
    itself), none is lost, none is dead-lettered."""
    url = fresh_redis_server.url
    redis = Redis.from_url(url)
    workers = [start(procs, url, tmp_path) for _ in range(3)]
    settings = CommonAppSettings(_env_file=None, service_name="sender", redis_url=url,
                                 partitions={"okeys": PARTITIONS})
    client = BaseRedisClient("sender", redis, settings)
    began = time.monotonic()
    for n in range(PER_KEY):
        await client.send_actions_async([
            DomainAction(action_type="okeys.item.step", ordering_key=f"key-{k}",
                         data={"key": f"key-{k}", "n": n}) for k in range(KEYS)])
    total = KEYS * PER_KEY

    async def handled() -> int:
        pipe = redis.pipeline(transaction=False)
        for k in range(KEYS):
            pipe.llen(f"okeys:log:key-{k}")
        return sum(await pipe.execute())

    async def at_least(count: int) -> bool:
        return await handled() >= count

    await wait_until(lambda: at_least(total // 3), 120, "a third handled")
    by_pid = {int(p): int(c) for p, c in (await redis.hgetall("okeys:by_pid")).items()}
    victim = max(workers, key=lambda p: by_pid.get(p.pid, 0))
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(5)
    at_kill = await handled()

    async def all_in_order() -> bool:
        for k in range(KEYS):
            log = await redis.lrange(f"okeys:log:key-{k}", 0, -1)
            if _squeeze([int(x) for x in log]) != list(range(PER_KEY)):
                return False
        return True

    await wait_until(all_in_order, 180, "every key's actions in order")
    repeats = await handled() - total
    dead = await redis.xlen("actionbus:dev:{okeys}:streams:dead")
    print(f"[ordering] {total} actions over {KEYS} keys, {PARTITIONS} partitions, 3 workers: "
          f"killed pid {victim.pid} after {at_kill} handled; all in order after "
          f"{time.monotonic() - began:.1f}s; {repeats} re-run(s) of the action in hand; "
          f"{dead} dead letters; handled per pid {by_pid}")
    assert dead == 0
    assert repeats <= KEYS  # at most the one action per key in hand at the kill
    await client.close()
    await redis.aclose()


def _squeeze(log: list[int]) -> list[int]:
    """``log`` without immediate repeats (a re-run right after itself)."""
    return [n for i, n in enumerate(log) if i == 0 or log[i - 1] != n]
