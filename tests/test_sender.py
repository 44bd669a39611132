"""StreamWriter: concurrent XADDs are coalesced, each caller gets its own result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from actionbus.clients.sender import StreamWriter

pytestmark = pytest.mark.backends


async def test_a_lone_send_returns_its_entry_id(redis_client: Redis) -> None:
    """One send appends one entry with field `data` and returns its id."""
    writer = StreamWriter(redis_client)
    entry_id = await writer.xadd("s", "payload")
    assert await redis_client.xrange("s") == [(entry_id.encode(), {b"data": b"payload"})]


async def test_concurrent_sends_are_batched_and_all_written(redis_client: Redis) -> None:
    """300 concurrent sends all land, with distinct ids, over a handful of connections (one
    per concurrent round trip), not hundreds."""
    writer = StreamWriter(redis_client)
    before = await _connections(redis_client)
    ids = await asyncio.gather(*(writer.xadd("s", str(i)) for i in range(300)))
    opened = await _connections(redis_client) - before
    assert len(set(ids)) == 300
    assert await redis_client.xlen("s") == 300
    assert opened <= 3, f"300 concurrent sends opened {opened} connections"
    entries = {v[b"data"].decode() for _, v in await redis_client.xrange("s")}
    assert entries == {str(i) for i in range(300)}


async def test_an_error_reaches_only_the_caller_it_belongs_to(redis_client: Redis) -> None:
    """A send to a key of the wrong type fails alone; the others in its batch succeed."""
    await redis_client.set("not-a-stream", "x")
    writer = StreamWriter(redis_client)
    results = await asyncio.gather(
        *(writer.xadd("not-a-stream" if i == 5 else "s", str(i)) for i in range(20)),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], ResponseError)
    assert await redis_client.xlen("s") == 19


async def test_a_cancelled_caller_does_not_strand_the_others(redis_client: Redis) -> None:
    """Cancelling one queued sender leaves the rest of the batch to complete."""
    writer = StreamWriter(redis_client)
    tasks = [asyncio.create_task(writer.xadd("s", str(i))) for i in range(50)]
    await asyncio.sleep(0)
    tasks[10].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(d, str) for d in done) >= 49
    with pytest.raises(asyncio.CancelledError):
        tasks[10].result()


async def _connections(redis: Redis | RedisCluster) -> int:
    """Connections received so far by the server (on a cluster: the node of stream ``s``)."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the slot map, before asking it for a node
        stats = await redis.info("stats", target_nodes=redis.get_node_from_key("s"))
    else:
        stats = await redis.info("stats")
    return int(stats["total_connections_received"])


@pytest.mark.standalone_only("a cluster client may wait for its slot table before writing")
async def test_a_lone_send_is_written_at_once_by_its_caller(
    redis_client: Redis, eventually: Callable[..., Awaitable[Any]]
) -> None:
    """With nothing else in flight, a send is written by its caller's own task before it
    first waits (not queued for the batching task): cancelling the caller at that wait
    still leaves the entry written. Pinned after a first send (the connection is open)."""
    writer = StreamWriter(redis_client)
    await writer.xadd("s", "first")
    task = asyncio.create_task(writer.xadd("s", "lone"))
    await asyncio.sleep(0)  # the task runs up to its first wait
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    async def both_written() -> bool:
        return bool(await redis_client.xlen("s") == 2)

    await eventually(both_written)
    assert [v[b"data"] for _, v in await redis_client.xrange("s")] == [b"first", b"lone"]
