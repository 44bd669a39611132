"""Durable sends: ``wait_replicas`` WAITs for replicas after the XADD, on the same node."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


async def test_cluster_durable_send_follows_ask_while_its_slot_migrates(
    redis_replica_cluster: LocalCluster,
) -> None:
    """While the stream's slot migrates (the stream not yet on the old owner), the old owner
    answers ASK: the send repeats XADD and WAIT after ASKING on the importing node, where
    the entry lands once, confirmed by that node's replica."""
    cluster = redis_replica_cluster
    source = cluster.master_of(STREAM)
    target = next(node for node in cluster.nodes
                  if node is not source and cluster.role_of(node) == "master")
    with source.client() as src, target.client() as dst:
        slot = int(src.cluster("KEYSLOT", STREAM))
        src_id, dst_id = (str(conn.cluster("MYID"), "ascii") for conn in (src, dst))
        dst.cluster("SETSLOT", slot, "IMPORTING", src_id)
        src.cluster("SETSLOT", slot, "MIGRATING", dst_id)
    redis = RedisCluster.from_url(cluster.url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=cluster.url, redis_cluster=True))
    try:
        sent = await client.send_action_async(action(1), wait_replicas=1)
        with target.client() as dst:
            pipe = dst.pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.xrange(STREAM)
            _, entries = pipe.execute()
        assert [entry_id.decode() for entry_id, _ in entries] == [sent]
    finally:
        await client.close()
        await redis.aclose()


async def test_a_cluster_durable_send_to_a_hung_master_fails_within_the_refresh_cap() -> None:
    """A durable send to a cluster master that hangs (SIGSTOPped; no replica to take over)
    fails once its socket timeout (1 s) passed plus at most the 2 s cap on the slot-table
    refresh that follows the failure (about 3 s; uncapped, the refresh's own timeouts and
    retries take about 12 s)."""
    with LocalCluster(masters=3) as cluster:
        master = cluster.master_of(STREAM)
        redis = RedisCluster.from_url(cluster.url, socket_timeout=1.0)
        client = BaseRedisClient("caller", redis, CommonAppSettings(
            _env_file=None, service_name="caller", redis_url=cluster.url, redis_cluster=True,
            lanes_cache_s=3600))  # the target's partitions stay known: no read before the send
        try:
            await client.send_action_async(action(0))
            with frozen(master):
                started = time.monotonic()
                with pytest.raises(SendError):
                    await client.send_action_async(action(1), wait_replicas=1,
                                                   wait_timeout_ms=50)
                elapsed = time.monotonic() - started
            assert elapsed < 6.0, f"the send failed only after {elapsed:.1f} s"
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


async def test_durable_batch_writes_ordered_actions_in_their_order(
    redis_replicated: RedisServer,
) -> None:
    """A durable batch mixing ordered actions (an ordering_key) and plain ones writes every
    entry, each ordered stream's in the batch's order, and returns each entry's id."""
    ordered_stream = QueueManager().get_ordered_stream("durable")
    redis = Redis.from_url(redis_replicated.url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=redis_replicated.url))
    batch = [DomainAction(action_type="durable.item.put", ordering_key="k", data={"i": i})
             for i in range(3)]
    batch.insert(1, action(9))
    try:
        ids = await client.send_actions_async(batch, wait_replicas=1)
        ordered = await redis.xrange(ordered_stream)
        assert [entry_id.decode() for entry_id, _ in ordered] == [ids[0], ids[2], ids[3]]
        assert [DomainAction.model_validate_json(fields[b"data"]).data["i"]
                for _, fields in ordered] == [0, 1, 2]
        [(plain_id, _)] = await redis.xrange(STREAM)
        assert plain_id.decode() == ids[1]
    finally:
        await client.close()
        await redis.aclose()


async def test_durability_arguments_are_checked_at_their_bounds(redis_url: str) -> None:
    """wait_replicas may be 0 and wait_timeout_ms 1 (the smallest allowed values); -1 and 0
    are refused with a ConfigurationError naming the argument and its bound, nothing sent."""
    redis = Redis.from_url(redis_url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=redis_url))
    try:
        # accepted: written, then WAIT 1 1 on a server without replicas confirms none
        with pytest.raises(NotReplicatedError) as caught:
            await client.send_action_async(action(1), wait_replicas=1, wait_timeout_ms=1)
        assert (caught.value.replicas, caught.value.wanted) == (0, 1)
        with pytest.raises(ConfigurationError) as refused:
            await client.send_action_async(action(2), wait_replicas=0, wait_timeout_ms=0)
        assert str(refused.value).startswith(
            "wait_timeout_ms must be an integer >= 1, got 0; nothing was sent")
        with pytest.raises(ConfigurationError) as refused:
            await client.send_actions_async([action(3)], wait_replicas=-1)
        assert str(refused.value).startswith(
            "wait_replicas must be an integer >= 0, got -1; nothing was sent")
        with pytest.raises(ConfigurationError, match=r"^wait_timeout_ms must be"):
            await client.send_actions_async([action(4)], wait_replicas=1, wait_timeout_ms=0)
        [(entry_id, _)] = await redis.xrange(STREAM)
        assert entry_id.decode() == caught.value.entry_id
    finally:
        await client.close()
        await redis.aclose()


