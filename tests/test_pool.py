"""WaitingConnectionPool: free connections at once, waiting when exhausted, bounded writes."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actionbus.embedded import RedisServer
from actionbus.pool import WaitingConnectionPool


async def test_commands_wait_for_a_connection_when_all_are_busy(redis_url: str) -> None:
    """With max_connections=2, 20 concurrent blocking commands all complete by waiting."""
    client = Redis.from_pool(WaitingConnectionPool.from_url(redis_url, max_connections=2,
                                                            timeout=5))
    results = await asyncio.gather(*(client.blpop([f"none:{i}"], timeout=0.05)
                                     for i in range(20)))
    assert results == [None] * 20
    assert len(client.connection_pool._in_use_connections) == 0
    await client.aclose()


async def test_waiting_longer_than_the_pool_timeout_fails_clearly(redis_url: str) -> None:
    """A command that cannot get a connection within `timeout` raises ConnectionError."""
    client = Redis.from_pool(WaitingConnectionPool.from_url(redis_url, max_connections=1,
                                                            timeout=0.1))
    holder = asyncio.create_task(client.blpop(["nothing"], timeout=1))
    await asyncio.sleep(0.05)
    with pytest.raises(RedisConnError, match="No connection available"):
        await client.ping()
    await holder
    await client.aclose()


async def test_a_write_to_a_server_that_stopped_reading_times_out(
    fresh_redis_server: RedisServer,
) -> None:
    """With socket_timeout set, a command to a server that reads nothing times out.

    redis-py 8 blocks in the write (its buffer stays full); redis-py 5 buffers the write
    and times out on the read. Either way the caller gets TimeoutError, not a hang.
    """
    client = Redis.from_pool(WaitingConnectionPool.from_url(fresh_redis_server.url,
                                                            socket_timeout=0.5))
    await client.ping()
    assert fresh_redis_server.pid is not None
    os.kill(fresh_redis_server.pid, signal.SIGSTOP)  # alive, but reads nothing
    try:
        with pytest.raises(RedisTimeoutError, match=r"Timeout (writing|reading)"):
            await client.set("k", b"x" * 64_000_000)
    finally:
        os.kill(fresh_redis_server.pid, signal.SIGCONT)
    await client.aclose()
    await asyncio.sleep(0.5)  # redis-py 5 closes gracefully: let it flush to the resumed server
