"""Send, state, dead-letter and first-contact calls raise only actionbus errors, whatever
redis-py raises underneath (standalone or cluster, server gone or never there)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

import pytest
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actionbus import (
    ActionBusError,
    BaseRedisClient,
    CommonAppSettings,
    DeadLetterError,
    DeadLetterQueue,
    DomainAction,
    QueueManager,
    RedisConnectionError,
    RedisManager,
    RedisStateManager,
    SendError,
    StateError,
    close_redis_pool,
    get_redis_client,
)
from actionbus.clients.guard import outcome_unknown, translate_errors
from actionbus.exceptions import StateConflictError


class Counter(BaseModel):
    """A counter state."""

    value: int = 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster_settings(url: str, service: str = "tests") -> CommonAppSettings:
    return CommonAppSettings(_env_file=None, service_name=service, redis_cluster=True,
                             redis_url=url, redis_socket_connect_timeout=1,
                             redis_socket_timeout=1, redis_retries=1)


async def test_initialize_against_unreachable_cluster_raises_connection_error() -> None:
    """RedisManager.initialize() on a cluster nobody serves raises RedisConnectionError."""
    settings = _cluster_settings(f"redis://127.0.0.1:{_closed_port()}/0")
    with pytest.raises(RedisConnectionError, match="cannot reach Redis"):
        await RedisManager(settings).initialize()


async def test_redis_pool_against_unreachable_cluster_raises_connection_error() -> None:
    """get_redis_client() on a cluster nobody serves raises RedisConnectionError."""
    settings = _cluster_settings(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        with pytest.raises(RedisConnectionError):
            await get_redis_client(settings)
    finally:
        await close_redis_pool()


async def _every_call_raises_library_errors(redis: Any, settings: CommonAppSettings) -> None:
    client = BaseRedisClient("orders", redis, settings)
    state = RedisStateManager(redis, Counter, settings)
    dlq = DeadLetterQueue(redis, QueueManager("dev"), "orders")
    action = DomainAction(action_type="inventory.item.reserve")
    sends = [client.send_action_async(action), client.send_actions_async([action, action]),
             client.send_action_async_with_callback(action, "orders.item.reserved"),
             client.send_action_pseudo_sync(action, timeout=5)]
    for call in sends:
        with pytest.raises(SendError):
            await call
    retry = "Check that Redis is reachable; the call can be retried."  # the outage advice
    for call in (state.load_state("k"), state.save_state("k", Counter()),
                 state.delete_state("k"), state.update_state("k", lambda c: Counter())):
        with pytest.raises(StateError) as caught:
            await call
        assert str(caught.value).endswith(retry)
    for call in (dlq.count(), dlq.list(), dlq.replay_all(), dlq.delete("1-1")):
        with pytest.raises(DeadLetterError) as caught_dl:
            await call
        assert str(caught_dl.value).endswith(retry)
    await client.close()


async def test_calls_on_a_stopped_cluster_raise_library_errors(redis_cluster: Any,
                                                               redis_cluster_url: str) -> None:
    """With every cluster node down, sends, state and dead-letter calls raise actionbus errors."""
    manager = RedisManager(_cluster_settings(redis_cluster_url))
    redis = await manager.initialize()
    redis_cluster.stop()
    try:
        await _every_call_raises_library_errors(redis, _cluster_settings(redis_cluster_url))
    finally:
        await manager.close()
        redis_cluster.start()


async def test_calls_on_a_killed_server_raise_library_errors(fresh_redis_server: Any) -> None:
    """With the server killed, sends, state and dead-letter calls raise actionbus errors."""
    settings = CommonAppSettings(_env_file=None, service_name="tests",
                                 redis_url=fresh_redis_server.url,
                                 redis_socket_connect_timeout=1, redis_retries=1)
    manager = RedisManager(settings)
    redis = await manager.initialize()
    fresh_redis_server.kill()
    try:
        await _every_call_raises_library_errors(redis, settings)
    finally:
        await manager.close()


@pytest.mark.parametrize(
    "raised",
    [RedisClusterException("cannot connect"),
     AttributeError("'NoneType' object has no attribute 'writelines'"),
     OSError("broken pipe"), EOFError(), RedisConnError("Connection closed by server.")],
)
def test_translate_errors_covers_what_redis_py_raises(raised: BaseException) -> None:
    """Non-RedisError failures redis-py lets out (cluster, half-closed socket) are translated."""
    with pytest.raises(StateError) as caught, translate_errors(
        lambda description, exc: StateError(description)
    ):
        raise raised
    assert caught.value.__cause__ is raised
    assert issubclass(StateError, ActionBusError)


def test_translate_errors_leaves_library_errors_alone() -> None:
    """An actionbus error inside the block passes through unchanged."""
    error = StateConflictError("lost")
    with pytest.raises(StateConflictError) as caught, translate_errors(
        lambda description, exc: StateError(description)
    ):
        raise error
    assert caught.value is error


@pytest.mark.parametrize(
    ("raised", "unknown"),
    [(ResponseError("WRONGTYPE"), False),
     (RedisConnError("Error 111 connecting to 127.0.0.1:1. Connection refused."), False),
     (RedisConnError("Connection closed by server."), True),
     (RedisTimeoutError("Timeout reading from socket"), True),
     (RedisClusterException("no reachable node"), False)],
)
def test_outcome_unknown_only_when_the_write_may_have_happened(
    raised: BaseException, unknown: bool
) -> None:
    """Refused or never-connected writes are known not sent; a broken read leaves it unknown."""
    assert outcome_unknown(raised) is unknown


async def test_a_missing_permission_is_reported_as_such_not_as_an_outage(
    fresh_redis_server: Any,
) -> None:
    """A NOPERM refusal says a permission is missing, not that Redis is unreachable."""
    with fresh_redis_server.client() as admin:
        admin.execute_command(
            "ACL", "SETUSER", "noxrange", "on", ">pw", "~*", "+@all", "-xrange", "-xrevrange"
        )
    url = fresh_redis_server.url.replace("redis://", "redis://noxrange:pw@")
    settings = CommonAppSettings(_env_file=None, service_name="tests", redis_url=url)
    async with RedisManager(settings) as manager:
        queue = DeadLetterQueue(manager.get_client(), QueueManager(), "inventory")
        with pytest.raises(DeadLetterError) as caught:
            await queue.list()
    message = str(caught.value)
    assert message.endswith("The Redis user lacks a command or key permission: grant it "
                            "(README, 'Security', has the ACL of each role).")
    assert "reachable" not in message


async def test_a_send_that_got_no_pooled_connection_was_not_sent(
    redis_url: str, eventually: Any
) -> None:
    """A send that times out waiting for a pooled connection (the only one held by a
    blocking command) raises SendError with outcome_unknown False: "it was not sent"."""
    from redis.asyncio import Redis

    from actionbus.pool import WaitingConnectionPool

    redis = Redis.from_pool(WaitingConnectionPool.from_url(redis_url, max_connections=1,
                                                           timeout=0.2))
    admin = Redis.from_url(redis_url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=redis_url, lanes_cache_s=3600))
    action = DomainAction(action_type="inventory.item.add")
    try:
        await client.send_action_async(action)  # the target's partitions are now known
        holder = asyncio.create_task(redis.blpop(["tests:release"], timeout=0))

        async def blocked() -> bool:  # the pool's only connection is now in the BLPOP
            return int((await admin.info("clients"))["blocked_clients"]) == 1

        await eventually(blocked)
        with pytest.raises(SendError) as caught:
            await client.send_action_async(DomainAction(action_type="inventory.item.add"))
        message = str(caught.value)
        assert caught.value.outcome_unknown is False
        assert ": ConnectionError: No connection available" in message  # Type: message
        assert message.endswith("; it was not sent")
        await admin.lpush("tests:release", "x")
        await holder
        assert await admin.xlen(QueueManager().get_service_action_stream("inventory")) == 1
    finally:
        await client.close()
        await redis.aclose()
        await admin.aclose()


async def test_a_send_whose_answer_never_came_may_have_been_delivered(
    fresh_redis_server: Any,
) -> None:
    """A send whose XADD left but whose answer timed out (the server froze) raises
    SendError with outcome_unknown True, saying it may have been delivered; and it was."""
    from redis.asyncio import Redis

    redis = Redis.from_url(fresh_redis_server.url, socket_timeout=0.5)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=fresh_redis_server.url,
        lanes_cache_s=3600))
    stream = QueueManager().get_service_action_stream("inventory")
    try:
        await client.send_action_async(DomainAction(action_type="inventory.item.add"))
        os.kill(fresh_redis_server.pid, signal.SIGSTOP)
        try:
            with pytest.raises(SendError) as caught:
                await client.send_action_async(DomainAction(action_type="inventory.item.add"))
        finally:
            os.kill(fresh_redis_server.pid, signal.SIGCONT)
        assert caught.value.outcome_unknown is True
        assert str(caught.value).endswith(
            "; it may have been delivered (the connection broke after the write)")
        with fresh_redis_server.client() as conn:
            assert conn.xlen(stream) == 2  # the XADD ran once the server went on
    finally:
        await client.close()
        await redis.aclose()


async def test_a_refused_command_says_retrying_will_not_help(conn: Any) -> None:
    """A call Redis refuses (WRONGTYPE: the dead-letter key holds a string) raises an
    actionbus error whose advice says retrying will not help until the cause is fixed."""
    queue = QueueManager("dev")
    await conn.set(queue.get_dead_letter_stream("orders"), "not a stream")
    with pytest.raises(DeadLetterError) as refused:
        await DeadLetterQueue(conn, queue, "orders").count()
    assert "WRONGTYPE" in str(refused.value)
    assert str(refused.value).endswith(
        "Redis refused the command; retrying will not help until the cause is fixed.")