async def test_cluster_durable_send_after_a_moved_slot_teaches_the_client_its_owner(
    redis_replica_cluster: LocalCluster,
) -> None:
    """When the stream's slot has moved since the client last used it, the durable send
    follows MOVED to the new owner, and the client's slot table then names that owner (the
    next sends go there directly)."""
    cluster = redis_replica_cluster
    source = cluster.master_of(STREAM)
    target = next(node for node in cluster.nodes
                  if node is not source and cluster.role_of(node) == "master")
    redis = RedisCluster.from_url(cluster.url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=cluster.url, redis_cluster=True,
        lanes_cache_s=3600))  # the target's partitions stay known: no read before the send
    try:
        await client.send_action_async(action(0), wait_replicas=1)
        assert redis.get_node_from_key(STREAM).port == source.port
        with source.client() as src, target.client() as dst:
            src.delete(STREAM)  # an empty slot can be given to another node at once
            slot = int(src.cluster("KEYSLOT", STREAM))
            dst_id = str(dst.cluster("MYID"), "ascii")
            dst.cluster("SETSLOT", slot, "NODE", dst_id)
            src.cluster("SETSLOT", slot, "NODE", dst_id)
        sent = await client.send_action_async(action(1), wait_replicas=1)
        assert redis.get_node_from_key(STREAM).port == target.port
        with target.client() as dst:
            assert [entry_id.decode() for entry_id, _ in dst.xrange(STREAM)] == [sent]
    finally:
        await client.close()
        await redis.aclose()


async def test_a_batch_asked_to_wait_for_replicas_waits_with_or_without_a_priority(
    redis_url: str,
) -> None:
    """send_actions_async(wait_replicas=1) WAITs for the batch, also with a priority: on a
    server without replicas each entry is written and the batch's SendError is caused by
    NotReplicatedError."""
    redis = Redis.from_url(redis_url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=redis_url))
    try:
        for priority in (None, "high"):
            with pytest.raises(SendError) as caught:
                await client.send_actions_async([action(1), action(2)], priority=priority,
                                                wait_replicas=1, wait_timeout_ms=1)
            assert isinstance(caught.value.__cause__, NotReplicatedError)
        assert await redis.xlen(STREAM) == 4
    finally:
        await client.close()
        await redis.aclose()


async def test_pseudo_sync_request_waits_for_the_replicas_of_the_settings(
    redis_url: str,
) -> None:
    """settings.wait_replicas applies to send_action_pseudo_sync's request too: on a server
    without replicas the request is written and NotReplicatedError is raised at once,
    instead of waiting for a reply."""
    redis = Redis.from_url(redis_url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=redis_url, wait_replicas=1,
        wait_timeout_ms=1))
    try:
        with pytest.raises(NotReplicatedError) as caught:
            await client.send_action_pseudo_sync(action(1), timeout=30)
        [(entry_id, _)] = await redis.xrange(STREAM)
        assert entry_id.decode() == caught.value.entry_id
    finally:
        await client.close()
        await redis.aclose()


async def test_a_wait_timeout_given_alone_is_checked_and_used(redis_url: str) -> None:
    """send_action_async(wait_timeout_ms=…) without wait_replicas (the settings' replicas)
    still takes the timeout as given: 0 is refused with a ConfigurationError, nothing
    sent; with settings.wait_replicas=1 a send with wait_timeout_ms=1 reports that timeout."""
    redis = Redis.from_url(redis_url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=redis_url))
    durable = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=redis_url, wait_replicas=1,
        wait_timeout_ms=2_000))
    try:
        with pytest.raises(ConfigurationError, match=r"^wait_timeout_ms must be"):
            await client.send_action_async(action(1), wait_timeout_ms=0)
        assert await redis.xlen(STREAM) == 0
        with pytest.raises(NotReplicatedError, match=r"within 1 ms"):
            await durable.send_action_async(action(2), wait_timeout_ms=1)
    finally:
        await client.close()
        await durable.close()
        await redis.aclose()


@pytest.mark.parametrize(("arguments", "named"), [
    ({"wait_replicas": False}, "wait_replicas"),
    ({"wait_replicas": 0.0}, "wait_replicas"),
    ({"wait_replicas": 0, "wait_timeout_ms": True}, "wait_timeout_ms"),
    ({"wait_replicas": 0, "wait_timeout_ms": 100.0}, "wait_timeout_ms"),
])
async def test_durability_arguments_must_be_integers_even_when_zero_replicas_are_asked(
    redis_url: str, arguments: dict[str, object], named: str,
) -> None:
    """A bool or float wait_replicas/wait_timeout_ms (even one equal to an accepted value,
    0 replicas or 100 ms) is refused with a ConfigurationError naming it; nothing sent."""
    redis = Redis.from_url(redis_url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=redis_url))
    try:
        with pytest.raises(ConfigurationError, match=rf"^{named} must be an integer"):
            await client.send_action_async(action(1), **arguments)  # type: ignore[arg-type]
        assert await redis.xlen(STREAM) == 0
    finally:
        await client.close()
        await redis.aclose()


async def test_zero_replicas_of_an_int_subclass_sends_no_wait(redis_url: str) -> None:
    """wait_replicas=0 given as an int subclass (an IntEnum member, say) is 0 replicas:
    the entry is written with a plain XADD, no WAIT is sent."""

    class Count(int):
        pass

    redis = Redis.from_url(redis_url)
    client = BaseRedisClient("caller", redis, CommonAppSettings(
        _env_file=None, service_name="caller", redis_url=redis_url))

    async def waits() -> int:
        stats: Any = await redis.info("commandstats")
        return int(stats.get("cmdstat_wait", {}).get("calls", 0))

    try:
        before = await waits()
        await client.send_action_async(action(1), wait_replicas=Count(0))
        assert await redis.xlen(STREAM) == 1
        assert await waits() == before
    finally:
        await client.close()
        await redis.aclose()
