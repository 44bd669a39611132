"""Helpers of the fault suite: worker processes, senders, and bounded waiting."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster

from actionbus import BaseRedisClient, CommonAppSettings, DomainAction
from actionbus.clients import QueueManager
from actionbus.connection import create_redis_client
from actionbus.embedded import RedisCluster as RedisCluster_
from actionbus.embedded import RedisServer

WORKER = Path(__file__).with_name("worker_proc.py")
SERVICE = "faults"
STREAM = QueueManager().get_service_action_stream(SERVICE)
DEAD = QueueManager().get_dead_letter_stream(SERVICE)


class Workers:
    """Starts worker processes and makes sure none outlives the test."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, url: str, **config: Any) -> subprocess.Popen[str]:
        config = {"url": url, "service": SERVICE, **config}
        stderr = self.logs / f"worker-{len(self.procs)}.stderr"
        with stderr.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(config)],
                stdout=subprocess.PIPE, stderr=err, text=True,
            )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "READY":
            proc.kill()
            proc.communicate(timeout=5)
            raise AssertionError(f"worker did not start: {line!r} {stderr.read_text()[-2000:]}")
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Worker processes of this test, killed and reaped at the end."""
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


def settings_for(url: str, service: str = "faults-client", *,
                 cluster: bool = False) -> CommonAppSettings:
    """Client settings on ``url`` (a node of a Redis Cluster with ``cluster``)."""
    return CommonAppSettings(service_name=service, redis_url=url, redis_cluster=cluster)


def monitor(url: str) -> Redis:
    """A client for the test's own checks, retrying across server restarts like the library."""
    client = create_redis_client(settings_for(url))
    assert isinstance(client, Redis)
    return client


@dataclass
class Target:
    """The Redis of a fault test: a standalone server or a 3-master cluster (``backend``).

    ``server`` is the process that holds the fault service's stream: the server itself, or
    the cluster's master of the stream's slot (the one to kill and restart).
    """

    url: str
    cluster: bool
    server: RedisServer
    nodes: RedisCluster_ | None = None

    def wait_ready(self) -> None:
        """On a cluster: wait until every node is up and agrees again (after a restart)."""
        if self.nodes is not None:
            self.nodes.start()  # every node runs already: this waits for convergence

    def client(self) -> Redis | RedisCluster:
        """A client for the test's own checks, retrying across restarts like the library."""
        return create_redis_client(settings_for(self.url, cluster=self.cluster))

    def settings(self, service: str = "faults-client") -> CommonAppSettings:
        """Client settings on this Redis."""
        return settings_for(self.url, service, cluster=self.cluster)


@pytest.fixture
def target(backend: str, request: pytest.FixtureRequest) -> Target:
    """A Redis of this test's own (standalone), or the session's emptied cluster."""
    if backend == "cluster":
        url = request.getfixturevalue("redis_cluster_url")
        cluster: RedisCluster_ = request.getfixturevalue("redis_cluster")
        return Target(url, True, cluster.master_of(STREAM), cluster)
    server: RedisServer = request.getfixturevalue("fresh_redis_server")
    return Target(server.url, False, server)


@pytest.fixture
def target_aof(backend: str, request: pytest.FixtureRequest) -> Iterator[Target]:
    """A Redis of this test's own persisting to an AOF, to kill and restart: a server, or
    a 3-master cluster (no replicas) whose master of the stream is the one to restart."""
    if backend == "cluster":
        with RedisCluster_(masters=3, appendonly=True) as cluster:
            yield Target(cluster.url, True, cluster.master_of(STREAM), cluster)
        return
    server: RedisServer = request.getfixturevalue("fresh_redis_server_aof")
    yield Target(server.url, False, server)


def job(i: int) -> DomainAction:
    """The test action number ``i``."""
    return DomainAction(action_type="faults.job.run", data={"i": i})


async def send_jobs(url: str, numbers: range, *, cluster: bool = False,
                    partitions: int = 1) -> None:
    """Send ``faults.job.run`` actions numbered ``numbers`` through a real client (to
    ``partitions`` partitions of the service)."""
    redis = (RedisCluster if cluster else Redis).from_url(url)
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # see worker_proc: no concurrent first commands
    settings = settings_for(url, cluster=cluster).model_copy(
        update={"partitions": {SERVICE: partitions}})
    client = BaseRedisClient("faults-client", redis, settings)
    try:
        actions = [job(i) for i in numbers]
        for start in range(0, len(actions), 200):
            await client.send_actions_async(actions[start:start + 200])
    finally:
        await client.close()
        await redis.aclose()


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, step: float = 0.05
) -> float:
    """Poll ``check`` until true; return the seconds it took; fail after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def handled_count(redis: Redis | RedisCluster) -> int:
    """How many distinct actions were handled at least once."""
    return int(await redis.hlen("faults:handled"))


async def pending_count(redis: Redis | RedisCluster, partitions: int = 1) -> int:
    """How many entries the group has delivered but not acknowledged (in every partition)."""
    total = 0
    for stream in QueueManager().get_partition_streams(SERVICE, partitions):
        summary = await redis.xpending(stream, SERVICE)
        total += int(summary["pending"])
    return total
