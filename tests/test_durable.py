"""Durable sends: ``wait_replicas`` WAITs for replicas after the XADD, on the same node."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from redis.asyncio import Redis, RedisCluster

from actionbus import (
    BaseRedisClient,
    CommonAppSettings,
    ConfigurationError,
    DomainAction,
    NotReplicatedError,
    SendError,
)
from actionbus.clients import QueueManager
from actionbus.embedded import RedisCluster as LocalCluster
from actionbus.embedded import RedisServer

STREAM = QueueManager().get_service_action_stream("durable")


def action(i: int = 0) -> DomainAction:
    return DomainAction(action_type="durable.item.put", data={"i": i})


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """SIGSTOP ``server`` (it stops acknowledging replication) until the block ends."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def replica_of(master: RedisServer, servers: list[RedisServer]) -> RedisServer:
    with master.client() as conn:
        port = int(conn.info("replication")["slave0"]["port"])
    return next(s for s in servers if s.port == port)


async def test_standalone_wait_replicas_confirms_or_reports(
    redis_replicated: RedisServer,
) -> None:
    """With a replica in sync the send returns after WAIT; with the replica frozen the
    entry is written but NotReplicatedError reports 0 of 1 replicas (WAIT runs on the
    XADD's own connection, so it really waits for that entry)."""
    master = redis_replicated
    with master.client() as conn:
        replica_port = int(conn.info("replication")["slave0"]["port"])
    replica = RedisServer(port=replica_port)
    redis = Redis.from_url(master.url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=master.url))
    try:
        await client.send_action_async(action(1), wait_replicas=1)
        with replica.client() as conn:
            assert conn.xlen(STREAM) == 1  # WAIT returned: the replica has it
        pid = _pid_of_port(replica_port)
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicatedError) as caught:
                await client.send_action_async(action(2), wait_replicas=1, wait_timeout_ms=300)
        finally:
            os.kill(pid, signal.SIGCONT)
        error = caught.value
        assert (error.replicas, error.wanted, error.outcome_unknown) == (0, 1, False)
        assert "but only 0 of 1 replica(s) confirmed it within 300 ms" in str(error)
        assert isinstance(error, SendError)
        entries = await redis.xrange(STREAM)
        assert [e[0].decode() for e in entries][-1] == error.entry_id  # it IS written
    finally:
        await client.close()
        await redis.aclose()


def _pid_of_port(port: int) -> int:
    """The pid of the redis-server listening on ``port`` (the fixture's replica)."""
    with RedisServer(port=port).client() as conn:
        return int(conn.info("server")["process_id"])


async def test_settings_default_and_batch_ask_for_more_replicas_than_exist(
    redis_replicated: RedisServer,
) -> None:
    """settings.wait_replicas applies to sends without the argument and to batches: asking
    for 2 replicas of a master that has 1 reports 1 of 2; 0 on the call turns it off."""
    redis = Redis.from_url(redis_replicated.url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=redis_replicated.url,
        wait_replicas=2, wait_timeout_ms=200))
    try:
        with pytest.raises(NotReplicatedError) as caught:
            await client.send_action_async(action(1))
        assert (caught.value.replicas, caught.value.wanted) == (1, 2)
        with pytest.raises(SendError) as batch:
            await client.send_actions_async([action(2), action(3)])
        assert isinstance(batch.value.__cause__, NotReplicatedError)
        await client.send_action_async(action(4), wait_replicas=0)
        with pytest.raises(ConfigurationError):
            await client.send_action_async(action(5), wait_replicas=-1)
        assert await redis.xlen(STREAM) == 4  # every entry was written; -1 was refused
    finally:
        await client.close()
        await redis.aclose()


async def test_cluster_wait_replicas_waits_on_the_streams_master(
    redis_replica_cluster: LocalCluster,
) -> None:
    """On the cluster the XADD and WAIT go to the node owning the stream's slot: a send
    returns its entry id once its replica has the entry, and reports 0 of 1 (with the
    entry id) while that replica is frozen."""
    cluster = redis_replica_cluster
    master = cluster.master_of(STREAM)
    replica = replica_of(master, cluster.nodes)
    redis = RedisCluster.from_url(cluster.url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=cluster.url, redis_cluster=True))
    try:
        sent = await client.send_action_async(action(1), wait_replicas=1)
        with replica.client() as conn:
            conn.execute_command("READONLY")
            assert conn.xlen(STREAM) == 1
        with frozen(replica), pytest.raises(NotReplicatedError) as caught:
            await client.send_action_async(action(2), wait_replicas=1, wait_timeout_ms=300)
        assert caught.value.replicas == 0
        ids = [entry_id.decode() for entry_id, _ in await redis.xrange(STREAM)]
        assert ids == [sent, caught.value.entry_id]  # each send reports its own entry id
    finally:
        await client.close()
        await redis.aclose()


async def test_wait_refused_by_the_acl_reports_the_written_entry(redis_url: str) -> None:
    """A user without +wait: the XADD lands, and the send raises NotReplicatedError naming
    the entry and the refused WAIT (0 replicas confirmed)."""
    admin = Redis.from_url(redis_url)
    await admin.execute_command("ACL", "SETUSER", "nowait", "on", ">pw", "~*", "&*", "+@all",
                                "-wait")
    url = redis_url.replace("redis://", "redis://nowait:pw@", 1)
    user = Redis.from_url(url)
    client = BaseRedisClient("caller", user, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=url))
    try:
        with pytest.raises(NotReplicatedError) as caught:
            await client.send_action_async(action(1), wait_replicas=1, wait_timeout_ms=100)
        [(entry_id, _)] = await admin.xrange(STREAM)
        assert caught.value.entry_id == entry_id.decode()
        assert (caught.value.replicas, caught.value.wanted) == (0, 1)
        assert "WAIT failed (NoPermissionError" in str(caught.value)
    finally:
        await client.close()
        await user.aclose()
        await admin.execute_command("ACL", "DELUSER", "nowait")
        await admin.aclose()
