"""ReplyListener: one shared read delivers replies by correlation id, drops the rest,
stops when idle and survives a Redis outage."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from actionbus import DomainActionResponse
from actionbus.clients.replies import ReplyListener
from actionbus.embedded import RedisServer

pytestmark = pytest.mark.backends

QUEUE = "actionbus:dev:{orders}:responses:test"


def _reply(correlation_id: str, n: int = 1) -> str:
    return DomainActionResponse(correlation_id=correlation_id, action_type_response_to="a.b.c",
                                success=True, data={"n": n}).model_dump_json()


async def test_replies_reach_their_own_callers(conn: Any) -> None:
    """Each waiting call gets the reply carrying its correlation id, whatever the order."""
    listener = ReplyListener(conn, QUEUE)
    futures = {cid: listener.expect(cid) for cid in ("a", "b", "c")}
    assert listener.pending == 3
    await conn.lpush(QUEUE, _reply("c", 3), _reply("a", 1), _reply("b", 2))
    async with asyncio.timeout(5):
        results = {cid: await future for cid, future in futures.items()}
    assert {cid: r.data["n"] for cid, r in results.items()} == {"a": 1, "b": 2, "c": 3}
    assert listener.pending == 0
    await listener.close()


async def test_late_and_malformed_replies_are_dropped(conn: Any) -> None:
    """A reply nobody waits for is counted as dropped, a malformed one skipped; both are
    removed and the next good reply is still delivered."""
    listener = ReplyListener(conn, QUEUE)
    waiting = listener.expect("wanted")
    listener.forget("gone")
    await conn.lpush(QUEUE, _reply("gone"), "not json", _reply("wanted", 7))
    async with asyncio.timeout(5):
        response = await waiting
    assert response.data == {"n": 7}
    assert listener.dropped == 1
    assert await conn.llen(QUEUE) == 0
    await listener.close()


async def test_listener_stops_when_idle_and_restarts_on_demand(
    conn: Any, eventually: Any
) -> None:
    """With nobody waiting for a whole block the read task ends; the next expect() restarts it."""
    listener = ReplyListener(conn, QUEUE)
    first = listener.expect("one")
    await conn.lpush(QUEUE, _reply("one"))
    async with asyncio.timeout(5):
        await first
    await eventually(lambda: listener._task is None, timeout=5)
    second = listener.expect("two")
    await conn.lpush(QUEUE, _reply("two"))
    async with asyncio.timeout(5):
        assert (await second).correlation_id == "two"
    await listener.close()


async def test_close_deletes_the_list_and_leaves_waiters_to_time_out(
    conn: Any,
) -> None:
    """close() stops the listener and deletes the response list; waiting futures stay pending."""
    listener = ReplyListener(conn, QUEUE)
    waiting = listener.expect("x")
    await conn.lpush(QUEUE, _reply("nobody"))
    await listener.close()
    assert await conn.exists(QUEUE) == 0
    assert not waiting.done()


async def test_listener_survives_a_redis_restart(fresh_redis_server: RedisServer) -> None:
    """A reply pushed after the server was killed and restarted still reaches its caller."""
    redis = Redis.from_url(fresh_redis_server.url, socket_connect_timeout=1, socket_timeout=2)
    listener = ReplyListener(redis, QUEUE)
    try:
        waiting = listener.expect("after")
        await asyncio.sleep(0.1)  # the listener is blocked in BRPOP
        fresh_redis_server.kill()
        await asyncio.sleep(0.3)  # it fails and backs off
        fresh_redis_server.restart(keep_data=False)
        with fresh_redis_server.client() as direct:
            direct.lpush(QUEUE, _reply("after", 9))
        async with asyncio.timeout(15):
            assert (await waiting).data == {"n": 9}
        assert listener._task is not None or waiting.done()
    finally:
        await listener.close()
        await redis.aclose()
