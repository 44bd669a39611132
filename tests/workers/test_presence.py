"""Worker presence (workers/presence.py): who is alive, as ``status`` reads it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from actionbus.workers.presence import (
    BUCKET_S,
    handled_key,
    handled_per_second,
    presence_key,
    read_presence,
)
from tests.workers.helpers import QM


async def test_read_presence_tells_alive_from_gone_by_deadline(redis_client: Any) -> None:
    """A consumer whose deadline is ahead is alive, one whose deadline passed is gone."""
    now_ms = int(time.time() * 1000)
    await redis_client.hset(presence_key(QM, "inventory"),
                            mapping={"c-alive": now_ms + 60_000, "c-gone": now_ms - 60_000})
    assert await read_presence(redis_client, QM, "inventory") == {
        "c-alive": True, "c-gone": False}
    assert await read_presence(redis_client, QM, "orders") == {}


async def test_handled_per_second_is_the_last_minute_of_buckets_over_60(
    redis_client: Any,
) -> None:
    """handled_per_second sums the counters of the current and past buckets of the last
    minute and divides by 60 s: 120 now and 60 a bucket ago are 3.0/s; a bucket a minute
    old and one in the future are not counted."""
    bucket = int(time.time()) // BUCKET_S
    await redis_client.set(handled_key(QM, "inventory", bucket), 120)
    await redis_client.set(handled_key(QM, "inventory", bucket - 1), 60)
    await redis_client.set(handled_key(QM, "inventory", bucket - 60 // BUCKET_S - 1), 6000)
    await redis_client.set(handled_key(QM, "inventory", bucket + 3), 6000)
    assert await handled_per_second(redis_client, QM, "inventory") == 3.0


async def test_running_worker_is_present_and_gone_once_stopped(
    bus: Any, eventually: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running worker's heartbeat shows its consumer alive; stopping removes it at once."""
    monkeypatch.setenv("ACTIONBUS_PRESENCE_INTERVAL_S", "0.05")
    worker = bus.worker("inventory", consumer_name="c-1")
    await worker.start()
    await eventually(lambda: _present(bus.redis))
    await worker.stop(grace=0.5)
    assert await read_presence(bus.redis, QM, "inventory") == {}


async def _present(redis: Any) -> bool:
    return await read_presence(redis, QM, "inventory") == {"c-1": True}
