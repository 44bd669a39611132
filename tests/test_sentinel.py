"""Redis Sentinel: the master is found through sentinels and followed across a failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from actionbus import (
    BaseRedisClient,
    BaseWorker,
    CommonAppSettings,
    DomainAction,
    RedisManager,
    SendError,
    WorkerSettings,
)
from actionbus.embedded import RedisSentinel, RedisServer


@pytest.fixture
def topology() -> Iterator[tuple[RedisServer, RedisServer, RedisSentinel]]:
    """A master, its replica and one sentinel watching them (quorum 1, 1 s down-after)."""
    with (
        RedisServer() as master,
        RedisServer(extra_args=["--replicaof", master.host, str(master.port)]) as replica,
        RedisSentinel(master) as sentinel,
    ):
        yield master, replica, sentinel


def _settings(sentinel: RedisSentinel, service: str) -> CommonAppSettings:
    return CommonAppSettings(
        _env_file=None, service_name=service, redis_sentinels=[sentinel.address],
        redis_sentinel_master=sentinel.master_name, redis_socket_timeout=3,
    )  # fmt: skip


def _worker(sentinel: RedisSentinel) -> tuple[BaseWorker, list[int]]:
    worker = BaseWorker(_settings(sentinel, "inventory"),
                        worker_settings=WorkerSettings(block_ms=200))
    handled: list[int] = []

    @worker.handler("inventory.item.count")
    async def count(action: DomainAction, data: dict[str, int]) -> dict[str, int]:
        handled.append(data["i"])
        return {"i": data["i"]}

    return worker, handled


async def test_round_trip_through_sentinel(
    topology: tuple[RedisServer, RedisServer, RedisSentinel],
) -> None:
    """A client and a worker that only know the sentinel complete a pseudo-sync call."""
    _, _, sentinel = topology
    worker, _ = _worker(sentinel)
    settings = _settings(sentinel, "orders")
    async with worker, RedisManager(settings) as manager:
        client = BaseRedisClient("orders", manager.get_client(), settings)
        reply = await client.send_action_pseudo_sync(
            DomainAction(action_type="inventory.item.count", data={"i": 1}), timeout=5)
        await client.close()
    assert reply is not None
    assert reply.data == {"i": 1}


async def test_worker_and_client_follow_a_failover(
    topology: tuple[RedisServer, RedisServer, RedisSentinel],
) -> None:
    """After the master dies and the replica is promoted, sends and handling resume."""
    master, replica, sentinel = topology
    worker, handled = _worker(sentinel)
    settings = _settings(sentinel, "orders")
    async with worker, RedisManager(settings) as manager:
        client = BaseRedisClient("orders", manager.get_client(), settings)
        await client.send_action_async(DomainAction(action_type="inventory.item.count",
                                                    data={"i": 1}))
        deadline = time.monotonic() + 30
        while not handled:
            assert time.monotonic() < deadline, "the first action was not handled"
            await asyncio.sleep(0.05)
        with master.client() as direct:  # the replica has the group's state: a barrier, no sleep
            while direct.execute_command("WAIT", 1, 1000) != 1:
                assert time.monotonic() < deadline, "the replica did not catch up"
        master.kill()
        while sentinel.master_address() != (replica.host, replica.port):
            assert time.monotonic() < deadline, "sentinel did not promote the replica"
            await asyncio.sleep(0.2)
        sent = False
        while not sent:
            try:
                await client.send_action_async(DomainAction(
                    action_type="inventory.item.count", data={"i": 2}))
                sent = True
            except SendError:
                assert time.monotonic() < deadline, "could not send after the failover"
                await asyncio.sleep(0.2)
        while 2 not in handled:
            assert time.monotonic() < deadline, "the worker did not resume on the new master"
            await asyncio.sleep(0.05)
        await client.close()


def test_sentinels_need_a_master_name() -> None:
    """redis_sentinels without redis_sentinel_master is refused with the reason."""
    with pytest.raises(ValidationError, match="go together"):
        CommonAppSettings(_env_file=None, service_name="x", redis_sentinels=["127.0.0.1:1"])


def test_sentinel_address_must_be_host_and_port() -> None:
    """A sentinel address that is not host:port is refused, naming the entry."""
    with pytest.raises(ValidationError, match="not host:port"):
        CommonAppSettings(_env_file=None, service_name="x", redis_sentinels=["nohost"],
                          redis_sentinel_master="m")


def test_sentinel_and_cluster_are_exclusive() -> None:
    """Cluster and Sentinel settings together are refused."""
    with pytest.raises(ValidationError, match="not both"):
        CommonAppSettings(_env_file=None, service_name="x", redis_cluster=True,
                          redis_sentinels=["127.0.0.1:1"], redis_sentinel_master="m")
