"""Shared helpers: settings on the test Redis, a connected client, quick workers, polling.

Backends: a module or test marked ``@pytest.mark.backends`` runs twice, on the standalone
session server (``[standalone]``) and on the session's 3-master Redis Cluster (``[cluster]``);
``make_settings``, ``conn``, ``bus`` and ``redis_client`` then point at that backend. A test
that cannot run on a cluster carries ``@pytest.mark.standalone_only("why")`` and runs once.
Unmarked tests run on the standalone server only. ``make test-quick`` deselects ``cluster``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis, RedisCluster

from actionbus import BaseRedisClient, BaseWorker, CommonAppSettings, RedisManager, WorkerSettings

BACKENDS = ("standalone", "cluster")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends: run on the standalone server and on the 3-master cluster")
    config.addinivalue_line(
        "markers", "standalone_only(reason): a test of a `backends` module that needs one "
        "server (the reason says why); it runs on the standalone server only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``backend`` for tests marked ``backends`` (and not ``standalone_only``)."""
    marked = metafunc.definition.get_closest_marker("backends") is not None
    alone = metafunc.definition.get_closest_marker("standalone_only") is not None
    if "backend" in metafunc.fixturenames and marked and not alone:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``"standalone"`` or ``"cluster"``: where this test's Redis is (see ``backends``)."""
    return str(getattr(request, "param", "standalone"))


@pytest.fixture
def bus_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The emptied URL of this test's backend: the session server or the session cluster."""
    name = "redis_cluster_url" if backend == "cluster" else "redis_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def make_settings(bus_url: str, backend: str) -> Callable[..., CommonAppSettings]:
    """Build CommonAppSettings on the test's backend, ignoring any ``.env`` file."""

    def make(**overrides: Any) -> CommonAppSettings:
        values: dict[str, Any] = {"redis_url": bus_url, "service_name": "tests",
                                  "redis_cluster": backend == "cluster"}
        values.update(overrides)
        return CommonAppSettings(_env_file=None, **values)

    return make


@pytest_asyncio.fixture
async def conn(make_settings: Callable[..., CommonAppSettings]) -> AsyncIterator[Any]:
    """A client from an initialized RedisManager on the emptied test server."""
    async with RedisManager(make_settings()) as manager:
        yield manager.get_client()


@pytest_asyncio.fixture
async def redis_client(bus_url: str, backend: str) -> AsyncIterator[Redis | RedisCluster]:
    """An async client on the emptied backend (a RedisCluster client on the cluster)."""
    client: Redis | RedisCluster = (
        RedisCluster.from_url(bus_url) if backend == "cluster" else Redis.from_url(bus_url))
    try:
        yield client
    finally:
        await client.aclose()


def fast_worker_settings(**overrides: Any) -> WorkerSettings:
    """WorkerSettings that keep tests fast: short blocks and retries."""
    values: dict[str, Any] = {
        "block_ms": 100,
        "retry_backoff_base_s": 0.01,
        "retry_backoff_max_s": 0.05,
        "shutdown_grace_s": 1.0,
    }
    values.update(overrides)
    return WorkerSettings(**values)


@pytest_asyncio.fixture
async def bus(
    conn: Any, make_settings: Callable[..., CommonAppSettings]
) -> AsyncIterator[Callable[..., Any]]:
    """Factory of clients and workers on ``conn``; everything is closed after the test."""
    clients: list[BaseRedisClient] = []
    workers: list[BaseWorker] = []

    class Bus:
        redis = conn

        @staticmethod
        def client(service: str = "caller", **settings: Any) -> BaseRedisClient:
            client = BaseRedisClient(service, conn, make_settings(service_name=service, **settings))
            clients.append(client)
            return client

        @staticmethod
        def worker(
            service: str, cls: type[BaseWorker] = BaseWorker, **worker_settings: Any
        ) -> BaseWorker:
            worker = cls(
                make_settings(service_name=service),
                conn,
                worker_settings=fast_worker_settings(**worker_settings),
            )
            workers.append(worker)
            return worker

    yield Bus
    for worker in workers:
        await worker.stop(grace=0.5)
    for client in clients:
        await client.close()


async def _eventually(
    check: Callable[[], Awaitable[Any] | Any], timeout: float = 5.0, interval: float = 0.02
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
def eventually() -> Callable[..., Awaitable[Any]]:
    """Poll a (sync or async) predicate until truthy; fail after ``timeout`` seconds."""
    return _eventually


@pytest_asyncio.fixture(autouse=True)
async def _stop_workers_left_running(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Stop every worker a test started on its event loop, even one built by hand in a test
    that failed: a worker left running would consume the next test's streams."""
    started: list[BaseWorker] = []
    loop = asyncio.get_running_loop()
    original = BaseWorker.start

    async def start(self: BaseWorker) -> None:
        if asyncio.get_running_loop() is loop:
            started.append(self)
        await original(self)

    monkeypatch.setattr(BaseWorker, "start", start)
    yield
    for worker in started:
        await worker.stop(grace=0.5)
